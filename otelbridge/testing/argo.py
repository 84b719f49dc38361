"""A small evaluator of Argo Rollouts ``web`` metrics: what an AnalysisRun of a template
would conclude, without a cluster.

Argo Rollouts cannot run here, so the AnalysisTemplates under ``deploy/argo/`` are checked
by evaluating what they say, the way Argo's analysis controller does (read from
argo-rollouts' ``metricproviders/webmetric``, ``utils/evaluate`` and ``analysis/analysis.go``):

1. the template's ``args`` (defaults from ``spec.args[].value``, overridden by the caller)
   are substituted for ``{{args.NAME}}`` in every string of the metric; an arg with no
   value is an error, as in Argo;
2. one measurement: ``GET`` (or the ``method``) of ``provider.web.url`` with its
   ``headers``, within ``timeoutSeconds`` (default 10); a non-2xx answer, a timeout or a
   ``jsonPath`` that finds nothing is **Error**; a body that is not JSON is the result as
   a string; else ``result`` is the first match of ``jsonPath`` (default ``{$}``);
3. ``successCondition`` / ``failureCondition`` decide the measurement: with both, neither
   true is **Inconclusive**; with only one, the other is its negation; a true failure
   condition wins; with none, Successful;
4. the metric's phase after each measurement, as ``assessMetricStatus``: Failed when
   failed measurements > ``failureLimit`` (default 0); Inconclusive when inconclusive >
   ``inconclusiveLimit`` (default 0); Error when consecutive errors >
   ``consecutiveErrorLimit`` (default 4; errors do not count toward ``count``); Successful
   once ``consecutiveSuccessLimit`` successes in a row were seen, or when ``count``
   measurements were taken (the effective count is 1 without ``count`` and ``interval``).

Supported subset, and an error for anything else (so a template that needs more is not
silently misjudged): ``jsonPath`` of the form ``{$}``, ``{$.a.b}``, ``{.a[0]}``,
``{$['a-b']}``; conditions made of ``result`` (or ``result.a.b``) compared with ``==``,
``!=``, ``<``, ``<=``, ``>``, ``>=`` to a string, number, ``true``/``false`` or ``nil``,
joined by ``&&`` / ``||`` (``and`` / ``or``; no parentheses). ``interval`` and
``initialDelay`` are not waited for unless a ``sleep`` is given.

Usage, in a test that serves verdict documents::

    template = yaml.safe_load(Path("deploy/argo/analysis-template.yaml").read_text())
    result = run_web_analysis(template, {"trace-id": tid, "expect": "20",
                                         "processor": server_url})
    assert result.phase == SUCCESSFUL
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "ERROR",
    "FAILED",
    "INCONCLUSIVE",
    "RUNNING",
    "SUCCESSFUL",
    "AnalysisResult",
    "Measurement",
    "assess",
    "evaluate_condition",
    "evaluate_result",
    "json_path",
    "measure_web",
    "parse_duration",
    "resolve_args",
    "run_web_analysis",
]

SUCCESSFUL: Final = "Successful"
FAILED: Final = "Failed"
INCONCLUSIVE: Final = "Inconclusive"
ERROR: Final = "Error"
RUNNING: Final = "Running"

DEFAULT_CONSECUTIVE_ERROR_LIMIT: Final = 4
DEFAULT_TIMEOUT_S: Final = 10.0
_MAX_BODY: Final = 16 * 1024 * 1024

_ARG_RE: Final = re.compile(r"\{\{args\.([A-Za-z0-9_.\-]+)\}\}")


# -- args -----------------------------------------------------------------------------------


def _template_spec(template: Mapping[str, Any]) -> Mapping[str, Any]:
    if template.get("kind") not in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
        raise ValueError(f"not an AnalysisTemplate: kind {template.get('kind')!r}")
    spec = template.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("an AnalysisTemplate without a spec")
    return spec


def _substitute(value: Any, args: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in args:
                raise ValueError(f"failed to resolve {{{{args.{name}}}}}")
            return args[name]

        return _ARG_RE.sub(one, value)
    if isinstance(value, Mapping):
        return {key: _substitute(item, args) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, args) for item in value]
    return value


def resolve_args(
    template: Mapping[str, Any], args: Mapping[str, str], *, metric: str | None = None
) -> dict[str, Any]:
    """The metric (named ``metric``, else the template's only one) with ``{{args.NAME}}``
    replaced: ``args`` first, then the defaults of ``spec.args``. Raises ``ValueError`` for
    an arg that has no value (Argo resolves ``valueFrom`` itself: pass such args here) or
    that the template does not declare."""
    spec = _template_spec(template)
    declared: dict[str, str | None] = {}
    for arg in spec.get("args") or []:
        declared[str(arg["name"])] = None if arg.get("value") is None else str(arg["value"])
    unknown = sorted(set(args) - set(declared))
    if unknown:
        raise ValueError(f"args not declared by the template: {', '.join(unknown)}")
    values: dict[str, str] = {}
    for name, default in declared.items():
        value = args.get(name, default)
        if value is None:
            raise ValueError(f"args.{name} has no value (and the template gives none)")
        values[name] = value
    metrics = spec.get("metrics") or []
    chosen = [m for m in metrics if metric is None or m.get("name") == metric]
    if len(chosen) != 1:
        names = ", ".join(str(m.get("name")) for m in metrics)
        raise ValueError(f"pick one metric of: {names}" if chosen else f"no metric {metric!r}")
    resolved: dict[str, Any] = _substitute(chosen[0], values)
    return resolved


# -- jsonPath and conditions ----------------------------------------------------------------

_PATH_STEP_RE: Final = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\['([^']*)'\]")
_MISSING: Final = object()


def json_path(document: Any, expression: str) -> Any:
    """The first match of a Kubernetes-style ``jsonPath`` (the supported subset) in
    ``document``. Raises ``LookupError`` when it matches nothing (Argo: Error) and
    ``ValueError`` for an expression outside the subset."""
    text = expression.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"jsonPath {expression!r}: expected {{...}}")
    body = text[1:-1].strip()
    body = body.removeprefix("$")
    value = document
    position = 0
    while position < len(body):
        match = _PATH_STEP_RE.match(body, position)
        if match is None:
            raise ValueError(f"jsonPath {expression!r}: unsupported at {body[position:]!r}")
        key, index, quoted = match.groups()
        position = match.end()
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise LookupError(f"{expression}: index {index} not found")
            value = value[int(index)]
            continue
        name = key if key is not None else quoted
        if not isinstance(value, Mapping) or name not in value:
            raise LookupError(f"{expression}: {name} is not found")
        value = value[name]
    return value


_LITERAL_RE: Final = re.compile(
    r"""\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(-?\d+(?:\.\d+)?)|(true|false|nil))\s*"""
)
_OPERAND_RE: Final = re.compile(r"\s*result((?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*")
_COMPARISON_RE: Final = re.compile(r"(==|!=|<=|>=|<|>)")


def _literal(text: str) -> Any:
    match = _LITERAL_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"unsupported operand {text.strip()!r}")
    double, single, number, word = match.groups()
    if double is not None or single is not None:
        raw = double if double is not None else single
        return json.loads(f'"{raw}"') if double is not None else raw
    if number is not None:
        return float(number)
    return {"true": True, "false": False, "nil": None}[word]


def _operand(text: str, result: Any) -> Any:
    match = _OPERAND_RE.fullmatch(text)
    if match is None:
        return _literal(text)
    value = result
    for name in [p for p in match.group(1).split(".") if p]:
        if not isinstance(value, Mapping) or name not in value:
            return None  # expr-lang: a missing field of a map is nil
        value = value[name]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _compare(clause: str, result: Any) -> bool:
    parts = _COMPARISON_RE.split(clause)
    if len(parts) != 3:
        raise ValueError(f"unsupported condition {clause.strip()!r}")
    left, operator, right = _operand(parts[0], result), parts[1], _operand(parts[2], result)
    if operator in ("==", "!="):
        if _number(left) is not None and _number(right) is not None:
            equal = _number(left) == _number(right)
        else:
            equal = type(left) is type(right) and left == right
        return equal if operator == "==" else not equal
    a, b = _number(left), _number(right)
    if a is None or b is None:
        if isinstance(left, str) and isinstance(right, str):
            a_s, b_s = left, right
            return {"<": a_s < b_s, "<=": a_s <= b_s, ">": a_s > b_s, ">=": a_s >= b_s}[operator]
        raise ValueError(f"{clause.strip()!r}: cannot compare {left!r} and {right!r}")
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[operator]


def evaluate_condition(condition: str, result: Any) -> bool:
    """An Argo condition (the supported subset) with ``result`` bound. Raises
    ``ValueError`` for what the subset does not cover (Argo: Error)."""
    if "(" in condition or ")" in condition:
        raise ValueError(f"unsupported condition {condition!r}: no parentheses here")
    normalised = re.sub(r"\bor\b", "||", re.sub(r"\band\b", "&&", condition))
    return any(
        all(_compare(clause, result) for clause in alternative.split("&&"))
        for alternative in normalised.split("||")
    )


def evaluate_result(metric: Mapping[str, Any], result: Any) -> str:
    """The phase of one measurement whose value is ``result`` (Argo's ``EvaluateResult``):
    Successful, Failed or Inconclusive; Error when a condition cannot be evaluated."""
    success_condition = str(metric.get("successCondition") or "")
    failure_condition = str(metric.get("failureCondition") or "")
    try:
        success = bool(success_condition) and evaluate_condition(success_condition, result)
        failure = bool(failure_condition) and evaluate_condition(failure_condition, result)
    except ValueError:
        return ERROR
    if not success_condition and not failure_condition:
        return SUCCESSFUL
    if success_condition and not failure_condition:
        failure = not success
    elif failure_condition and not success_condition:
        success = not failure
    if failure:
        return FAILED
    if not success:
        return INCONCLUSIVE
    return SUCCESSFUL


# -- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One measurement: its phase, the value (the jsonPath result as JSON text, as Argo
    stores it) and, for an Error, why."""

    phase: str
    value: str = ""
    message: str = ""


def measure_web(metric: Mapping[str, Any]) -> Measurement:
    """Takes one measurement of a resolved web metric (:func:`resolve_args`)."""
    web = (metric.get("provider") or {}).get("web")
    if not isinstance(web, Mapping):
        raise ValueError(f"metric {metric.get('name')!r} has no web provider")
    method = str(web.get("method") or "GET")
    headers = {str(h["key"]): str(h["value"]) for h in web.get("headers") or []}
    body: bytes | None = None
    if web.get("jsonBody") is not None:
        body = json.dumps(web["jsonBody"]).encode()
        headers["Content-Type"] = "application/json"
    elif web.get("body"):
        body = str(web["body"]).encode()
    timeout_s = float(web.get("timeoutSeconds") or DEFAULT_TIMEOUT_S)
    request = urllib.request.Request(str(web["url"]), data=body, headers=headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            status = response.status
            raw = response.read(_MAX_BODY)
    except urllib.error.HTTPError as exc:
        return Measurement(ERROR, message=f"received non 2xx response code: {exc.code}")
    except (OSError, ValueError) as exc:  # refused, timed out, a malformed URL
        return Measurement(ERROR, message=str(exc))
    if not 200 <= status < 300:
        return Measurement(ERROR, message=f"received non 2xx response code: {status}")
    try:
        data = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")
        return Measurement(evaluate_result(metric, text), value=text)
    try:
        value = json_path(data, str(web.get("jsonPath") or "{$}"))
    except LookupError as exc:
        return Measurement(ERROR, message=f"Could not find JSONPath in body: {exc}")
    return Measurement(evaluate_result(metric, value), value=json.dumps(value))


# -- assessing ------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds of a Go duration as Argo writes ``interval`` (``30s``, ``1m30s``, ``500ms``)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _int_field(metric: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = metric.get(name)
    if value is None:
        return default
    return int(value)  # an IntOrString: "{{args.count}}" resolved to a number


def _effective_count(metric: Mapping[str, Any]) -> int | None:
    count = _int_field(metric, "count", None)
    if not count:
        return None if metric.get("interval") else 1
    return count


def assess(metric: Mapping[str, Any], measurements: Sequence[Measurement]) -> str:
    """The metric's phase after ``measurements`` (Argo's ``assessMetricStatus``, not
    terminating): Successful, Failed, Inconclusive, Error, or Running (more to take)."""
    if not measurements:
        return RUNNING
    failed = sum(1 for m in measurements if m.phase == FAILED)
    inconclusive = sum(1 for m in measurements if m.phase == INCONCLUSIVE)
    counted = sum(1 for m in measurements if m.phase != ERROR)
    consecutive_errors = 0
    for m in reversed(measurements):
        if m.phase != ERROR:
            break
        consecutive_errors += 1
    consecutive_successes = 0
    for m in reversed(measurements):
        if m.phase != SUCCESSFUL:
            break  # any other phase, an error too, ends the streak
        consecutive_successes += 1
    phase = ""
    failure_limit = _int_field(metric, "failureLimit", 0)
    if failure_limit is not None and failure_limit >= 0 and failed > failure_limit:
        phase = FAILED
    if inconclusive > (_int_field(metric, "inconclusiveLimit", 0) or 0):
        phase = INCONCLUSIVE
    error_limit = _int_field(metric, "consecutiveErrorLimit", DEFAULT_CONSECUTIVE_ERROR_LIMIT)
    if consecutive_errors > (error_limit or 0):
        phase = ERROR
    if phase:
        return phase
    success_limit = _int_field(metric, "consecutiveSuccessLimit", 0) or 0
    if success_limit > 0 and consecutive_successes >= success_limit:
        return SUCCESSFUL
    count = _effective_count(metric)
    if count is not None and counted >= count:
        failure_applies = failure_limit is None or failure_limit >= 0
        if success_limit > 0:
            return INCONCLUSIVE if failure_applies else FAILED
        return SUCCESSFUL
    return RUNNING


@dataclass(frozen=True)
class AnalysisResult:
    """What :func:`run_web_analysis` concluded, and the measurements it took."""

    phase: str
    metric: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)


def run_web_analysis(
    template: Mapping[str, Any],
    args: Mapping[str, str],
    *,
    metric: str | None = None,
    max_measurements: int = 100,
    sleep: Callable[[float], None] | None = None,
) -> AnalysisResult:
    """Runs a web metric of ``template`` (a parsed AnalysisTemplate) as an AnalysisRun
    would: measures until the metric's phase is final, or ``max_measurements`` were taken
    (then Running: a metric without ``count`` runs forever). ``sleep`` (e.g.
    ``time.sleep``) waits ``initialDelay`` and ``interval`` (10 s after an error without
    an interval); by default nothing is waited for."""
    resolved = resolve_args(template, args, metric=metric)
    measurements: list[Measurement] = []
    if sleep is not None and resolved.get("initialDelay"):
        sleep(parse_duration(str(resolved["initialDelay"])))
    for _ in range(max_measurements):
        measurements.append(measure_web(resolved))
        phase = assess(resolved, measurements)
        if phase != RUNNING:
            return AnalysisResult(phase, resolved, measurements)
        if sleep is not None:
            interval = resolved.get("interval")
            sleep(parse_duration(str(interval)) if interval else DEFAULT_TIMEOUT_S)
    return AnalysisResult(RUNNING, resolved, measurements)
