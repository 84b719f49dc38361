"""Source (a): a running bridge's status API, ``GET http://HOST:PORT/v1/sla``.

That answer is verdicts and numbers; asked with ``?samples=1`` (the HTML report does) it
also carries the samples of the window and its slowest and failed startups with their
phases, so the report draws the same charts as from a span file. A bridge that does not
give them (an older one) makes a report without charts, which says so.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from typing import Any

from otelbridge.core import human
from otelbridge.report.model import Report
from otelbridge.report.verdicts import ReportError, report_from_json

SLA_PATH = "/v1/sla"
_MAX_BODY = 64 * 1024 * 1024  # a verdict JSON is kilobytes; this bounds a wrong answer


def sla_url(value: str | None, http_addr: str) -> str:
    """The URL to ask: ``value`` (``--from``) or, without it, ``http://HTTP_ADDR/v1/sla``.

    ``value`` may be a whole URL, a base URL (``http://host:9464`` or ending in ``/``:
    ``/v1/sla`` is added) or ``HOST:PORT``. An unspecified listening address (``0.0.0.0``,
    ``::``) is asked on loopback. Raises :class:`ReportError` for anything else.
    """
    if not value:
        host, sep, port = (http_addr or "").rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit():
            raise ReportError(f"status API address {http_addr!r}: expected HOST:PORT")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        value = f"http://{_bracket(host)}:{port}"
    if "://" not in value:
        value = f"http://{value}"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReportError(f"--from {value!r}: expected http://HOST:PORT[/v1/sla]")
    path = parts.path if parts.path not in ("", "/") else SLA_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def fetch_json(url: str, *, timeout_s: float = 5.0) -> Any:
    """``GET url`` -> the decoded JSON body. Raises :class:`ReportError` with one line
    saying what went wrong: not reachable, not answering in time, an HTTP error, not JSON.
    A loopback URL is asked directly, whatever the proxy variables say."""
    host = urllib.parse.urlsplit(url).hostname or ""
    handlers: list[urllib.request.BaseHandler] = []
    if human.is_loopback(host):
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read(_MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        raise ReportError(
            f"{url} answered {exc.code} {exc.reason}: is it an otelbridge status API "
            "(otelbridge run --http-addr)?"
        ) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) else exc.reason
        raise ReportError(
            f"cannot reach the bridge at {url}: {reason or exc.reason} "
            "(is `otelbridge run` running there? see --http-addr / $OTELBRIDGE_HTTP_ADDR)"
        ) from exc
    except TimeoutError as exc:
        raise ReportError(f"the bridge at {url} did not answer within {timeout_s:g} s") from exc
    except OSError as exc:  # a reset connection mid-answer
        raise ReportError(f"reading {url} failed: {exc.strerror or exc}") from exc
    if len(body) > _MAX_BODY:
        raise ReportError(f"{url} answered more than {_MAX_BODY} bytes: not a verdict JSON")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ReportError(f"{url} did not answer JSON: {exc}") from exc


def with_samples(url: str) -> str:
    """``url`` asking for the samples and startups behind the verdicts (``?samples=1``)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k != "samples"] + [("samples", "1")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def from_bridge(
    url: str,
    *,
    generated_at_ns: int,
    namespaces: Collection[str] = (),
    timeout_s: float = 5.0,
    samples: bool = False,
) -> Report:
    """The report of a running bridge's verdicts; with ``samples``, also the samples
    and startups behind them (what the charts draw). Raises :class:`ReportError`."""
    obj = fetch_json(with_samples(url) if samples else url, timeout_s=timeout_s)
    try:
        return report_from_json(
            obj, kind="api", source=url, generated_at_ns=generated_at_ns, namespaces=namespaces
        )
    except ReportError as exc:
        raise ReportError(f"{url} did not answer verdicts as /v1/sla does: {exc}") from exc
