"""What `otelbridge gate` asks about, and how it asks: durations, the rollout's trace ID
(from a trace ID, a traceparent or a carrier file), the processors' URLs and one request
for a verdict document. See :mod:`otelbridge.gate` for how the answers are judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from otelbridge import __version__
from otelbridge.core import human, tracecontext
from otelbridge.core.errors import ConfigError

#: one request may take this long at most (less when the deadline is nearer)
REQUEST_TIMEOUT_S: Final = 10.0
#: a verdict document is kilobytes (sketches included); this bounds a wrong answer
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
#: carrier and token files are small; this bounds a wrong path (a log file, /dev/zero)
MAX_FILE_BYTES: Final = 1024 * 1024

_ROLLOUTS_PATH: Final = "/v1/rollouts"
_TRACE_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
_NUMBER_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DURATION_PART_RE: Final = re.compile(rf"({_NUMBER_RE.pattern})(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# HTTP answers that asking again may change: the processor is starting, overloaded or
# restarting behind a proxy. Any other 4xx means the gate is asking the wrong thing.
_RETRYABLE_STATUS: Final = frozenset({408, 425, 429})


# -- durations ------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds of a duration: ``90s``, ``5m``, ``1h``, ``250ms``, ``1m30s`` (Go's style, as
    Argo and Flagger write them) or plain seconds (``90``, ``2.5``). Raises ``ValueError``
    for anything else, a negative value included."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    if _NUMBER_RE.fullmatch(value):
        return float(value)
    total = 0.0
    position = 0
    for match in _DURATION_PART_RE.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or position == 0:
        raise ValueError(f"{text!r}: expected a duration like 90s, 5m, 1h, 1m30s or seconds")
    return total


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def expect_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of startups >= 1")
    return value


# -- which rollout --------------------------------------------------------------------------


def trace_id_from_value(value: str) -> str:
    """A trace ID as given on the command line: 32 hex digits (upper case is accepted
    and lowered: Jaeger and Tempo show lower case, a copy from elsewhere may not), not
    all zero. Raises :class:`ConfigError`."""
    trace_id = value.strip().lower()
    if not _TRACE_ID_RE.fullmatch(trace_id):
        raise ConfigError([f"trace ID {value!r}: expected 32 hex digits"])
    if trace_id == "0" * 32:
        raise ConfigError([f"trace ID {value!r}: all zeros is not a trace ID"])
    return trace_id


def trace_id_from_traceparent(value: str, *, where: str = "--traceparent") -> str:
    """The trace ID of a W3C ``traceparent`` (parsed strictly, as the bridge does).
    Raises :class:`ConfigError` naming the broken rule."""
    parsed = tracecontext.parse_traceparent(value)
    if isinstance(parsed, tracecontext.Invalid):
        raise ConfigError([f"{where} {value[:80]!r} is not a valid traceparent ({parsed.reason})"])
    return parsed.trace_id_hex


def read_small(path: Path, what: str) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{what} {path}: cannot read ({exc.strerror or exc})"]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{what} {path}: larger than {MAX_FILE_BYTES} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{what} {path}: not UTF-8 text"]) from exc


def find_key(obj: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """A string value under one of ``names`` (any case), at the top of ``obj`` or one
    level down (``{"context": {"traceparent": ...}}``)."""
    for level in (obj, *(v for v in obj.values() if isinstance(v, Mapping))):
        for key, value in level.items():
            if isinstance(key, str) and key.lower() in names and isinstance(value, str):
                return value
    return None


def trace_id_from_carrier(path: Path) -> str:
    """The trace ID of a rollout carrier file, read tolerantly:

    * the JSON object ``otelbridge rollout start --carrier FILE`` writes: its
      ``traceparent`` (any case; at the top or in a nested object), else a ``trace_id``;
    * or the ``KEY=VALUE`` lines ``otelbridge rollout start`` prints (``TRACEPARENT=00-...``,
      an ``export`` in front and quotes allowed), as a CI job may have saved them.

    Raises :class:`ConfigError` saying what the file lacks."""
    text = read_small(path, "carrier")
    where = f"carrier {path}"
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, Mapping):
        traceparent = find_key(obj, ("traceparent",))
        if traceparent is not None:
            return trace_id_from_traceparent(traceparent, where=f"{where}: traceparent")
        trace_id = find_key(obj, ("trace_id", "traceid", "trace-id"))
        if trace_id is not None:
            return trace_id_from_value(trace_id)
        raise ConfigError([f"{where}: a JSON object without a traceparent"])
    if obj is not None:
        raise ConfigError([f"{where}: JSON, but not an object with a traceparent"])
    for line in text.splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.strip().lower() == "traceparent":
            value = value.strip().strip("'\"")
            return trace_id_from_traceparent(value, where=f"{where}: TRACEPARENT")
    raise ConfigError([f"{where}: neither JSON with a traceparent nor a TRACEPARENT=... line"])


def subject_of(args: argparse.Namespace) -> Subject:
    if args.namespace is not None:
        if not args.namespace.strip():
            raise ConfigError(["--namespace: empty"])
        if args.expect is not None:
            raise ConfigError(["--expect counts a rollout's startups: not with --namespace"])
        return Subject.namespace(args.namespace)
    if args.trace_id is not None:
        return Subject.rollout(trace_id_from_value(args.trace_id))
    if args.traceparent is not None:
        return Subject.rollout(trace_id_from_traceparent(args.traceparent))
    return Subject.rollout(trace_id_from_carrier(Path(args.carrier)))


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    token = read_small(Path(path), "token file").strip()
    if not token:
        raise ConfigError([f"token file {path}: empty"])
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError([f"token file {path}: the token must be one line without spaces"])
    return token


# -- asking the processors ------------------------------------------------------------------


def processor_base(value: str) -> str:
    """The base URL of a processor's API from ``--processor``: ``http://HOST:PORT``,
    ``https://...``, ``HOST:PORT``, or a URL with a path prefix (behind a proxy); a
    trailing ``/v1/rollouts`` is dropped. Raises :class:`ConfigError`."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urllib.parse.urlsplit(text)
    try:
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError([f"--processor {value!r}: expected http(s)://HOST:PORT"])
    path = parts.path.rstrip("/")
    path = path.removesuffix(_ROLLOUTS_PATH)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def rollout_url(base: str, trace_id: str, expect: int | None, *, sketches: bool = True) -> str:
    """``BASE/v1/rollouts/{trace_id}?expect=N&sketches=1`` (``base`` from
    :func:`processor_base`)."""
    query = []
    if expect is not None:
        query.append(("expect", str(expect)))
    if sketches:
        query.append(("sketches", "1"))
    suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
    return f"{base}{_ROLLOUTS_PATH}/{trace_id}{suffix}"


_NAMESPACES_PATH: Final = "/v1/namespaces"


@dataclasses.dataclass(frozen=True)
class Subject:
    """What the gate judges: a rollout (``kind`` ``rollout``, ``key`` its trace ID, 32
    lowercase hex digits) or a namespace over every rollout held (``namespace``, its
    name)."""

    kind: str
    key: str

    @classmethod
    def rollout(cls, trace_id: str) -> Subject:
        return cls("rollout", trace_id)

    @classmethod
    def namespace(cls, name: str) -> Subject:
        return cls("namespace", name)

    @property
    def field(self) -> str:
        """The document's key that names it: ``trace_id`` or ``namespace``."""
        return "trace_id" if self.kind == "rollout" else "namespace"

    def url(self, base: str, expect: int | None) -> str:
        """What to ask a processor at ``base``, sketches included."""
        if self.kind == "rollout":
            return rollout_url(base, self.key, expect)
        name = urllib.parse.quote(self.key, safe="")
        return f"{base}{_NAMESPACES_PATH}/{name}?sketches=1"


class ProcessorError(Exception):
    """A processor did not answer a verdict document. ``permanent``: asking again will
    not help (refused token, wrong URL, not a processor); else it may (not reachable,
    5xx, no answer in time)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def fetch_document(url: str, *, token: str | None, timeout_s: float) -> dict[str, Any]:
    """``GET url`` -> the JSON object it answers. Raises :class:`ProcessorError` with one
    line saying what went wrong. A loopback URL is asked directly, whatever the proxy
    variables say; others follow ``https_proxy``/``no_proxy``; TLS is verified against the
    system's CAs (``SSL_CERT_FILE`` names another bundle)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    handlers: list[urllib.request.BaseHandler] = []
    if human.is_loopback(host):
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    headers = {"Accept": "application/json", "User-Agent": f"otelbridge-gate/{__version__}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        code = exc.code
        if code == 401:
            hint = " (give the processor's token with --token-file)" if token is None else ""
            raise ProcessorError(
                f"refused the request: 401 Unauthorized{hint}", permanent=True
            ) from exc
        if code == 404:
            raise ProcessorError(
                "404 Not Found: not an otelbridge processor API at this URL "
                "(`otelbridge processor --http-addr`, default port 9465)",
                permanent=True,
            ) from exc
        retryable = code >= 500 or code in _RETRYABLE_STATUS
        raise ProcessorError(f"answered {code} {exc.reason}", permanent=not retryable) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) else exc.reason
        raise ProcessorError(f"cannot connect: {reason or exc.reason}") from exc
    except TimeoutError as exc:
        raise ProcessorError(f"no answer within {timeout_s:g} s") from exc
    except OSError as exc:  # a connection reset mid-answer
        raise ProcessorError(f"reading the answer failed: {exc.strerror or exc}") from exc
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ProcessorError(
            f"answered more than {MAX_DOCUMENT_BYTES} bytes: not a verdict document",
            permanent=True,
        )
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ProcessorError(f"did not answer JSON: {exc}", permanent=True) from exc
    if not isinstance(document, dict):
        raise ProcessorError("did not answer a JSON object: not a verdict document", permanent=True)
    return document
