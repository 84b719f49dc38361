"""A bounded HTTP/1.1 server: the status API's and the processor's.

:class:`HttpServer` serves a table of :class:`Route` (``GET``/``POST``/... by path, with
path parameters such as ``/v1/rollouts/{trace_id}`` and query strings) on its own
threads between :meth:`~HttpServer.start` and :meth:`~HttpServer.shutdown`. A handler
takes a :class:`Request` and returns a :class:`Response`; one that raises answers 500 and
is logged, and the server keeps serving.

Connections are bounded, so that a client that opens connections and sends nothing
cannot take the process's file descriptors or its threads:

* at most ``max_connections`` are open at once, each with its own thread;
* a connection must deliver its whole request (line, headers and body) within
  ``idle_timeout_s`` of being accepted (of its TLS handshake, which has as long; of its
  previous answer, kept alive), whether it sends nothing or sends slowly; then it is
  closed (counted as *timed out*);
* a connection that arrives while every slot is taken makes room by closing the one that
  has waited longest for its request (*evicted*): a probe is answered even while idle
  connections fill the slots. Only when every slot is busy answering a request is the new
  connection closed at once, without an answer (*rejected*);
* an answer must be written within ``idle_timeout_s`` (the socket's timeout).

What the server refuses itself, before a handler runs (``on_refused`` is told the code):
404 no route has the path, 405 (with ``Allow``) one has, for other methods; 401 (with
``WWW-Authenticate: Bearer``) when the server has a ``token`` and the route is not
``public``: ``Authorization: Bearer <token>`` is required, compared in constant time;
411 a chunked body (only ``Content-Length`` bodies are read); 400 a malformed
``Content-Length`` or query string; 413 a ``Content-Length`` over the route's
``max_body_bytes`` (else the server's): such a body is never read into memory. A refused
body is read and thrown away, under the connection's deadline, so that the client reads
the answer instead of a reset; with ``Expect: 100-continue`` it is refused before it is
sent.

TLS: give ``tls`` an :class:`ssl.SSLContext` (:func:`tls_context` makes one from PEM
files). The handshake runs on the connection's own thread, under its deadline, never on
the accepting thread.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import http.server
import json
import logging
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from otelbridge.core.errors import ConfigError

_log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 64
"""Open connections at most (each holds a file descriptor and a thread)."""
DEFAULT_IDLE_TIMEOUT_S = 5.0
"""Seconds a connection has to deliver its request, and to take its answer."""
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""A request body larger than this is refused (413), unless its route says otherwise."""
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
_ADMIT_WAIT_S = 1.0
"""How long a new connection waits for an evicted one's thread to close it."""
_BACKLOG = 128
"""Connections the kernel holds before they are accepted (they cost us no descriptor)."""
_CHUNK, _MAX_QUERY_FIELDS = 64 * 1024, 64
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


class CannotListen(ConfigError):
    """The address is well formed but cannot be listened on (in use, not this host's)."""


def parse_addr(
    addr: str, *, what: str = "http address", example: str = "127.0.0.1:9464"
) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ConfigError if malformed."""
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError([f"{what} {addr!r}: expected HOST:PORT, e.g. {example}"])
    return host, int(port)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) from PEM files; ConfigError naming the
    file when they cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([f"TLS certificate {cert_file} / key {key_file}: {why}"]) from exc
    return context


# -- requests, answers, routes ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    """A request as a handler sees it (its body read whole, within the route's limit)."""

    method: str
    path: str
    """The path, percent-encoded as sent, without the query string."""
    params: Mapping[str, str]
    """The route pattern's ``{name}`` segments, percent-decoded."""
    query: Mapping[str, Sequence[str]]
    """The query string's fields (every value of each, in order)."""
    headers: Mapping[str, str]
    """Header names lowercased; a repeated header keeps its last value."""
    body: bytes

    def arg(self, name: str) -> str | None:
        """The last value of query field ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: status, body, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        """``message`` and a newline, as text/plain."""
        return cls(status, (message + "\n").encode(), TEXT, headers or {})

    @classmethod
    def json(cls, status: int, obj: Any) -> Response:
        return cls(status, json.dumps(obj, indent=1).encode(), JSON)  # indented: for people


Handler = Callable[[Request], Response]
"""Answers a request. Runs on the connection's thread, concurrently with others."""
Refusal = Callable[[int, str, Mapping[str, str]], Response]
"""Formats a refusal the server makes itself: (status, message, request headers)."""


@dataclass(frozen=True, slots=True)
class Route:
    """``method`` requests to paths matching ``pattern`` go to ``handler``.

    ``pattern`` is a path whose segments are literal or ``{name}`` (one non-empty
    segment, handed to the handler in :attr:`Request.params`).
    """

    method: str
    pattern: str
    handler: Handler
    public: bool = False
    """True: no token needed (health checks)."""
    max_body_bytes: int | None = None
    """Bodies larger are refused (413); None: the server's ``max_body_bytes``."""
    refusal: Refusal | None = None
    """How the server's own refusals on this route are written (None: plain text)."""


class _Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = [(route, [s for s in route.pattern.split("/") if s]) for route in routes]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | list[str]:
        """The route and its parameters, or the methods other routes take at this path
        (empty: no route has it)."""
        segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
        allowed: list[str] = []
        for route, pattern in self._routes:
            if len(pattern) != len(segments):
                continue
            params = {p[1:-1]: s for p, s in zip(pattern, segments, strict=True) if p[0] == "{"}
            if any(p[0] != "{" and p != s for p, s in zip(pattern, segments, strict=True)):
                continue
            if route.method == method:
                return route, params
            allowed.append(route.method)
        return allowed


# -- the connection table -----------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectionStats:
    """The server's connections: how many are open, and how many it closed, why."""

    open: int
    """Connections open now (at most ``max_connections``)."""
    rejected: int
    """Closed at once without an answer: every slot was busy answering a request."""
    evicted: int
    """Closed while waiting for their request, to make room for a newer connection."""
    timed_out: int
    """Closed because their request did not arrive within ``idle_timeout_s``."""


class _State(enum.Enum):
    READING = "reading"  # waiting for (the rest of) a request; closed at its deadline
    ANSWERING = "answering"  # its request was read; the route runs and the answer is written
    CLOSING = "closing"  # shut down by us; its own thread will close it


@dataclass
class _Conn:
    state: _State
    deadline_ns: int  # when a READING connection is closed (monotonic)


class Connections:
    """The open connections and their slots. Thread-safe.

    Every method may be called from any thread. A socket is only ever shut down (never
    closed) by another thread than its own, and only while it is in the table; its own
    thread removes it and closes it in one step (:meth:`close`), so a shutdown never
    reaches a descriptor that was closed and reused.
    """

    def __init__(
        self,
        limit: int,
        idle_timeout_s: float,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._limit = limit
        self._idle_ns = int(idle_timeout_s * 1_000_000_000)
        self._now = monotonic_ns
        self._cond = threading.Condition()
        self._open: dict[socket.socket, _Conn] = {}
        self._rejected = 0
        self._evicted = 0
        self._timed_out = 0

    def admit(self, sock: socket.socket, wait_s: float = _ADMIT_WAIT_S) -> bool:
        """True: ``sock`` holds a slot, READING, until :meth:`close`. False: no slot (counted
        as rejected); the caller closes ``sock``.

        When every slot is taken, the READING connection with the nearest deadline is shut
        down and this waits up to ``wait_s`` for its thread to close it. When every slot is
        ANSWERING, False at once.
        """
        give_up_ns = self._now() + int(wait_s * 1_000_000_000)
        with self._cond:
            while len(self._open) >= self._limit:
                if not any(c.state is _State.CLOSING for c in self._open.values()):
                    readers = [s for s, c in self._open.items() if c.state is _State.READING]
                    if not readers:
                        self._rejected += 1
                        return False
                    self._shut(min(readers, key=lambda s: self._open[s].deadline_ns))
                    self._evicted += 1
                left_ns = give_up_ns - self._now()
                if left_ns <= 0:
                    self._rejected += 1
                    return False
                self._cond.wait(left_ns / 1_000_000_000)
            self._open[sock] = _Conn(_State.READING, self._now() + self._idle_ns)
            return True

    def reading(self, sock: socket.socket) -> None:
        """``sock`` waits for its next request, which must arrive within the idle timeout."""
        with self._cond:
            conn = self._open.get(sock)
            if conn is not None and conn.state is not _State.CLOSING:
                conn.state = _State.READING
                conn.deadline_ns = self._now() + self._idle_ns

    def answering(self, sock: socket.socket) -> None:
        """``sock``'s request was read: it is no longer evicted or timed out."""
        with self._cond:
            conn = self._open.get(sock)
            if conn is not None and conn.state is _State.READING:
                conn.state = _State.ANSWERING

    def close(self, sock: socket.socket) -> None:
        """Frees ``sock``'s slot (if it had one) and closes it. Called by its own thread."""
        with self._cond:
            self._open.pop(sock, None)
            with contextlib.suppress(OSError):  # already shut down, or the peer is gone
                sock.shutdown(socket.SHUT_WR)
            sock.close()
            self._cond.notify_all()

    def reap(self) -> float:
        """Shuts down the READING connections past their deadline; returns the seconds
        until the next deadline (the idle timeout when none is READING)."""
        now = self._now()
        next_ns = now + self._idle_ns
        with self._cond:
            for sock, conn in self._open.items():
                if conn.state is not _State.READING:
                    continue
                if conn.deadline_ns <= now:
                    self._shut(sock)
                    self._timed_out += 1
                else:
                    next_ns = min(next_ns, conn.deadline_ns)
        return (next_ns - now) / 1_000_000_000

    def shut_all(self) -> None:
        """Shuts down every open connection (their threads close them)."""
        with self._cond:
            for sock, conn in self._open.items():
                if conn.state is not _State.CLOSING:
                    self._shut(sock)

    def stats(self) -> ConnectionStats:
        with self._cond:
            return ConnectionStats(len(self._open), self._rejected, self._evicted, self._timed_out)

    def _shut(self, sock: socket.socket) -> None:
        # Wakes the connection's thread (a blocked recv returns b"") without closing the
        # descriptor under it; the caller holds the lock, so sock is still open. The plain
        # socket's shutdown: a TLS socket's own would drop its TLS state under its thread.
        with contextlib.suppress(OSError):  # the peer already went away
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self._open[sock].state = _State.CLOSING


class _Server(http.server.ThreadingHTTPServer):
    """One thread per connection, at most ``connections``' limit of them."""

    daemon_threads = True
    request_queue_size = _BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        connections: Connections,
        name: str,
    ) -> None:
        self.connections = connections
        self.name = name
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # before the bind: a failed bind calls server_close
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = False
        self._done = threading.Event()
        super().__init__(address, handler)

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accepts until :meth:`shutdown`. Unlike socketserver's loop, which wakes every
        ``poll_interval`` to look for a shutdown request, this one sleeps on the listening
        socket and a wake-up socket: an idle status API costs nothing (issue 12)."""
        del poll_interval
        self._done.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._closing:
                    ready = selector.select()
                    if self._closing:
                        break
                    if any(key.fileobj is self for key, _ in ready):
                        # socketserver's own step: accept, verify, process, or close
                        self._handle_request_noblock()  # type: ignore[attr-defined]
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Ends :meth:`serve_forever` and waits for it (from another thread)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._done.wait()

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Runs on the accept thread: a slot, then a thread; or the connection is closed."""
        if self.connections.admit(request):
            super().process_request(request, client_address)
        else:
            _log.debug("%s: every connection is answering; closed %s", self.name, client_address)
            self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        self.connections.close(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that resets, a connection we shut down, a failed TLS handshake: not worth
        # a traceback on stderr.
        _log.debug("%s: connection from %s failed", self.name, client_address, exc_info=True)


# -- the server ---------------------------------------------------------------------------------
class HttpServer:
    """Serves ``routes`` on its own threads between :meth:`start` and :meth:`shutdown`."""

    def __init__(
        self,
        addr: str,
        routes: Sequence[Route],
        *,
        name: str = "http",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        """Listens on ``addr`` at once (ConfigError if malformed, :class:`CannotListen` if
        it cannot); serves from :meth:`start`. ``name`` prefixes log lines and threads;
        ``on_refused(status)`` runs on the connection's thread for each refusal the server
        makes itself (400, 401, 411, 413)."""
        host, port = parse_addr(addr, what=f"{name} address")
        problems = []
        if max_connections < 1:
            problems.append(f"{name} max_connections {max_connections}: must be at least 1")
        if not idle_timeout_s > 0:
            problems.append(f"{name} idle_timeout_s {idle_timeout_s}: must be positive")
        if problems:
            raise ConfigError(problems)
        self.name = name
        self._connections = Connections(max_connections, idle_timeout_s)
        handler = _handler_class(
            name,
            _Router(routes),
            self._connections,
            idle_timeout_s=idle_timeout_s,
            max_body_bytes=max_body_bytes,
            token=token.encode() if token else None,  # "" is no token either
            tls=tls is not None,
            on_refused=on_refused or (lambda _status: None),
        )
        try:
            self._server = _Server((host, port), handler, self._connections, name)
        except OSError as exc:
            raise CannotListen([f"{name} address {addr}: cannot listen ({exc.strerror})"]) from exc
        if tls is not None:
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        bound_host, bound_port = self._server.server_address[:2]
        self.address: tuple[str, int] = (str(bound_host), int(bound_port))
        """The address listened on (the port chosen when ``addr`` asked for port 0)."""
        self.scheme = "https" if tls is not None else "http"
        self._stopping = threading.Event()
        thread = f"otelbridge-{name}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=thread, daemon=True)
        self._reaper = threading.Thread(target=self._reap, name=f"{thread}-reaper", daemon=True)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (``https`` with TLS; IPv6 hosts in brackets)."""
        host, port = self.address
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        self._reaper.start()
        self._thread.start()

    def shutdown(self) -> None:
        """Stops serving and shuts down the open connections. Idempotent; works without
        :meth:`start`."""
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._connections.shut_all()
        if self._reaper.is_alive():
            self._reaper.join()

    def connection_stats(self) -> ConnectionStats:
        """The connection counts so far (see :class:`ConnectionStats`); any thread."""
        return self._connections.stats()

    def _reap(self) -> None:
        wait_s = 0.0
        while not self._stopping.wait(max(wait_s, 0.001)):
            try:
                wait_s = self._connections.reap()
            except Exception:  # never: but a dead reaper would leave idle sockets open
                _log.exception("%s: closing idle connections failed", self.name)
                wait_s = 1.0


def _handler_class(
    name: str,
    router: _Router,
    connections: Connections,
    *,
    idle_timeout_s: float,
    max_body_bytes: int,
    token: bytes | None,
    tls: bool,
    on_refused: Callable[[int], None],
) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        _expects_continue = False

        def setup(self) -> None:
            super().setup()
            if tls:  # under the READING deadline: the reaper cuts a stalled handshake
                self.connection.settimeout(2 * idle_timeout_s)
                self.connection.do_handshake()

        def handle_one_request(self) -> None:
            # The reaper closes the connection at the deadline; the socket timeout is
            # only a backstop should it fall behind.
            connections.reading(self.connection)
            self.connection.settimeout(2 * idle_timeout_s)
            self._expects_continue = False
            super().handle_one_request()

        def handle_expect_100(self) -> bool:
            # Answered in _dispatch, once the request is known to be acceptable.
            self._expects_continue = True
            return True

        def _dispatch(self) -> None:
            path, _, query_string = self.path.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            found = router.match(self.command, path)
            if isinstance(found, list):  # 405 with the methods the path takes, or 404
                allow = {"Allow": ", ".join(sorted(set(found)))} if found else {}
                self._answer(Response.text(405 if found else 404, "no such route", allow))
                self._skip_body(headers)
                return
            route, params = found
            checked = _check(route, headers, token, max_body_bytes)
            try:
                query = urllib.parse.parse_qs(
                    query_string, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS
                )
            except ValueError as exc:
                checked = checked if isinstance(checked, tuple) else (400, f"bad query: {exc}")
            if isinstance(checked, tuple):
                on_refused(checked[0])
                answer = (route.refusal or _text_refusal)(*checked, headers)
                extra = _CHALLENGE if checked[0] == 401 else {}
                self._answer(replace(answer, headers={**answer.headers, **extra}))
                self._skip_body(headers)
                return
            length = checked
            if self._expects_continue and length:
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.wfile.flush()
            body = self.rfile.read(length) if length else b""
            if len(body) < length:  # the deadline passed or the peer went away
                self.close_connection = True
                return
            connections.answering(self.connection)
            self.connection.settimeout(idle_timeout_s)  # bounds writing the answer
            request = Request(self.command, path, params, query, headers, body)
            try:
                response = route.handler(request)
            except Exception:  # a broken handler must not take the server down
                _log.exception("%s: %s %s failed", name, self.command, path)
                response = Response.text(500, "internal error")
            self._answer(response)

        def _answer(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def _skip_body(self, headers: Mapping[str, str]) -> None:
            """Throws a refused request's body away (in chunks, under the connection's
            deadline) so the client reads the answer; the connection is kept alive only
            when the whole body was read."""
            length = headers.get("content-length", "0").strip()
            if self._expects_continue:  # the client waits for a 100 Continue to send it
                self.close_connection = True
                return
            if "transfer-encoding" in headers or not length.isdigit():  # until it stops
                self.close_connection = True
                while self.rfile.read1(_CHUNK):
                    pass
                return
            left = int(length)
            while left > 0 and (chunk := self.rfile.read(min(left, _CHUNK))):
                left -= len(chunk)
            self.close_connection = self.close_connection or left > 0

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug(f"{name}: " + format, *args)

    for method in _METHODS:  # BaseHTTPRequestHandler calls do_<METHOD>
        setattr(Handler, f"do_{method}", Handler._dispatch)
    return Handler


def _text_refusal(status: int, message: str, _headers: Mapping[str, str]) -> Response:
    return Response.text(status, message)


def _check(
    route: Route, headers: Mapping[str, str], token: bytes | None, max_body_bytes: int
) -> tuple[int, str] | int:
    """The refusal (status, why) a request gets before its handler runs, or its body's
    length (see the module docstring)."""
    if token is not None and not route.public and not _authorized(headers, token):
        return 401, "a bearer token is required"
    if "transfer-encoding" in headers:
        return 411, "a Content-Length body is required (no chunked transfer)"
    length_text = headers.get("content-length", "0").strip()
    if not length_text.isdigit():
        return 400, f"malformed Content-Length {length_text[:40]!r}"
    limit = max_body_bytes if route.max_body_bytes is None else route.max_body_bytes
    if int(length_text) > limit:
        return 413, f"request body of {length_text} bytes is over the limit of {limit}"
    return int(length_text)


def _authorized(headers: Mapping[str, str], token: bytes) -> bool:
    scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token)
