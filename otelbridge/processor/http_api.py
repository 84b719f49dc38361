"""The processor's HTTP API: verdicts per rollout and namespace, the Flagger webhook, metrics.

Every route but ``/healthz`` and ``/readyz`` needs the bearer token when the processor
has one (:mod:`otelbridge.httpd` answers 401). Malformed requests are 400 with a JSON
``{"error": ...}`` and are counted in ``otelbridge.processor.requests.refused``.

* ``GET /v1/rollouts/{trace_id}[?expect=N][&sketches=1]``: 200 and the verdict document,
  for *every* verdict (Argo's web provider takes any non-2xx for an error); 400 for a
  trace ID that is not 32 hex digits.
* ``GET /v1/namespaces/{ns}[?sketches=1][&peers=URL,...]``: 200 and the namespace's
  document over every rollout held here; with ``peers`` (``http(s)://HOST:PORT`` or
  ``HOST:PORT``, at most :data:`MAX_PEERS`), merged with those replicas' documents,
  fetched with ``?sketches=1`` within :data:`PEER_TIMEOUT_S`. A peer that fails is named
  in ``reasons`` and ``peers_failed`` (those merged: ``peers``), and a ``pass`` becomes
  ``insufficient``: the startups it holds are missing.
* ``POST /v1/flagger``: the Flagger webhook, the trace from ``metadata.trace_id`` or
  ``metadata.traceparent`` (``metadata.expect`` optional): 200 pass, 409 halt, 425
  insufficient, with the document (Flagger proceeds on 200-202 only, and retries the
  others); 400 when the body names no valid trace.
* ``GET /healthz``, ``/readyz``: 200 ``ok``, else 503 with one problem a line.
* ``GET /metrics``: the counters and the gauges, Prometheus text format 0.0.4
  (:func:`render_metrics`); ``GET /v1/counters``: the counters as JSON.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbridge import httpd
from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.semconv import MetricDecl
from otelbridge.core.tracecontext import TraceContext, parse_traceparent
from otelbridge.emit.prometheus import PROMETHEUS_CONTENT_TYPE, prometheus_name

log = logging.getLogger(__name__)

MAX_PEERS = 16
PEER_TIMEOUT_S = 5.0
"""How long a peer replica may take to answer ``/v1/namespaces``."""
_MAX_PEER_DOCUMENT_BYTES = 4 * 1024 * 1024
_MAX_WEBHOOK_BYTES = 64 * 1024
_MAX_EXPECT = 10_000_000
_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
_FLAGGER_STATUS = {"pass": 200, "halt": 409, "insufficient": 425}
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")

Check = Callable[[], list[str]]
"""The current problems, one line each; empty: fine."""


class Aggregating(Protocol):
    """What the API needs of :class:`otelbridge.processor.aggregate.Aggregator`."""

    def ingest(self, request: ExportTraceServiceRequest) -> None: ...
    def rollout(
        self, trace_id: bytes, *, expect: int | None = None, sketches: bool = False
    ) -> dict[str, Any]: ...
    def namespace(self, name: str, *, sketches: bool = False) -> dict[str, Any]: ...
    def gauges(self) -> list[tuple[MetricDecl, dict[str, str], float]]: ...
    def expire(self) -> None: ...
    def close(self) -> None: ...


class BadRequest(ValueError):
    """A request the API refuses (400); the message says why."""


def _flag(request: httpd.Request, name: str) -> bool:
    value = (request.arg(name) or "").strip().lower()
    if value not in _FLAGS:
        raise BadRequest(f"{name}={value[:20]!r}: expected 1 or 0")
    return _FLAGS[value]


def _expect(value: object) -> int | None:
    if value is None or value == "":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) > _MAX_EXPECT:
        raise BadRequest(f"expect={text[:20]!r}: expected a whole number of startups")
    return int(text)


def trace_id_of(value: object) -> bytes:
    """32 hex digits -> the 16-byte trace ID; BadRequest otherwise."""
    if not isinstance(value, str) or not _TRACE_ID.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise BadRequest(f"trace id {shown!r}: expected 32 hex digits")
    return bytes.fromhex(value)


class Api:
    """The API's handlers over one aggregator (each runs on an HTTP connection thread)."""

    def __init__(
        self,
        aggregator: Aggregating,
        config: Config,
        counters: Counters,
        *,
        health: Check,
        readiness: Check,
        token: str | None = None,
        peer_tls: ssl.SSLContext | None = None,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        """``token`` is sent to peers (replicas of one deployment share it); ``peer_tls``
        verifies their certificates (None: the system's trust store)."""
        self._aggregator = aggregator
        self._config = config
        self._counters = counters
        self._health = health
        self._readiness = readiness
        self._token = token
        self._peer_tls = peer_tls
        self._peer_timeout_s = peer_timeout_s

    def routes(self) -> list[httpd.Route]:
        """Every route of the API (``POST /v1/traces`` is :mod:`.http_otlp`'s)."""
        return [
            httpd.Route("GET", "/healthz", self._check(self._health), public=True),
            httpd.Route("GET", "/readyz", self._check(self._readiness), public=True),
            httpd.Route("GET", "/metrics", self._metrics),
            httpd.Route("GET", "/v1/counters", self._counters_json),
            httpd.Route("GET", "/v1/rollouts/{trace_id}", self._refusing(self._rollout)),
            httpd.Route("GET", "/v1/namespaces/{ns}", self._refusing(self._namespace)),
            httpd.Route(
                "POST",
                "/v1/flagger",
                self._refusing(self._flagger),
                max_body_bytes=_MAX_WEBHOOK_BYTES,
            ),
        ]

    # -- routes ---------------------------------------------------------------------------
    def _refusing(self, handler: httpd.Handler) -> httpd.Handler:
        def refusing(request: httpd.Request) -> httpd.Response:
            try:
                return handler(request)
            except BadRequest as exc:
                self._counters.inc(semconv.PROCESSOR_REQUESTS_REFUSED)
                return httpd.Response.json(400, {"error": str(exc)})

        return refusing

    @staticmethod
    def _check(problems_now: Check) -> httpd.Handler:
        def check(_request: httpd.Request) -> httpd.Response:
            problems = problems_now()
            if not problems:
                return httpd.Response.text(200, "ok")
            return httpd.Response.text(503, "\n".join(" ".join(p.splitlines()) for p in problems))

        return check

    def _rollout(self, request: httpd.Request) -> httpd.Response:
        trace_id = trace_id_of(request.params["trace_id"])
        expect = _expect(request.arg("expect"))
        sketches = _flag(request, "sketches")
        return httpd.Response.json(
            200, self._aggregator.rollout(trace_id, expect=expect, sketches=sketches)
        )

    def _namespace(self, request: httpd.Request) -> httpd.Response:
        name = request.params["ns"]
        sketches = _flag(request, "sketches")
        peers = [p.strip() for v in request.query.get("peers", ()) for p in v.split(",")]
        peers = list(dict.fromkeys(p for p in peers if p))  # each once
        if len(peers) > MAX_PEERS:
            raise BadRequest(f"{len(peers)} peers: at most {MAX_PEERS}")
        urls = {peer: self._peer_url(peer, name) for peer in peers}
        own = self._aggregator.namespace(name, sketches=sketches or bool(urls))
        if not urls:
            return httpd.Response.json(200, own)
        return httpd.Response.json(200, self._merged(name, own, urls, sketches=sketches))

    def _flagger(self, request: httpd.Request) -> httpd.Response:
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"the webhook body is not JSON: {exc}") from exc
        metadata = body.get("metadata") if isinstance(body, dict) else None
        if not isinstance(metadata, dict):
            raise BadRequest('the webhook body has no "metadata" object')
        if metadata.get("trace_id"):
            trace_id = trace_id_of(metadata["trace_id"])
        elif metadata.get("traceparent"):
            parsed = parse_traceparent(str(metadata["traceparent"]))
            if not isinstance(parsed, TraceContext):
                raise BadRequest(f"metadata.traceparent is not valid ({parsed.reason})")
            trace_id = parsed.trace_id
        else:
            raise BadRequest('metadata names no "trace_id" or "traceparent"')
        document = self._aggregator.rollout(trace_id, expect=_expect(metadata.get("expect")))
        status = _FLAGGER_STATUS.get(str(document.get("verdict")), 425)
        return httpd.Response.json(status, document)

    def _metrics(self, _request: httpd.Request) -> httpd.Response:
        text = render_metrics(self._counters.snapshot(), self._aggregator.gauges())
        return httpd.Response(200, text, PROMETHEUS_CONTENT_TYPE)

    def _counters_json(self, _request: httpd.Request) -> httpd.Response:
        return httpd.Response.json(200, self._counters.snapshot())

    # -- peers ----------------------------------------------------------------------------
    def _peer_url(self, peer: str, namespace: str) -> str:
        base = peer if "://" in peer else f"http://{peer}"
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise BadRequest(f"peer {peer[:80]!r}: expected http(s)://HOST:PORT or HOST:PORT")
        path = f"/v1/namespaces/{urllib.parse.quote(namespace, safe='')}"
        return f"{base.rstrip('/')}{path}?sketches=1"

    def _merged(
        self, name: str, own: dict[str, Any], urls: Mapping[str, str], *, sketches: bool
    ) -> dict[str, Any]:
        """``own`` merged with the documents at ``urls`` (peer as given -> its URL)."""
        from otelbridge.processor.verdict import merge_documents  # noqa: PLC0415

        docs, failed = [own], []
        for peer, outcome in zip(urls, self._fetch_all(list(urls.values())), strict=True):
            why = outcome
            if isinstance(outcome, dict):
                try:  # alone, so that one bad peer does not spoil the others
                    merge_documents([own, outcome], self._config, expect=None)
                    docs.append(outcome)
                    continue
                except ValueError as exc:
                    why = f"not a verdict document of this namespace ({exc})"
            failed.append((peer, str(why)))
        merged = merge_documents(docs, self._config, expect=None, sketches=sketches)
        merged["trace_id"] = None
        merged["namespace"] = name
        if "namespace_attribute" in own:  # which attribute this replica matched
            merged["namespace_attribute"] = own["namespace_attribute"]
        merged["peers"] = [p for p in urls if p not in {f for f, _ in failed}]
        merged["peers_failed"] = [peer for peer, _ in failed]
        reasons = list(merged.get("reasons") or [])
        for peer, why in failed:
            reasons.append(f"peer {peer} not merged: {why}")
        if failed and merged.get("verdict") == "pass":
            merged["verdict"] = "insufficient"
            reasons.append("not every replica answered: a pass needs all of their startups")
        merged["reasons"] = reasons
        return merged

    def _fetch_all(self, urls: Sequence[str]) -> list[dict[str, Any] | str]:
        """Each peer's document, or why it could not be had; at most the peer timeout
        (and a second) in all."""
        pool = concurrent.futures.ThreadPoolExecutor(len(urls), "otelbridge-peer")
        try:
            futures = [pool.submit(self._fetch, url) for url in urls]
            concurrent.futures.wait(futures, timeout=self._peer_timeout_s + 1)
            out: list[dict[str, Any] | str] = []
            for future in futures:
                if not future.done():
                    out.append(f"no answer within {self._peer_timeout_s:g} s")
                elif (exc := future.exception()) is not None:
                    out.append(f"{type(exc).__name__}: {exc}")
                else:
                    out.append(future.result())
            return out
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, url: str) -> dict[str, Any] | str:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(
                request, timeout=self._peer_timeout_s, context=self._peer_tls
            ) as answer:
                data = answer.read(_MAX_PEER_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            return f"unreachable ({exc.reason})"
        except (OSError, ValueError) as exc:
            return f"unreachable ({exc})"
        if len(data) > _MAX_PEER_DOCUMENT_BYTES:
            return f"document over {_MAX_PEER_DOCUMENT_BYTES} bytes"
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            return "answer is not JSON"
        return document if isinstance(document, dict) else "answer is not a JSON object"


# -- /metrics -----------------------------------------------------------------------------------
def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in sorted(labels.items()):
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{_INVALID_LABEL.sub("_", key)}="{escaped}"')
    return "{" + ",".join(parts) + "}"


def _number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render_metrics(
    counters: Mapping[str, int],
    gauges: Iterable[tuple[MetricDecl, Mapping[str, str], float]],
    counter_decls: Sequence[MetricDecl] = semconv.PROCESSOR_COUNTERS,
) -> bytes:
    """The Prometheus text format 0.0.4: each counter of ``counter_decls`` (``_total``)
    and each gauge point, named by :func:`otelbridge.emit.prometheus.prometheus_name`
    (``otelbridge.rollout.p99`` is ``otelbridge_rollout_p99_seconds``); attribute keys
    become labels with ``.`` spelled ``_`` (``otelbridge_rollout_trace_id``)."""
    lines: list[str] = []
    for decl in counter_decls:
        name = prometheus_name(decl.name, decl.unit, "counter")
        lines += [f"# HELP {name} {decl.description}", f"# TYPE {name} counter"]
        lines.append(f"{name} {counters.get(decl.name, 0)}")
    families: dict[str, tuple[MetricDecl, list[str]]] = {}
    for decl in semconv.PROCESSOR_GAUGES:  # declared, even when no rollout is known yet
        families[prometheus_name(decl.name, decl.unit, "gauge")] = (decl, [])
    for decl, labels, value in gauges:
        name = prometheus_name(decl.name, decl.unit, "gauge")
        families.setdefault(name, (decl, []))[1].append(f"{name}{_labels(labels)} {_number(value)}")
    for name, (decl, samples) in families.items():
        lines += [f"# HELP {name} {decl.description}", f"# TYPE {name} gauge", *samples]
    return ("\n".join(lines) + "\n").encode()
