"""Span files made once per session by the real pipeline (see synth.py), and a stand-in
bridge serving a recorded ``/v1/sla`` answer."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.report import synth

RECLAIM_MS = (120.0, 340.0, 95.0, 2400.0, 410.0)


@pytest.fixture(scope="session")
def replayed() -> synth.Replayed:
    """``synth.realistic()`` through a replay pipeline."""
    return synth.replay(synth.realistic())


@pytest.fixture(scope="session")
def span_file(replayed: synth.Replayed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its spans as a jsonl file, with GC spans and overlap tags added."""
    spans = synth.with_gc(replayed.spans, overlap_every=5, reclaim_ms=RECLAIM_MS)
    return synth.write_jsonl(tmp_path_factory.mktemp("spans") / "spans.jsonl", spans)


RECORDED = Path(__file__).parent / "testdata" / "v1_sla.json"
"""A ``/v1/sla`` answer recorded from a real bridge (tests/integration/test_sla_report.py:
namespaces ``fast`` pass, ``slow`` breach, ``few`` insufficient, with GC figures)."""


class Server:
    """A tiny HTTP server on loopback answering ``routes``: path -> (status, body)."""

    def __init__(self, routes: dict[str, tuple[int, bytes]]) -> None:
        self.routes = routes
        self.asked: list[str] = []
        """Every path asked, query included (a route ignores the query, as a bridge
        older than ``?samples=1`` does)."""

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/slow":
                    time.sleep(1.0)
                outer.asked.append(self.path)
                code, body = outer.routes.get(self.path.partition("?")[0], (404, b"not found"))
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/v1/sla") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def bridge() -> Iterator[Server]:
    """Serves the recorded answer on /v1/sla, and wrong answers on other paths."""
    server = Server(
        {
            "/v1/sla": (200, RECORDED.read_bytes()),
            "/text": (200, b"ok\n"),
            "/shape": (200, json.dumps({"namespaces": {"x": {"verdict": "maybe"}}}).encode()),
            "/broken": (500, b"internal error"),
            "/slow": (200, b"{}"),
        }
    )
    yield server
    server.close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
