"""The bridge's status API: is it alive, is it listening, what has it counted.

Served by ``otelbridge run`` on ``--http-addr`` / ``OTELBRIDGE_HTTP_ADDR`` (default
``127.0.0.1:9464``): loopback only unless an address is given, because the counters
describe the node's workloads. Read-only, GET only.

| path | answers |
|---|---|
| ``/healthz`` | 200 ``ok`` when ``health()`` reports no problem, else 503, one problem a line |
| ``/readyz`` | the same with ``readiness()`` (e.g. not subscribed to containerd yet) |
| ``/v1/counters`` | the bridge's counters as JSON |
| ``/v1/sla`` | the SLA verdicts per namespace as JSON (:mod:`otelbridge.sla`); see below |
| ``/metrics`` | the bridge's metrics in the Prometheus text format (``otelbridge run``) |

``/v1/sla?samples=1`` adds, per namespace, the samples and startups behind the verdicts
(what the report's charts draw).

Routes beyond the first four are added by whoever serves them (``routes``). A check or
route that raises answers 500 and is logged; the server keeps serving.

Connections are bounded (:mod:`otelbridge.httpd`, whose server this is), so that a client
that opens connections and sends nothing cannot take the process's file descriptors (the
OTLP export needs them) or its threads:

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

from collections.abc import Callable
from typing import Any

from otelbridge import httpd
from otelbridge.core.counters import Counters
from otelbridge.httpd import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionStats,
    HttpServer,
    Response,
    parse_addr,
)

__all__ = [
    "DEFAULT_HTTP_ADDR",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "Check",
    "ConnectionStats",
    "Route",
    "StatusServer",
    "parse_addr",
]

DEFAULT_HTTP_ADDR = "127.0.0.1:9464"

Check = Callable[[], list[str]]
"""Returns the current problems, one line of text each; an empty list means fine."""
Route = Callable[[], tuple[int, bytes, str]]
"""Answers ``(status, body, content type)``."""

_Connections = httpd.Connections
"""The connection table (tests drive it on a fake clock)."""


def _text(code: int, body: str) -> Response:
    return Response.text(code, body)


def _check(problems_now: Check) -> httpd.Handler:
    def handler(_request: httpd.Request) -> Response:
        problems = problems_now()
        if not problems:
            return _text(200, "ok")
        # one problem per line, even if a problem's text has line breaks
        return _text(503, "\n".join(" ".join(str(p).splitlines()) for p in problems))

    return handler


def _wants_detail(request: httpd.Request) -> bool:
    """``?samples=1`` (or ``true``): the samples and startups behind the verdicts."""
    return (request.arg("samples") or "").lower() in ("1", "true", "yes")


def _route(route: Route) -> httpd.Handler:
    def handler(_request: httpd.Request) -> Response:
        code, data, kind = route()
        return Response(code, data, kind)

    return handler


class StatusServer:
    """Serves the status API on its own threads between :meth:`start` and :meth:`shutdown`."""

    def __init__(
        self,
        addr: str,
        counters: Counters,
        *,
        health: Check,
        readiness: Check,
        sla: Callable[..., dict[str, Any]] | None = None,
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
        table: dict[str, httpd.Handler] = {
            "/healthz": _check(health),
            "/readyz": _check(readiness),
            "/v1/counters": lambda _r: Response.json(200, counters.snapshot()),
        }
        if sla is not None:
            table["/v1/sla"] = lambda r: Response.json(200, sla(detail=_wants_detail(r)))
        table.update({path: _route(route) for path, route in (routes or {}).items()})
        self._server = HttpServer(
            addr,
            [httpd.Route("GET", path, handler) for path, handler in table.items()],
            name="status",
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
            max_body_bytes=0,
        )
        self.address: tuple[str, int] = self._server.address
        """The address listened on (the port chosen when ``addr`` asked for port 0)."""

    def start(self) -> None:
        self._server.start()

    def shutdown(self) -> None:
        """Stops serving and shuts down the open connections. Idempotent; works without
        :meth:`start`."""
        self._server.shutdown()

    def connection_stats(self) -> ConnectionStats:
        """The connection counts so far (see :class:`ConnectionStats`); any thread."""
        return self._server.connection_stats()
