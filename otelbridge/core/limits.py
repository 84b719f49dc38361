"""What a tenant may write on a container, once: the enrich stage admits by these, the
readiness probe parses by them, and ``otelbridge validate`` judges a container before a
rollout exactly as the bridge will admit it."""

from __future__ import annotations

from typing import Final

#: Longest label key the bridge keeps as a span attribute.
MAX_LABEL_KEY: Final = 128
#: A readiness target longer than this is not one (the bridge drops it at admission).
MAX_READINESS_TARGET: Final = 512


def label_key_ok(key: str) -> bool:
    """Whether a label key is kept as an attribute: 1..MAX_LABEL_KEY printable ASCII."""
    return 0 < len(key) <= MAX_LABEL_KEY and key.isascii() and key.isprintable()
