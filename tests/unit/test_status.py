"""The status API: loopback by default, read-only answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.status import DEFAULT_HTTP_ADDR, StatusServer, parse_addr


def get(server: StatusServer, path: str) -> tuple[int, bytes]:
    host, port = server.address[:2]
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_default_address_is_loopback_only() -> None:
    assert parse_addr(DEFAULT_HTTP_ADDR) == ("127.0.0.1", 9464)


@pytest.mark.parametrize("addr", ["9464", ":9464", "host:", "host:port", "host:70000", ""])
def test_a_malformed_address_is_a_config_error(addr: str) -> None:
    with pytest.raises(ConfigError):
        parse_addr(addr)


def test_ipv6_addresses_are_accepted() -> None:
    assert parse_addr("[::1]:9464") == ("::1", 9464)


def test_health_readiness_and_counters() -> None:
    counters = Counters()
    counters.inc(semconv.SOURCE_RECONNECTS)
    state = {"alive": True, "ready": False}
    server = StatusServer(
        "127.0.0.1:0", counters, alive=lambda: state["alive"], ready=lambda: state["ready"]
    )
    server.start()
    try:
        assert server.address[0] == "127.0.0.1"
        assert get(server, "/healthz")[0] == 200
        assert get(server, "/readyz")[0] == 503
        state["ready"] = True
        assert get(server, "/readyz")[0] == 200
        code, body = get(server, "/v1/counters")
        assert code == 200
        assert json.loads(body)["otelbridge.source.reconnects"] == 1
        assert get(server, "/nope")[0] == 404
        state["alive"] = False
        assert get(server, "/healthz")[0] == 503
    finally:
        server.shutdown()


def test_an_address_in_use_is_a_config_error() -> None:
    first = StatusServer("127.0.0.1:0", Counters(), alive=lambda: True, ready=lambda: True)
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            StatusServer(f"127.0.0.1:{first.address[1]}", Counters(), alive=bool, ready=bool)
    finally:
        first.shutdown()
