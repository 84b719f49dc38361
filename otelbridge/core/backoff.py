"""The one backoff of otelbridge: how long to wait before attempt ``n`` + 1.

Every loop that retries (the delivery engine's exporters, the containerd subscription, the
Kubernetes watch) asks a :class:`Backoff` for its delays and sleeps them itself, on its
own stop event, so each loop keeps its own notion of when to give up. The delay doubles
from ``initial_s`` up to ``max_s``; ``jitter`` is the share of each delay that is random
(the bridges of a whole fleet lose the same collector or API server together and must not
come back in lockstep). A delay the other side asked for (gRPC ``RetryInfo``, HTTP
``Retry-After``) is honoured up to ``max_asked_s``.

Pure: no clock, no sleeping; the random source is injected so tests get exact delays.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter. Immutable; share it freely."""

    initial_s: float = 0.5
    """Delay before the first retry."""

    max_s: float = 30.0
    """Longest delay the backoff itself gives (a delay asked for may be longer)."""

    jitter: float = 0.5
    """Share of each delay drawn at random: the delay is in ``[d * (1 - jitter), d]``."""

    max_asked_s: float = 300.0
    """Longest delay honoured when the other side asks for one: a receiver that asks a
    node agent to wait a day is misconfigured, and the node must not go silent for it."""

    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    """Uniform in [0, 1); tests pass a constant."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these numbers (empty when they are usable)."""
        out = []
        for name in ("initial_s", "max_s", "max_asked_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                out.append(f"{name}: {value} is not a positive duration")
        if self.initial_s > self.max_s:
            out.append(f"initial_s: {self.initial_s} exceeds max_s {self.max_s}")
        if not 0 <= self.jitter <= 1:
            out.append(f"jitter: {self.jitter} is not between 0 and 1")
        return out

    def delay(self, attempt: int, asked_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

        ``asked_s``: the delay the other side asked for, if any; the wait is at least
        that (capped at ``max_asked_s``)."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(max(attempt, 1) - 1, 62))
        wait = base * (1.0 - self.jitter * self.rng())
        if asked_s is not None and asked_s > 0:
            wait = max(wait, min(asked_s, self.max_asked_s))
        return wait


__all__ = ["Backoff"]
