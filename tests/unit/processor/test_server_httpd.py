"""The bounded HTTP/1.1 server the processor is served by (otelbridge.httpd): routes and
path parameters, query strings, bodies and their limit, the bearer token, TLS, handlers
that raise. (Its connection bounds are tested through the status API, tests/unit/
test_status.py and tests/integration/test_status_limits.py.)"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge import httpd
from otelbridge.core.errors import ConfigError
from otelbridge.httpd import CannotListen, HttpServer, Request, Response, Route

from .test_server_helpers import call, client_context, self_signed

TOKEN = "s3cret-token"


def echo(request: Request) -> Response:
    return Response.json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "params": dict(request.params),
            "query": {k: list(v) for k, v in request.query.items()},
            "body": request.body.decode("latin-1"),
        },
    )


def broken(_request: Request) -> Response:
    raise RuntimeError("boom")


ROUTES = [
    Route("GET", "/v1/rollouts/{trace_id}", echo),
    Route("GET", "/v1/things/{a}/parts/{b}", echo),
    Route("POST", "/v1/upload", echo, max_body_bytes=1000),
    Route("GET", "/public", echo, public=True),
    Route("GET", "/broken", broken),
]


@pytest.fixture
def refused() -> list[int]:
    return []


@pytest.fixture
def server(refused: list[int]) -> Iterator[HttpServer]:
    s = HttpServer(
        "127.0.0.1:0", ROUTES, name="test", idle_timeout_s=1.0, on_refused=refused.append
    )
    s.start()
    yield s
    s.shutdown()


@pytest.fixture
def guarded(refused: list[int]) -> Iterator[HttpServer]:
    s = HttpServer("127.0.0.1:0", ROUTES, name="test", token=TOKEN, on_refused=refused.append)
    s.start()
    yield s
    s.shutdown()


def test_path_parameters_are_decoded_and_the_query_string_parsed(server: HttpServer) -> None:
    status, _, body = call(server.url, "GET", "/v1/rollouts/abc%2Fdef?expect=20&x=1&x=2&flag")
    assert status == 200
    got = json.loads(body)
    assert got["params"] == {"trace_id": "abc/def"}
    assert got["query"] == {"expect": ["20"], "x": ["1", "2"], "flag": [""]}
    status, _, body = call(server.url, "GET", "/v1/things/one/parts/two")
    assert json.loads(body)["params"] == {"a": "one", "b": "two"}


def test_unknown_paths_are_404_and_other_methods_405(server: HttpServer) -> None:
    assert call(server.url, "GET", "/v1/rollouts")[0] == 404
    assert call(server.url, "GET", "/v1/rollouts/a/b")[0] == 404
    status, headers, _ = call(server.url, "POST", "/v1/rollouts/abc", b"x")
    assert status == 405
    assert headers["allow"] == "GET"
    assert call(server.url, "GET", "/v1/upload")[0] == 405


def test_a_body_within_the_limit_reaches_the_handler(server: HttpServer) -> None:
    status, _, body = call(server.url, "POST", "/v1/upload", b"a" * 1000)
    assert status == 200
    assert json.loads(body)["body"] == "a" * 1000


def test_a_body_over_the_limit_is_413_and_never_handled(
    server: HttpServer, refused: list[int]
) -> None:
    status, _, body = call(server.url, "POST", "/v1/upload", b"a" * 50_000)
    assert status == 413
    assert b"over the limit of 1000" in body
    assert refused == [413]


def test_expect_continue_over_the_limit_is_refused_before_the_body_is_sent(
    server: HttpServer,
) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(
            b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_expect_continue_within_the_limit_gets_100_then_the_answer(server: HttpServer) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(
            b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"abc")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'"body": "abc"' in answer


def test_chunked_bodies_and_malformed_lengths_are_refused(
    server: HttpServer, refused: list[int]
) -> None:
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.request("POST", "/v1/upload", body=iter([b"abc"]), encode_chunked=True)
    assert conn.getresponse().status == 411
    conn.close()
    status, _, _ = call(server.url, "POST", "/v1/upload", headers={"Content-Length": "-1"})
    assert status == 400
    assert refused == [411, 400]


def test_keep_alive_serves_several_requests_on_one_connection(server: HttpServer) -> None:
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    try:
        for i in range(3):
            conn.request("POST", "/v1/upload", body=f"n{i}".encode())
            answer = conn.getresponse()
            assert answer.status == 200
            assert json.loads(answer.read())["body"] == f"n{i}"
        conn.request("POST", "/v1/upload", body=b"x" * 5000)  # refused, body thrown away
        answer = conn.getresponse()
        assert answer.status == 413
        answer.read()
        conn.request("GET", "/v1/rollouts/again")  # and the connection still works
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert server.connection_stats().rejected == 0


def test_a_body_that_never_arrives_is_cut_at_the_idle_timeout(server: HttpServer) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\nab")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed unanswered
        assert time.monotonic() - started < 5
    assert server.connection_stats().timed_out >= 1


def test_a_handler_that_raises_answers_500_and_the_server_keeps_serving(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert call(server.url, "GET", "/broken")[0] == 500
    assert call(server.url, "GET", "/public")[0] == 200
    assert any("GET /broken failed" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Basic czNjcmV0LXRva2Vu", f"Bearer {TOKEN}x", "Bearer"],
)
def test_without_the_right_token_it_is_401(
    guarded: HttpServer, refused: list[int], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, answer_headers, _ = call(guarded.url, "GET", "/v1/rollouts/x", headers=headers)
    assert status == 401
    assert answer_headers["www-authenticate"] == "Bearer"
    assert refused == [401]


def test_the_right_token_passes_and_public_routes_need_none(guarded: HttpServer) -> None:
    for scheme in ("Bearer", "bearer"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert call(guarded.url, "GET", "/v1/rollouts/x", headers=headers)[0] == 200
    assert call(guarded.url, "GET", "/public")[0] == 200


def test_a_refused_post_is_read_away_so_the_client_sees_the_401(guarded: HttpServer) -> None:
    status, _, _ = call(guarded.url, "POST", "/v1/upload", b"z" * 900)
    assert status == 401


def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = HttpServer(
        "127.0.0.1:0", ROUTES, name="tls", tls=httpd.tls_context(str(cert), str(key))
    )
    server.start()
    try:
        assert server.url.startswith("https://")
        status, _, _ = call(server.url, "GET", "/public", context=client_context(cert))
        assert status == 200
        with pytest.raises(ssl.SSLError):  # a client that does not trust the certificate
            call(server.url, "GET", "/public", context=ssl.create_default_context())
        # a plain-text client, and one that connects and never says hello, do not stall it
        with socket.create_connection(server.address, timeout=5):
            with pytest.raises((ConnectionError, http.client.HTTPException)):
                call(server.url.replace("https", "http"), "GET", "/public")
            assert call(server.url, "GET", "/public", context=client_context(cert))[0] == 200
    finally:
        server.shutdown()


def test_tls_files_that_do_not_load_are_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS certificate"):
        httpd.tls_context(str(tmp_path / "cert.pem"), str(tmp_path / "missing.pem"))


def test_an_address_in_use_cannot_be_listened_on() -> None:
    first = HttpServer("127.0.0.1:0", ROUTES)
    try:
        with pytest.raises(CannotListen, match="cannot listen"):
            HttpServer(f"127.0.0.1:{first.address[1]}", ROUTES)
    finally:
        first.shutdown()
