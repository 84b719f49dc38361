"""Serving a test HTTP server on its own thread, optionally behind TLS."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
from typing import Any


def serve_in_thread(
    server: http.server.HTTPServer, tls: tuple[str, str] | None, name: str
) -> threading.Thread:
    """Wraps ``server``'s socket in TLS when ``tls`` (cert, key) is given and serves it on
    a new daemon thread (polling for shutdown every 50 ms); returns the started thread."""
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    return thread


class TrackingHTTPServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that keeps its open connections, so a test can cut them
    all at once (:meth:`cut_connections`): a receiver that vanishes mid-request."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)
