"""`otelbridge gate`: pass or halt a rollout from the processors' verdicts.

A CD system runs ``otelbridge gate`` after it deployed and acts on the exit code:

* ``0`` pass, ``1`` halt, ``2`` insufficient: too few startups seen when the wait ended,
  or no processor answered (each failed one is named, with the reason). Bad usage (an
  invalid trace ID, an unreadable carrier or token file, a bad config) is also ``2``,
  with a message on standard error and no report.

How it decides (docs/rollouts.md):

1. The rollout is a trace ID, from ``--trace-id``, ``--traceparent`` or ``--carrier`` (the
   JSON file ``otelbridge rollout start`` writes; its ``TRACEPARENT=...`` output is
   accepted too). ``--namespace NS`` judges a namespace instead: every rollout the
   processors hold in it (``GET /v1/namespaces/NS?sketches=1``, merged the same way).
2. Every ``--interval`` it asks every ``--processor`` for
   ``GET /v1/rollouts/{trace_id}?expect=N&sketches=1`` (in parallel; with the bearer token
   of ``--token-file``), keeps each processor's latest document and merges them with
   :func:`otelbridge.processor.verdict.merge_documents`: counts add, sketches merge, and the
   rules of ``[gate]`` with the budgets of ``[sla]`` (``--config``) judge the whole. The
   merged verdict, not any processor's own, is the gate's.
3. It stops as soon as every processor has answered at least once and the rollout is
   complete: with ``--expect N``, N startups seen; without, a verdict other than
   ``insufficient`` (so without ``--expect`` the gate may judge the first
   ``gate.min_startups`` startups: give ``--expect``). Else it asks again every interval
   until ``--timeout``, then reports the verdict of what it has. A processor that cannot
   be reached or answers an error is asked again at the next interval; its last good
   document still counts.
4. The verdict is never ``pass`` while a processor never answered: a rollout lives on
   one replica, but which one the gate cannot know, and a crash among the startups that
   replica holds would go unseen. Such a pass becomes ``insufficient``, naming the
   processor and why; a halt stays a halt (the breach was seen). When every processor
   that never answered refused in a way asking again cannot heal (401, 403, 404, an
   answer that is not a verdict document), the gate stops at once rather than wait.

Output: a readable report, or ``--json``: the merged document without sketches plus a
``gate`` object (exit code, timed out, wait, each processor). Progress on standard error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from otelbridge.core import human
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import Config, load_config
from otelbridge.core.errors import ConfigError
from otelbridge.gate_inputs import (
    REQUEST_TIMEOUT_S,
    ProcessorError,
    Subject,
    duration_arg,
    expect_arg,
    fetch_document,
    processor_base,
    read_token,
    subject_of,
)

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_TIMEOUT_S",
    "EXIT_CODES",
    "EXIT_HALT",
    "EXIT_INSUFFICIENT",
    "EXIT_PASS",
    "Outcome",
    "ProcessorState",
    "configure",
    "main",
    "render_json",
    "render_report",
    "run_gate",
]

EXIT_PASS: Final = 0
EXIT_HALT: Final = 1
EXIT_INSUFFICIENT: Final = 2
#: verdict -> exit code; anything else (no verdict) is insufficient
EXIT_CODES: Final = {"pass": EXIT_PASS, "halt": EXIT_HALT, "insufficient": EXIT_INSUFFICIENT}

DEFAULT_TIMEOUT_S: Final = 300.0
DEFAULT_INTERVAL_S: Final = 5.0


# -- waiting for the verdict ----------------------------------------------------------------


@dataclasses.dataclass
class ProcessorState:
    """What the gate knows of one processor."""

    url: str
    """Its base URL (:func:`processor_base`)."""
    document: dict[str, Any] | None = None
    """Its latest verdict document (with sketches), or ``None`` if it never answered."""
    error: str | None = None
    """Why its latest request failed, ``None`` when the latest one answered."""
    permanent: bool = False
    """Whether that failure is one asking again will not heal."""
    answers: int = 0
    """How many verdict documents it answered."""

    def as_json(self) -> dict[str, Any]:
        """The state as the ``gate.processors`` entries of ``--json``."""
        startups = self.document.get("startups") if self.document is not None else None
        return {
            "url": self.url,
            "ok": self.error is None,
            "startups": startups,
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The end of a gate's wait."""

    subject: Subject
    expect: int | None
    document: dict[str, Any]
    """The merged verdict document, without sketches."""
    processors: tuple[ProcessorState, ...]
    timed_out: bool
    """Whether the wait ended at the timeout rather than on a complete rollout."""
    waited_s: float
    polls: int

    @property
    def trace_id(self) -> str | None:
        """The rollout's trace ID (``None`` for a namespace)."""
        return self.subject.key if self.subject.kind == "rollout" else None

    @property
    def verdict(self) -> str:
        return str(self.document.get("verdict"))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.verdict, EXIT_INSUFFICIENT)


def _merge(
    documents: Sequence[dict[str, Any]], config: Config, expect: int | None
) -> dict[str, Any]:
    # imported here: the command line builds every command's parser, and only the gate
    # needs the sketches (ddsketch, protobuf)
    from otelbridge.processor.verdict import merge_documents  # noqa: PLC0415

    return merge_documents(documents, config, expect=expect)


def _no_answer_document(
    subject: Subject, expect: int | None, config: Config, processors: Sequence[ProcessorState]
) -> dict[str, Any]:
    """The document when no processor answered: insufficient, nothing seen, and why."""
    document = _merge([], config, expect)
    failures = "; ".join(f"{p.url}: {p.error or 'no answer'}" for p in processors)
    return {
        **document,
        subject.field: subject.key,
        "verdict": "insufficient",
        "expect": expect,
        "reasons": [f"no processor answered: {failures}"],
    }


def _ask(
    state: ProcessorState,
    subject: Subject,
    *,
    expect: int | None,
    config: Config,
    token: str | None,
    timeout_s: float,
) -> None:
    """Asks one processor and updates ``state``: the new document, or the failure (its
    last good document stays)."""
    url = subject.url(state.url, expect)
    try:
        document = fetch_document(url, token=token, timeout_s=timeout_s)
        answered = document.get(subject.field) or subject.key
        if subject.kind == "rollout" and isinstance(answered, str):
            answered = answered.lower()
        if answered != subject.key:
            raise ProcessorError(
                f"answered the document of {subject.kind} {str(answered)[:40]!r}, "
                f"not of {subject.key}",
                permanent=True,
            )
        try:
            _merge([document], config, expect)
        except ValueError as exc:
            raise ProcessorError(f"not a verdict document: {exc}", permanent=True) from exc
    except ProcessorError as exc:
        state.error = exc.reason
        state.permanent = exc.permanent
        return
    state.document = document
    state.error = None
    state.permanent = False
    state.answers += 1


def _complete(document: Mapping[str, Any], expect: int | None) -> bool:
    """Whether the rollout is complete (once every processor answered): ``expect``
    startups seen, or without it a verdict other than insufficient."""
    if expect is not None:
        startups = document.get("startups")
        return isinstance(startups, int) and startups >= expect
    return document.get("verdict") != "insufficient"


def _missing_reasons(missing: Sequence[ProcessorState]) -> list[str]:
    return [
        f"{p.url} never answered ({p.error or 'not asked'}): the startups it holds are missing"
        for p in missing
    ]


def _final(
    merged: dict[str, Any], missing: Sequence[ProcessorState], *, subject: Subject
) -> dict[str, Any]:
    """The document the gate reports: without its sketches, and never ``pass`` while a
    processor never answered (it may hold startups of this rollout: a crash among them
    would not be seen); a halt stays a halt, the breach was seen."""
    document = {key: value for key, value in merged.items() if key != "sketches"}
    document[subject.field] = document.get(subject.field) or subject.key
    if missing:
        if document.get("verdict") == "pass":
            document["verdict"] = "insufficient"
        document["reasons"] = [*(document.get("reasons") or []), *_missing_reasons(missing)]
    return document


def _summary(document: Mapping[str, Any], processors: Sequence[ProcessorState]) -> str:
    seen = document.get("startups", 0)
    expect = document.get("expect")
    counted = f"{seen} of {expect}" if expect else f"{seen}"
    text = f"{counted} startups seen, verdict {document.get('verdict')}"
    down = [f"{p.url}: {p.error}" for p in processors if p.error is not None]
    if down:
        text += "; failing: " + "; ".join(down)
    return text


def _stderr(line: str) -> None:
    print(f"otelbridge gate: {line}", file=sys.stderr, flush=True)


def run_gate(
    processors: Sequence[str],
    subject: Subject | str,
    *,
    expect: int | None = None,
    config: Config | None = None,
    token: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[str], None] | None = _stderr,
) -> Outcome:
    """Polls ``processors`` (base URLs, :func:`processor_base`; duplicates are asked once)
    for ``subject`` (a :class:`Subject`, or a rollout's trace ID: 32 lowercase hex
    digits) and returns the merged verdict,
    by the rules of the module docstring. Never raises for what the processors answer:
    a processor's failure is in its :class:`ProcessorState` and in the reasons. ``clock``
    and ``sleep`` are seams for tests (a fake clock that ``sleep`` advances); ``progress``
    gets one line each time what the gate sees changes (``None``: silent). The first
    poll is at once, the last one at the deadline; one request takes at most
    ``request_timeout_s`` (1 s at least, however near the deadline)."""
    cfg = config if config is not None else Config()
    if isinstance(subject, str):
        subject = Subject.rollout(subject)
    now = (clock or SystemClock()).now_ns
    started_ns = now()
    deadline_ns = started_ns + int(timeout_s * 1e9)
    # the same replica twice would count its startups twice
    states = [ProcessorState(url) for url in dict.fromkeys(processors)]
    if not states:
        raise ValueError("run_gate needs at least one processor")
    polls = 0
    said = ""
    timed_out = False
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=len(states), thread_name_prefix="otelbridge-gate"
    ) as pool:
        while True:
            remaining_s = max(0.0, (deadline_ns - now()) / 1e9)
            per_request_s = min(request_timeout_s, max(1.0, remaining_s))
            futures = [
                pool.submit(
                    _ask,
                    state,
                    subject,
                    expect=expect,
                    config=cfg,
                    token=token,
                    timeout_s=per_request_s,
                )
                for state in states
            ]
            for future in futures:
                future.result()
            polls += 1
            documents = [s.document for s in states if s.document is not None]
            missing = [s for s in states if s.document is None]
            merged = (
                _merge(documents, cfg, expect)
                if documents
                else _no_answer_document(subject, expect, cfg, states)
            )
            line = _summary(merged, states)
            if progress is not None and line != said:
                progress(line)
            said = line
            if not missing and _complete(merged, expect):
                break
            if missing and all(s.permanent for s in missing):
                break  # those will not answer however long we wait: say so now
            current_ns = now()
            if current_ns >= deadline_ns:
                timed_out = True
                break
            sleep(min(interval_s, (deadline_ns - current_ns) / 1e9))
    document = merged if not documents else _final(merged, missing, subject=subject)
    return Outcome(
        subject=subject,
        expect=expect,
        document=document,
        processors=tuple(states),
        timed_out=timed_out,
        waited_s=(now() - started_ns) / 1e9,
        polls=polls,
    )


# -- output ---------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _slowest_line(entry: Mapping[str, Any]) -> str:
    container = str(entry.get("container_id") or "?")
    label = container[:12]
    where = [str(entry[k]) for k in ("namespace", "pod") if entry.get(k)]
    if where:
        label += f" ({'/'.join(where)})"
    text = f"{label}  {human.duration(entry.get('startup_duration_s'))}"
    raw_phases = entry.get("phases")
    phases: Mapping[str, Any] = raw_phases if isinstance(raw_phases, Mapping) else {}
    dominant = entry.get("dominant_phase")
    if dominant:
        text += f", dominant {dominant}"
        if dominant in phases:
            text += f" {human.duration(phases[dominant])}"
    if phases:
        text += " = " + " + ".join(f"{name} {human.duration(v)}" for name, v in phases.items())
    return text


def render_report(outcome: Outcome) -> str:
    """The readable report, ending with a newline: the verdict and exit code, the counts,
    the budgets as a table (p99 against budget, samples, breaches, verdict), the reasons,
    the slowest startups with their dominant phase, each processor's state, and how the
    wait ended (docs/rollouts.md shows one)."""
    doc = outcome.document
    name = doc.get("name")
    key = outcome.subject.key
    what = f"{name} ({key})" if name and outcome.subject.kind == "rollout" else key
    lines = [
        f"otelbridge gate: {outcome.subject.kind} {what}: {outcome.verdict.upper()} "
        f"(exit {outcome.exit_code})"
    ]
    startups = doc.get("startups", 0)
    counted = (
        f"{startups} of {outcome.expect} expected startups"
        if outcome.expect is not None
        else f"{startups} startups"
    )
    coverage = doc.get("coverage")
    cover = f"{coverage * 100:.1f}%" if isinstance(coverage, int | float) else "-"
    lines.append(
        f"  {counted}, {doc.get('failed', 0)} failed, {doc.get('partial', 0)} partial, "
        f"coverage {cover}"
    )
    budgets = doc.get("budgets") if isinstance(doc.get("budgets"), Mapping) else {}
    if budgets:
        width = max(len("budget"), *(len(str(n)) for n in budgets))
        lines.append(
            f"  {'budget':<{width}}  {'p99':>9}  {'budget':>7}  {'samples':>7}  "
            f"{'breaches':>8}  verdict"
        )
        for budget_name, b in budgets.items():
            if not isinstance(b, Mapping):
                continue
            lines.append(
                f"  {budget_name:<{width}}  {human.duration(b.get('p99_s')):>9}  "
                f"{human.budget(b.get('budget_s')):>7}  {b.get('samples', 0):>7}  "
                f"{b.get('breaches', 0):>8}  {b.get('verdict', '-')}"
            )
    reasons = doc.get("reasons") or []
    if reasons:
        lines.append("  reasons:")
        lines += [f"    - {reason}" for reason in reasons]
    slowest = [s for s in doc.get("slowest") or [] if isinstance(s, Mapping)]
    if slowest:
        lines.append("  slowest startups:")
        lines += [f"    {_slowest_line(entry)}" for entry in slowest]
    states = []
    for p in outcome.processors:
        if p.error is None:
            states.append(f"{p.url} {(p.document or {}).get('startups', 0)} startups")
        elif p.document is not None:
            states.append(
                f"{p.url} {p.document.get('startups', 0)} startups at its last answer, "
                f"now failing: {p.error}"
            )
        else:
            states.append(f"{p.url} never answered: {p.error}")
    lines.append("  processors: " + "; ".join(states))
    how = (
        f"timed out after {_duration(outcome.waited_s)}"
        if outcome.timed_out
        else f"done after {_duration(outcome.waited_s)}"
    )
    lines.append(f"  {how} ({outcome.polls} poll{'s' if outcome.polls != 1 else ''})")
    return "\n".join(lines) + "\n"


def render_json(outcome: Outcome) -> dict[str, Any]:
    """``--json``: the merged document (without sketches) and a ``gate`` object:
    ``{"exit_code", "timed_out", "waited_s", "polls", "processors": [{"url", "ok",
    "startups", "error"}]}``."""
    return {
        **outcome.document,
        "gate": {
            "exit_code": outcome.exit_code,
            "timed_out": outcome.timed_out,
            "waited_s": round(outcome.waited_s, 3),
            "polls": outcome.polls,
            "processors": [p.as_json() for p in outcome.processors],
        },
    }


# -- the command ----------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds this command's flags to ``parser`` (the command line's subcommand)."""
    parser.description = (
        "Waits for a rollout's startups at the otelbridge processors and exits 0 pass, "
        "1 halt, 2 insufficient (too few startups seen by the timeout, or no processor "
        "answered). docs/rollouts.md"
    )
    parser.add_argument(
        "--processor",
        "-p",
        action="append",
        required=True,
        metavar="URL",
        help="a processor's API, http(s)://HOST:PORT (default port of `otelbridge processor`: "
        "9465); repeat it, or list them comma-separated, for every replica: their documents "
        "are merged (sketches)",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trace-id", metavar="ID", help="the rollout's trace ID (32 hex digits)")
    which.add_argument(
        "--traceparent", metavar="TP", help="the rollout's W3C traceparent (00-<trace id>-...)"
    )
    which.add_argument(
        "--carrier",
        metavar="FILE",
        help="the carrier file `otelbridge rollout start --carrier FILE` wrote "
        "(or its saved TRACEPARENT=... output)",
    )
    which.add_argument(
        "--namespace",
        metavar="NS",
        help="judge a namespace over every rollout the processors hold "
        "(GET /v1/namespaces/NS?sketches=1 of each, merged) instead of one rollout",
    )
    parser.add_argument(
        "--expect",
        type=expect_arg,
        metavar="N",
        help="startups the rollout makes: wait until N are seen; fewer is insufficient, and "
        "coverage is judged against N",
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg,
        default=DEFAULT_TIMEOUT_S,
        metavar="DUR",
        help="give up waiting after this long (90s, 5m, 1h, or seconds; default 5m; 0: ask once)",
    )
    parser.add_argument(
        "--interval",
        type=duration_arg,
        default=DEFAULT_INTERVAL_S,
        metavar="DUR",
        help="time between polls (default 5s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the merged verdict document (without sketches) and the gate's state",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the processors' bearer token (`otelbridge processor --token-file`), read once",
    )
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="TOML config: [gate] rules and [sla] budgets used to judge the merged rollout "
        "(use the processors' file)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)


def main(args: argparse.Namespace) -> int:
    """Runs the command; returns its exit code (0 pass, 1 halt, 2 insufficient). Usage
    problems raise :class:`ConfigError` (the command line prints them, exit 2)."""
    config = load_config(args.config).checked()
    # each --processor may list several, comma-separated (one template arg for all replicas)
    bases = [
        processor_base(one) for value in args.processor for one in value.split(",") if one.strip()
    ]
    subject = subject_of(args)
    token = read_token(args.token_file)
    if args.interval <= 0:
        raise ConfigError(["--interval must be more than 0"])
    outcome = run_gate(
        bases,
        subject,
        expect=args.expect,
        config=config,
        token=token,
        timeout_s=args.timeout,
        interval_s=args.interval,
    )
    if args.json:
        print(json.dumps(render_json(outcome), indent=1))
    else:
        sys.stdout.write(render_report(outcome))
    sys.stdout.flush()
    return outcome.exit_code
