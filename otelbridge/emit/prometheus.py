"""The Prometheus text exposition format (0.0.4) of OpenTelemetry SDK metrics data.

``/metrics`` of the status API renders an SDK ``InMemoryMetricReader``'s collection here
(see :mod:`otelbridge.emit.metrics` for why not the ``opentelemetry-exporter-prometheus``
package): counters, gauges and explicit-bucket histograms, with names and units mapped as
the OpenTelemetry-to-Prometheus compatibility rules say.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry.sdk.metrics.export import Gauge as GaugeData
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.metrics.export import Sum as SumData

__all__ = ["PROMETHEUS_CONTENT_TYPE", "prometheus_name", "render_prometheus"]

#: The content type of the text exposition format.
log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_UNIT_SUFFIXES: Final = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "%": "percent",
}
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")


def prometheus_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus metric name of an OpenTelemetry metric (the OpenTelemetry
    specification's Prometheus compatibility rules): invalid characters become ``_``;
    the unit, with its ``{annotations}`` dropped and ``s`` spelled ``seconds``, is
    appended unless the name already ends with it (``1`` becomes ``ratio`` for gauges
    only); ``kind`` ``counter`` adds ``_total``. ``kind``: ``counter``, ``gauge`` or
    ``histogram``."""
    out = _INVALID_NAME.sub("_", name).strip("_")
    if out[:1].isdigit():
        out = "_" + out
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if unit == "1":
        unit = "ratio" if kind == "gauge" else ""
    suffix = _INVALID_NAME.sub("_", _UNIT_SUFFIXES.get(unit, unit)).strip("_")
    if suffix and not out.endswith("_" + suffix):
        out += "_" + suffix
    if kind == "counter" and not out.endswith("_total"):
        out += "_total"
    return out


def _label_name(key: str) -> str:
    out = _INVALID_LABEL.sub("_", key)
    return "key_" + out if out[:1].isdigit() else out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Sequence):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    return str(value)


def _labels(attributes: Mapping[str, object] | None, extra: str = "") -> str:
    """``{k="v",...}`` (sorted; keys that sanitize alike are merged with ``;``)."""
    merged: dict[str, list[str]] = {}
    for key, value in sorted((attributes or {}).items()):
        name = _label_name(key)
        if name:
            merged.setdefault(name, []).append(_value_text(value))
    parts = [f'{k}="{_escape(";".join(v))}"' for k, v in sorted(merged.items())]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_prometheus(data: MetricsData | None) -> bytes:
    """Cumulative SDK metrics as the Prometheus text exposition format 0.0.4.

    Sums become ``counter`` (monotonic, ``_total``) or ``gauge``; gauges ``gauge``;
    explicit-bucket histograms ``histogram`` with cumulative ``_bucket{le=...}`` series
    ending at ``le="+Inf"``, then ``_sum`` and ``_count``. Names follow
    :func:`prometheus_name`; attribute keys become label names with invalid characters
    replaced by ``_``. The resource's attributes are a ``target_info`` gauge. A metric
    whose name a metric of another kind already took is left out (logged at debug)."""
    families: dict[str, tuple[str, str, list[str]]] = {}  # name -> (type, help, samples)
    target: dict[str, object] = {}
    for resource_metrics in data.resource_metrics if data is not None else ():
        target.update(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                _render_metric(
                    metric.name, metric.unit or "", metric.description or "", metric.data, families
                )
    lines: list[str] = []
    if target:
        lines += [
            "# HELP target_info Target metadata",
            "# TYPE target_info gauge",
            f"target_info{_labels(target)} 1",
        ]
    for name, (kind, description, samples) in families.items():
        help_text = description.replace("\\", "\\\\").replace("\n", "\\n")
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _render_metric(
    otel_name: str,
    unit: str,
    description: str,
    data: object,
    families: dict[str, tuple[str, str, list[str]]],
) -> None:
    if isinstance(data, SumData):
        kind = "counter" if data.is_monotonic else "gauge"
    elif isinstance(data, GaugeData):
        kind = "gauge"
    elif isinstance(data, HistogramData):
        kind = "histogram"
    else:
        log.debug("metric %s: %s is not rendered for Prometheus", otel_name, type(data).__name__)
        return
    name = prometheus_name(otel_name, unit, kind)
    family = families.setdefault(name, (kind, description, []))
    if family[0] != kind:
        log.debug("metric %s: %s already names a %s", otel_name, name, family[0])
        return
    samples = family[2]
    if isinstance(data, HistogramData):
        for point in data.data_points:
            cumulative = 0
            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                cumulative += count
                le = f'le="{_number(float(bound))}"'
                samples.append(f"{name}_bucket{_labels(point.attributes, le)} {cumulative}")
            inf = 'le="+Inf"'
            samples.append(f"{name}_bucket{_labels(point.attributes, inf)} {point.count}")
            samples.append(f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}")
            samples.append(f"{name}_count{_labels(point.attributes)} {point.count}")
        return
    assert isinstance(data, SumData | GaugeData)
    for number in data.data_points:
        samples.append(f"{name}{_labels(number.attributes)} {_number(number.value)}")
