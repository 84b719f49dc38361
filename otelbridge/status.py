"""The bridge's status API: is it alive, is it listening, what has it counted.

Served by ``otelbridge run`` on ``--http-addr`` / ``OTELBRIDGE_HTTP_ADDR`` (default
``127.0.0.1:9464``): loopback only unless an address is given, because the counters
describe the node's workloads. Read-only, GET only.

| path | answers |
|---|---|
| ``/healthz`` | 200 ``ok`` when ``health()`` reports no problem, else 503, one problem a line |
| ``/readyz`` | the same with ``readiness()`` (e.g. not subscribed to containerd yet) |
| ``/v1/counters`` | the bridge's counters as JSON |
| ``/v1/sla`` | the SLA verdicts per namespace as JSON (:mod:`otelbridge.sla`) |
| ``/metrics`` | the bridge's metrics in the Prometheus text format (``otelbridge run``) |

Routes beyond the first four are added by whoever serves them (``routes``). A check or
route that raises answers 500 and is logged; the server keeps serving.

Connections are bounded, so that a client that opens connections and sends nothing cannot
take the process's file descriptors (the OTLP export needs them) or its threads:

* at most ``max_connections`` are open at once, each with its own thread;
* a connection must deliver its whole request (line and headers) within ``idle_timeout_s``
  of being accepted, whether it sends nothing or sends slowly; then it is closed (counted
  as *timed out*);
* a connection that arrives while every slot is taken makes room by closing the one that
  has waited longest for its request (*evicted*): a probe is answered even while idle
  connections fill the slots. Only when every slot is busy answering a request is the new
  connection closed at once, without an answer (*rejected*);
* an answer must be written within ``idle_timeout_s`` (the socket's timeout).

:meth:`StatusServer.connection_stats` gives those counts for whoever exports them.
"""

from __future__ import annotations

import contextlib
import enum
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError

_log = logging.getLogger(__name__)
DEFAULT_HTTP_ADDR = "127.0.0.1:9464"
DEFAULT_MAX_CONNECTIONS = 64
"""Open connections at most (each holds a file descriptor and a thread)."""
DEFAULT_IDLE_TIMEOUT_S = 5.0
"""Seconds a connection has to deliver its request, and to take its answer."""
_ADMIT_WAIT_S = 1.0
"""How long a new connection waits for an evicted one's thread to close it."""
_BACKLOG = 128
"""Connections the kernel holds before they are accepted (they cost us no descriptor)."""

Check = Callable[[], list[str]]
"""Returns the current problems, one line of text each; an empty list means fine."""
Route = Callable[[], tuple[int, bytes, str]]
"""Answers ``(status, body, content type)``."""


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ConfigError if malformed."""
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError([f"http address {addr!r}: expected HOST:PORT, e.g. {DEFAULT_HTTP_ADDR}"])
    return host, int(port)


@dataclass(frozen=True)
class ConnectionStats:
    """The status server's connections: how many are open, and how many it closed, why."""

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


class _Connections:
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
        # descriptor under it; the caller holds the lock, so sock is still open.
        with contextlib.suppress(OSError):  # the peer already went away
            sock.shutdown(socket.SHUT_RDWR)
        self._open[sock].state = _State.CLOSING


class _Server(http.server.ThreadingHTTPServer):
    """One thread per connection, at most ``connections``' limit of them."""

    daemon_threads = True
    request_queue_size = _BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        connections: _Connections,
    ) -> None:
        self.connections = connections
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Runs on the accept thread: a slot, then a thread; or the connection is closed."""
        if self.connections.admit(request):
            super().process_request(request, client_address)
        else:
            _log.debug("status: every connection is answering; closed %s", client_address)
            self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        self.connections.close(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that resets, a connection we shut down: not worth a traceback on stderr.
        _log.debug("status: connection from %s failed", client_address, exc_info=True)


class StatusServer:
    """Serves the status API on its own threads between :meth:`start` and :meth:`shutdown`."""

    def __init__(
        self,
        addr: str,
        counters: Counters,
        *,
        health: Check,
        readiness: Check,
        sla: Callable[[], dict[str, Any]] | None = None,
        routes: dict[str, Route] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        """Listens on ``addr`` at once (ConfigError if it cannot); serves from :meth:`start`.

        ``health`` and ``readiness`` return the current problems (empty: fine) for
        ``/healthz`` and ``/readyz``; ``routes`` adds paths. Checks, ``sla`` and routes
        run on the server's connection threads, concurrently, and should not block: an
        exception answers 500 and is logged. ``max_connections`` and ``idle_timeout_s``
        bound the connections (see the module docstring).
        """
        host, port = parse_addr(addr)
        problems = []
        if max_connections < 1:
            problems.append(f"status max_connections {max_connections}: must be at least 1")
        if not idle_timeout_s > 0:
            problems.append(f"status idle_timeout_s {idle_timeout_s}: must be positive")
        if problems:
            raise ConfigError(problems)

        def text(code: int, body: str) -> tuple[int, bytes, str]:
            return code, (body + "\n").encode(), "text/plain; charset=utf-8"

        def as_json(body: Any) -> tuple[int, bytes, str]:
            return 200, json.dumps(body, indent=1).encode(), "application/json"

        def check(problems_now: Check) -> Route:
            def route() -> tuple[int, bytes, str]:
                problems = problems_now()
                if not problems:
                    return text(200, "ok")
                # one problem per line, even if a problem's text has line breaks
                return text(503, "\n".join(" ".join(str(p).splitlines()) for p in problems))

            return route

        table: dict[str, Route] = {
            "/healthz": check(health),
            "/readyz": check(readiness),
            "/v1/counters": lambda: as_json(counters.snapshot()),
        }
        if sla is not None:
            table["/v1/sla"] = lambda: as_json(sla())
        table.update(routes or {})

        self._connections = connections = _Connections(max_connections, idle_timeout_s)

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                # The reaper closes the connection at the deadline; the socket timeout is
                # only a backstop should it fall behind.
                connections.reading(self.connection)
                self.connection.settimeout(2 * idle_timeout_s)
                super().handle_one_request()

            def parse_request(self) -> bool:
                if not super().parse_request():
                    return False
                connections.answering(self.connection)
                self.connection.settimeout(idle_timeout_s)  # bounds writing the answer
                return True

            def do_GET(self) -> None:
                route = table.get(self.path.split("?", 1)[0])
                try:
                    code, data, kind = route() if route else text(404, "not found")
                except Exception:  # a broken check or route must not take the server down
                    _log.exception("status: %s failed", self.path)
                    code, data, kind = text(500, "internal error")
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                _log.debug("status: " + format, *args)

        try:
            self._server = _Server((host, port), Handler, connections)
        except OSError as exc:
            raise ConfigError([f"http address {addr}: cannot listen ({exc.strerror})"]) from exc
        bound_host, bound_port = self._server.server_address[:2]
        self.address: tuple[str, int] = (str(bound_host), int(bound_port))
        """The address listened on (the port chosen when ``addr`` asked for port 0)."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otelbridge-status", daemon=True
        )
        self._reaper = threading.Thread(
            target=self._reap, name="otelbridge-status-reaper", daemon=True
        )

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
                _log.exception("status: closing idle connections failed")
                wait_s = 1.0
