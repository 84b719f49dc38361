"""The SLA report: ``otelbridge sla`` (docs/sla.md, "The report").

A :class:`Report` is built from one of two sources:

* a running bridge's ``GET /v1/sla`` (:func:`from_bridge`): the verdicts and figures of its
  rolling window, and with ``samples`` the samples and startups the charts draw;
* a jsonl span file (:func:`read_span_file`, or :func:`from_spans` on spans already read):
  the startups are rebuilt from their spans and judged here, by the functions of
  :mod:`otelbridge.sla` with the config's budgets, over the whole file; the raw durations
  and the slowest startups' phases are kept for the charts.

It is rendered as a terminal table (:func:`render_table`), the verdict JSON
(``Report.verdict_json``) or one self-contained HTML page (:func:`render_html`,
:func:`write_html`; the charts need matplotlib, imported only then).

Errors of the sources and of writing are :class:`ReportError`, one line each.
"""

from __future__ import annotations

from otelbridge.report.bridge import from_bridge, sla_url
from otelbridge.report.htmlbits import check_trace_url
from otelbridge.report.model import (
    BudgetResult,
    GcFigures,
    NamespaceReport,
    Phase,
    Report,
    Spread,
    StartupBars,
)
from otelbridge.report.page import render_html, write_html
from otelbridge.report.spans import collect, from_spans, read_span_file
from otelbridge.report.terminal import render_table
from otelbridge.report.verdicts import ReportError, report_from_json

__all__ = [
    "BudgetResult",
    "GcFigures",
    "NamespaceReport",
    "Phase",
    "Report",
    "ReportError",
    "Spread",
    "StartupBars",
    "check_trace_url",
    "collect",
    "from_bridge",
    "from_spans",
    "read_span_file",
    "render_html",
    "render_table",
    "report_from_json",
    "sla_url",
    "write_html",
]
