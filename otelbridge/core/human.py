"""Numbers and addresses for people and for the commands that talk to our own servers:
one style of duration everywhere (the report, the gate), and what counts as loopback."""

from __future__ import annotations

import ipaddress


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def duration(value: object) -> str:
    """A duration in seconds with three significant digits in a fitting unit: ``0.412
    ms``, ``44.0 ms``, ``161 ms``, ``1.24 s``; ``-`` for anything not a number."""
    seconds = _number(value)
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0 ms"
    if seconds < 1.0:
        ms = seconds * 1000
        if ms < 1:
            return f"{ms:.3f} ms"
        return f"{ms:.3g} ms" if ms >= 100 else f"{ms:#.3g} ms"
    return f"{seconds:#.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def budget(value: object) -> str:
    """A budget as configured: ``4 s``, ``0.5 s``, ``250 ms``; ``-`` for no number."""
    seconds = _number(value)
    if seconds is None:
        return "-"
    return f"{seconds * 1000:g} ms" if seconds < 1.0 else f"{seconds:g} s"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP: asked directly, whatever the proxy variables say."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
