"""Small pieces every part of the HTML page uses: escaping, verdict words and classes,
figures, and links to a trace in Jaeger, Tempo or Grafana."""

from __future__ import annotations

import html
import urllib.parse
from typing import Final

from otelbridge import sla
from otelbridge.report.verdicts import ReportError

VERDICT_WORDS: Final = {
    sla.Verdict.PASS.value: "PASS",
    sla.Verdict.BREACH.value: "BREACH",
    sla.Verdict.INSUFFICIENT.value: "INSUFFICIENT",
}

#: The placeholder of a trace URL template (``--trace-url``).
TRACE_ID_FIELD: Final = "{trace_id}"


def e(value: object) -> str:
    """``value`` as HTML text (attribute-safe)."""
    return html.escape(str(value), quote=True)


def verdict_class(verdict: str) -> str:
    """The CSS class of a verdict (an unknown one looks like insufficient)."""
    return verdict if verdict in VERDICT_WORDS else "insufficient"


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{e(caption)}</figcaption></figure>"


def check_trace_url(template: str) -> str:
    """``template`` if it is an http(s) URL holding ``{trace_id}``, e.g.
    ``http://jaeger:16686/trace/{trace_id}``; else :class:`ReportError` saying why."""
    if TRACE_ID_FIELD not in template:
        raise ReportError(
            f"--trace-url {template!r}: put {TRACE_ID_FIELD} where the trace ID goes, "
            "e.g. http://localhost:16686/trace/{trace_id}"
        )
    parts = urllib.parse.urlsplit(template.replace(TRACE_ID_FIELD, "0"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ReportError(f"--trace-url {template!r}: expected an http:// or https:// URL")
    return template


def trace_link(trace_id: str, template: str | None) -> str:
    """A trace ID as code, linked through ``template`` when there is one. Only a
    32-digit hex ID is put into a URL."""
    if not trace_id:
        return "-"
    text = f"<code>{e(trace_id)}</code>"
    if not template or len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        return text
    href = template.replace(TRACE_ID_FIELD, trace_id)
    return f'<a href="{e(href)}" rel="noopener">{text}</a>'
