"""The verdict JSON (``GET /v1/sla``'s shape, docs/sla.md) -> :class:`Report`.

Both sources go through :func:`report_from_json`: the bridge's answer as it came, and the
JSON a span file's verdicts are computed into, so both give reports of one shape. The
parser checks what the renderers rely on and says precisely what does not fit; fields it
does not know are kept in ``verdict_json`` and otherwise ignored, so a newer bridge's
answer still reads.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.errors import OtelbridgeError
from otelbridge.report.model import (
    BudgetResult,
    NamespaceReport,
    Phase,
    Report,
    SourceKind,
    StartupBars,
)

_VERDICTS = frozenset(v.value for v in sla.Verdict)
#: Namespaces are listed worst first: what needs attention is on top.
_SEVERITY = {sla.Verdict.BREACH.value: 0, sla.Verdict.INSUFFICIENT.value: 1}


class ReportError(OtelbridgeError):
    """The report's source cannot be used: the bridge cannot be reached or answered
    something else than verdicts, the span file cannot be read or decoded, the HTML
    cannot be written. The message is one line, meant for the terminal."""


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    # bool is an int: a count or a number must not be true/false
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ReportError(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _number_or_none(obj: Mapping[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    return float(_get(obj, key, (int, float), where))


def _verdict(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value not in _VERDICTS:
        raise ReportError(f"{where}.{key}: expected one of {sorted(_VERDICTS)}, got {value!r}")
    return str(value)


def _budget(name: str, obj: Any, where: str) -> BudgetResult:
    if not isinstance(obj, Mapping):
        raise ReportError(f"{where}: expected an object, got {obj!r}")
    return BudgetResult(
        name=name,
        verdict=_verdict(obj, "verdict", where),
        samples=int(_get(obj, "samples", int, where)),
        p99_s=_number_or_none(obj, "p99_s", where),
        budget_s=float(_get(obj, "budget_s", (int, float), where)),
        breaches=int(obj.get("breaches") or 0),
    )


def namespace_from_json(name: str, obj: Any) -> NamespaceReport:
    """One entry of ``namespaces``. Raises :class:`ReportError` naming the field."""
    where = f"namespaces.{name}"
    if not isinstance(obj, Mapping):
        raise ReportError(f"{where}: expected an object, got {obj!r}")
    raw_budgets = obj.get("budgets")
    if not isinstance(raw_budgets, Mapping):
        raise ReportError(f"{where}.budgets: expected an object, got {raw_budgets!r}")
    # the known budgets in their reported order, then any a newer bridge added
    names = [n for n in sla.DURATIONS if n in raw_budgets]
    names += [n for n in raw_budgets if n not in sla.DURATIONS]
    gc = obj.get("gc")
    raw_failed = _list(obj, "failed", where)
    return NamespaceReport(
        name=name,
        verdict=_verdict(obj, "verdict", where),
        startups=int(_get(obj, "startups", int, where)),
        traced=int(_get(obj, "traced", int, where)),
        coverage=_number_or_none(obj, "coverage", where),
        coverage_verdict=_verdict(obj, "coverage_verdict", where),
        budgets=tuple(_budget(n, raw_budgets[n], f"{where}.budgets.{n}") for n in names),
        gc_figures=dict(gc) if isinstance(gc, Mapping) else {},
        samples=_samples(obj, where),
        slowest=tuple(
            _startup(x, f"{where}.slowest[{i}]") for i, x in enumerate(_list(obj, "slowest", where))
        ),
        failed=tuple(_startup(x, f"{where}.failed[{i}]") for i, x in enumerate(raw_failed)),
        failed_total=int(obj.get("failed_total") or len(raw_failed)),
        outcomes={
            str(k): v
            for k, v in (obj.get("outcomes") or {}).items()
            if isinstance(v, int) and not isinstance(v, bool)
        }
        if isinstance(obj.get("outcomes"), Mapping)
        else {},
    )


# -- the detail of /v1/sla?samples=1 (absent from the plain answer) -----------------------------
def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReportError(f"{where}.{key}: expected a list, got {value!r}")
    return value


def _samples(obj: Mapping[str, Any], where: str) -> dict[str, tuple[float, ...]]:
    raw = obj.get("samples")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ReportError(f"{where}.samples: expected an object, got {raw!r}")
    out: dict[str, tuple[float, ...]] = {}
    for name, values in raw.items():
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise ReportError(f"{where}.samples.{name}: expected a list of seconds")
        out[str(name)] = tuple(float(v) for v in values)
    return out


def _startup(obj: Any, where: str) -> StartupBars:
    """One startup of ``slowest`` or ``failed`` (sla.StartupFacts.to_json)."""
    if not isinstance(obj, Mapping):
        raise ReportError(f"{where}: expected an object, got {obj!r}")
    phases = []
    for i, phase in enumerate(_list(obj, "phases", where)):
        at = f"{where}.phases[{i}]"
        if not isinstance(phase, Mapping):
            raise ReportError(f"{at}: expected an object, got {phase!r}")
        phases.append(
            Phase(
                name=str(phase.get("name") or "?"),
                offset_s=float(_get(phase, "offset_s", (int, float), at)),
                duration_s=float(_get(phase, "duration_s", (int, float), at)),
                complete=phase.get("complete") is not False,
            )
        )
    return StartupBars(
        container_id=str(obj.get("container_id") or ""),
        label=str(obj.get("label") or obj.get("container_id") or "?"),
        outcome=str(obj.get("outcome") or "?"),
        total_s=float(_get(obj, "total_s", (int, float), where)),
        partial=obj.get("partial") is True,
        breached=tuple(str(b) for b in _list(obj, "breached", where)),
        phases=tuple(phases),
        trace_id=str(obj.get("trace_id") or ""),
        reason=str(obj.get("reason") or ""),
    )


def _resource(obj: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(nodes, clusters) from the bridge's ``resource``."""
    raw = obj.get("resource")
    if not isinstance(raw, Mapping):
        return (), ()
    node = raw.get(semconv.K8S_NODE_NAME) or raw.get(semconv.HOST_NAME)
    cluster = raw.get(semconv.K8S_CLUSTER_NAME)
    return ((str(node),) if node else ()), ((str(cluster),) if cluster else ())


def report_from_json(
    obj: Any,
    *,
    kind: SourceKind,
    source: str,
    generated_at_ns: int,
    namespaces: Collection[str] = (),
) -> Report:
    """A report of the verdicts in ``obj`` (the ``/v1/sla`` shape), namespaces worst
    first (breach, insufficient, pass; then by name). ``namespaces``, if not empty, keeps
    only those (the JSON printed is filtered alike). Raises :class:`ReportError` when
    ``obj`` is not that shape."""
    if not isinstance(obj, Mapping):
        raise ReportError(f"expected a JSON object of verdicts, got {type(obj).__name__}")
    raw = obj.get("namespaces")
    if not isinstance(raw, Mapping):
        raise ReportError(f"namespaces: expected an object, got {raw!r}")
    budgets = obj.get("budgets")
    if not isinstance(budgets, Mapping):
        raise ReportError(f"budgets: expected an object, got {budgets!r}")
    limits = {
        str(k): float(v)
        for k, v in budgets.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    wanted = set(namespaces)
    kept = {str(k): v for k, v in raw.items() if not wanted or k in wanted}
    verdict_json = {**obj, "namespaces": kept}
    nodes, clusters = _resource(obj)
    return Report(
        kind=kind,
        source=source,
        generated_at_ns=generated_at_ns,
        window_s=_number_or_none(obj, "window_s", "sla"),
        min_samples=int(_get(obj, "min_samples", int, "sla")),
        budgets={k: v for k, v in limits.items() if k != sla.COVERAGE},
        coverage_min=limits.get(sla.COVERAGE, 0.0),
        namespaces=tuple(
            sorted(
                (namespace_from_json(n, kept[n]) for n in kept),
                key=lambda ns: (_SEVERITY.get(ns.verdict, 2), ns.name),
            )
        ),
        verdict_json=verdict_json,
        left_out=tuple(sorted(str(k) for k in raw if str(k) not in kept)),
        nodes=nodes,
        clusters=clusters,
    )
