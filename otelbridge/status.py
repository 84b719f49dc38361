"""The bridge's status API: is it alive, is it listening, what has it counted.

Served by ``otelbridge run`` on ``--http-addr`` / ``OTELBRIDGE_HTTP_ADDR`` (default
``127.0.0.1:9464``): loopback only unless an address is given, because the counters
describe the node's workloads. Read-only, GET only.

| path | answers |
|---|---|
| ``/healthz`` | 200 while the pipeline runs, 503 once it stopped (its source died) |
| ``/readyz`` | 200 once subscribed to containerd and listed it, 503 before |
| ``/v1/counters`` | the bridge's counters as JSON |
| ``/v1/sla`` | the SLA verdicts per namespace as JSON (:mod:`otelbridge.sla`) |
| ``/metrics`` | the bridge's metrics in the Prometheus text format (``otelbridge run``) |

Routes beyond the first four are added by whoever serves them (``routes``).
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError

_log = logging.getLogger(__name__)
DEFAULT_HTTP_ADDR = "127.0.0.1:9464"


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ConfigError if malformed."""
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError([f"http address {addr!r}: expected HOST:PORT, e.g. {DEFAULT_HTTP_ADDR}"])
    return host, int(port)


class StatusServer:
    """Serves the status API on its own thread until :meth:`shutdown`."""

    def __init__(
        self,
        addr: str,
        counters: Counters,
        *,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
        sla: Callable[[], dict[str, Any]] | None = None,
        routes: dict[str, Callable[[], tuple[int, bytes, str]]] | None = None,
    ) -> None:
        """``routes``: more paths, each answering ``(status, body, content type)``.
        Every route runs on the server's threads and must not raise."""
        host, port = parse_addr(addr)

        def text(code: int, body: str) -> tuple[int, bytes, str]:
            return code, (body + "\n").encode(), "text/plain; charset=utf-8"

        def as_json(body: Any) -> tuple[int, bytes, str]:
            return 200, json.dumps(body, indent=1).encode(), "application/json"

        table: dict[str, Callable[[], tuple[int, bytes, str]]] = {
            "/healthz": lambda: text(200, "ok") if alive() else text(503, "stopped"),
            "/readyz": lambda: text(200, "ready") if ready() else text(503, "not subscribed yet"),
            "/v1/counters": lambda: as_json(counters.snapshot()),
        }
        if sla is not None:
            table["/v1/sla"] = lambda: as_json(sla())
        table.update(routes or {})

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = table.get(self.path.split("?", 1)[0])
                try:
                    code, data, kind = route() if route else text(404, "not found")
                except Exception:  # a broken route must not take the server down
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
            self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError([f"http address {addr}: cannot listen ({exc.strerror})"]) from exc
        self._server.daemon_threads = True
        self.address = self._server.server_address
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otelbridge-status", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stops serving. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
