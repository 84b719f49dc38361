"""The three SLA durations of a set of startups, as mergeable quantile sketches.

:class:`Durations` keeps, for each duration of :data:`otelbridge.sla.DURATIONS`, a
DDSketch at 1% relative accuracy (PyPI ``ddsketch``, Datadog's reference implementation)
and the exact number of samples over their budget. Why DDSketch: its guarantee is on the
*value* (a p99 of 1.43 s is reported between 1.4157 and 1.4443 s whatever the
distribution), which is what a budget comparison needs; two sketches of the same accuracy
merge exactly (bin counts add), so the sketch of a rollout spread over replicas is the
sketch of the whole; and it is a few hundred bins for durations from 1 ms to 1 h.

Contracts:

* ``p99`` is the **nearest-rank** p99 (:func:`otelbridge.sla.p99`: the value of rank
  ``ceil(0.99 n)``), read from the sketch: within 1% of the exact nearest-rank p99 of the
  samples. (``DDSketch.get_quantile_value(0.99)`` reads rank ``0.99 (n - 1)``, one rank
  lower for n <= 100: 19th of 20 instead of the 20th; the bridge's ``/v1/sla`` and the
  gate must agree, so the rank is chosen here.)
* ``merge`` is exact: merging the Durations of any split of the samples gives the
  Durations of the whole (same bins, same counts, same breaches).
* ``to_json`` / ``from_json``: per duration, the base64 of a ``DDSketch`` protobuf
  message (the library's ``ddsketch.pb`` schema, readable by any DDSketch
  implementation). ``from_json`` refuses anything that is not such a sketch of *this*
  accuracy, with ``ValueError``: a peer's document is input, not trusted.

The sketch is composed from the library's own parts (``LogarithmicMapping``,
``DenseStore``), as ``DDSketch(0.01)`` is, and read through ``BaseDDSketch``; holding the
store lets :meth:`Durations.remove` take one value out again (a namespace forgets the
startups of an evicted rollout), which ``DDSketch`` itself does not offer. Values are
seconds, >= 0 (the aggregator clamps a span that ends before it starts to 0), of
nanosecond resolution: under 1 ns is 0.

Not thread-safe: the aggregator guards its Durations with its lock.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, cast

from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.pb import proto as _ddproto
from ddsketch.store import DenseStore
from google.protobuf.message import DecodeError as _ProtobufDecodeError

from otelbridge.sla import DURATIONS

RELATIVE_ACCURACY: Final = 0.01
_MAPPING: Final = LogarithmicMapping(RELATIVE_ACCURACY)
# the generated protobuf module the library picked for this protobuf version (untyped)
_PB: Final[Any] = cast(Any, _ddproto).pb
_INTERPOLATION_NONE: Final[int] = _PB.IndexMapping.NONE  # LogarithmicMapping's

# Bounds on a sketch read from a peer: keys of finite doubles at 1% lie within +-36,000;
# a real duration sketch spans a few hundred bins (1 ns to 1 year is ~2,000).
_MAX_KEY: Final = 50_000
_MAX_SPAN: Final = 8_192
_MAX_ENCODED: Final = 512 * 1024
_MAX_COUNT: Final = float(2**53)  # counts stay exact integers in a double
_RESOLUTION_S: Final = 1e-9
_CHUNK: Final = 16


class _Sketch:
    """One duration: its DDSketch store, its zero count, its breaches."""

    __slots__ = ("breaches", "store", "zeros")

    def __init__(self) -> None:
        # bins grow in chunks: the library's 128 would cost 1 KiB per sketch, 3 per rollout
        # and namespace, for the handful of bins a small rollout fills
        self.store = DenseStore(chunk_size=_CHUNK)
        self.zeros = 0.0  # values too small to have a bin (0 s), as BaseDDSketch keeps them
        self.breaches = 0

    @property
    def count(self) -> int:
        return int(self.store.count + self.zeros)

    def sketch(self) -> BaseDDSketch:
        """The library's sketch over this store (O(1): it shares the store)."""
        return BaseDDSketch(_MAPPING, self.store, DenseStore(), self.zeros)

    def bins(self) -> Iterator[tuple[int, float]]:
        """(key, count) of every non-empty bin."""
        store = self.store
        if store.count == 0:
            return
        bins: list[float] = store.bins
        offset: int = store.offset
        for key in range(store.min_key, store.max_key + 1):
            count = bins[key - offset]
            if count:
                yield key, count


def key_of(seconds: float) -> int | None:
    """The sketch bin of a duration, None for the zero bin. Exposed so a caller adding
    the same value to several Durations maps it once (:meth:`Durations.add_key`).

    Durations have nanosecond resolution (span times are integer ns): anything under
    1 ns is 0. This also bounds a sketch's width: 1 ns to 2**63 ns spans ~2,200 bins."""
    if seconds >= _RESOLUTION_S:
        return _MAPPING.key(seconds)
    return None


class Durations:
    """The three DDSketches (relative accuracy 0.01) and exact breach counts of a set of
    startups; mergeable. See the module docstring for the contracts."""

    __slots__ = ("_s",)

    def __init__(self) -> None:
        self._s: dict[str, _Sketch] = {name: _Sketch() for name in DURATIONS}

    # -- building ---------------------------------------------------------------------------
    def add(self, duration: str, seconds: float, budget_s: float) -> None:
        """Adds one sample of ``duration`` (a name of ``sla.DURATIONS``; KeyError else):
        ``seconds`` >= 0 and finite (ValueError else); over ``budget_s`` counts a breach."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"{duration}: a duration is a finite number >= 0, not {seconds!r}")
        self.add_key(duration, key_of(seconds), seconds > budget_s)

    def add_key(self, duration: str, key: int | None, breach: bool) -> None:
        """:meth:`add` of a value already mapped by :func:`key_of` (the hot path)."""
        s = self._s[duration]
        store = s.store
        if key is None:
            s.zeros += 1.0
        elif store.min_key <= key <= store.max_key:
            # DenseStore.add without its range checks (bins, offset and count are its
            # documented attributes): the hot path of every startup
            store.bins[key - store.offset] += 1.0
            store.count += 1.0
        else:
            store.add(key)
        if breach:
            s.breaches += 1

    def remove(self, duration: str, seconds: float, budget_s: float) -> None:
        """Takes out one sample that :meth:`add` put in with the same arguments (or was
        merged in). Removing a value never added corrupts the counts: callers remove only
        what they added."""
        self.remove_key(duration, key_of(seconds), seconds > budget_s)

    def remove_key(self, duration: str, key: int | None, breach: bool) -> None:
        s = self._s[duration]
        if key is None:
            s.zeros -= 1.0
        else:
            s.store.add(key, -1.0)  # a bin count is a float sum: -1 undoes +1 exactly
        if breach:
            s.breaches -= 1

    def merge(self, other: Durations) -> None:
        """Adds every sample and breach of ``other`` (left unchanged) to this one: what
        ``DDSketch.merge`` does (both have this accuracy, so the bins line up)."""
        for name, theirs in other._s.items():
            mine = self._s[name]
            if theirs.store.count:
                mine.store.merge(theirs.store)
            mine.zeros += theirs.zeros
            mine.breaches += theirs.breaches

    def copy(self) -> Durations:
        out = Durations()
        out.merge(self)
        return out

    # -- reading ----------------------------------------------------------------------------
    def samples(self, duration: str) -> int:
        return self._s[duration].count

    def breaches(self, duration: str) -> int:
        """Samples over the budget they were added with (exact, not from the sketch)."""
        return self._s[duration].breaches

    def p99(self, duration: str) -> float | None:
        """The nearest-rank p99 (``sla.p99``'s rank), within 1%; None without samples."""
        return self.quantile(duration, 0.99)

    def quantile(self, duration: str, q: float) -> float | None:
        """The nearest-rank ``q``-quantile (0 < q <= 1): the value of rank ``ceil(q n)``
        in ascending order, within the sketch's relative accuracy."""
        s = self._s[duration]
        n = s.count
        if n == 0:
            return None
        rank = max(0, math.ceil(q * n) - 1)  # 0-based, as otelbridge.sla.p99
        # get_quantile_value reads rank q' (n - 1) with "first bin whose cumulative count
        # exceeds it": asking for rank + 0.5 selects exactly the bin of rank `rank`
        # (counts are integers), immune to the rounding of q' (n - 1)
        q_lib = 1.0 if n == 1 else min(1.0, (rank + 0.5) / (n - 1))
        value = s.sketch().get_quantile_value(q_lib)
        return None if value is None else float(value)

    # -- serialization ------------------------------------------------------------------------
    def to_json(self) -> dict[str, str]:
        """duration -> base64 (standard alphabet, padded) of its ``DDSketch`` protobuf."""
        return {name: _encode(s) for name, s in self._s.items()}

    @classmethod
    def from_json(
        cls, data: Mapping[str, str], *, breaches: Mapping[str, int] | None = None
    ) -> Durations:
        """The Durations that :meth:`to_json` wrote. ``breaches`` (duration -> count, as a
        document's budgets report them) restores the breach counts, which the sketch does
        not carry (0 without). ValueError on anything else: an unknown duration, a value
        that is not base64 of a DDSketch of this accuracy, negative or fractional counts,
        a sketch too wide to be durations, a breach count not within 0..samples."""
        if not isinstance(data, Mapping):
            raise ValueError(f"sketches: expected an object, got {type(data).__name__}")
        out = cls()
        for name, text in data.items():
            if name not in out._s:
                raise ValueError(f"sketches: unknown duration {name!r}")
            if not isinstance(text, str):
                raise ValueError(f"sketches.{name}: expected a base64 string")
            out._s[name] = _decode(name, text)
        for name, count in (breaches or {}).items():
            if name not in out._s:
                raise ValueError(f"breaches: unknown duration {name!r}")
            s = out._s[name]
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= s.count:
                raise ValueError(
                    f"{name}: breaches must be an integer between 0 and its {s.count} samples,"
                    f" not {count!r}"
                )
            s.breaches = count
        return out

    def __repr__(self) -> str:
        parts = (f"{n}: {s.count} samples, p99 {self.p99(n)}" for n, s in self._s.items())
        return f"Durations({'; '.join(parts)})"


def _encode(s: _Sketch) -> str:
    keys_counts = list(s.bins())
    if keys_counts:
        first = keys_counts[0][0]
        counts = [0.0] * (keys_counts[-1][0] - first + 1)
        for key, count in keys_counts:
            counts[key - first] = count
        store = _PB.Store(contiguousBinCounts=counts, contiguousBinIndexOffset=first)
    else:
        store = _PB.Store()
    message = _PB.DDSketch(
        mapping=_PB.IndexMapping(
            gamma=_MAPPING.gamma, indexOffset=0.0, interpolation=_INTERPOLATION_NONE
        ),
        positiveValues=store,
        negativeValues=_PB.Store(),
        zeroCount=s.zeros,
    )
    raw = cast(Callable[[], bytes], message.SerializeToString)()
    return base64.b64encode(raw).decode("ascii")


def _decode(name: str, text: str) -> _Sketch:
    where = f"sketches.{name}"
    if len(text) > _MAX_ENCODED:
        raise ValueError(f"{where}: {len(text)} characters, more than a sketch of durations")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        message = _PB.DDSketch.FromString(raw)
    except (UnicodeEncodeError, binascii.Error, _ProtobufDecodeError) as exc:
        raise ValueError(f"{where}: not base64 of a DDSketch protobuf ({exc})") from exc
    mapping = message.mapping
    if (
        not math.isclose(mapping.gamma, _MAPPING.gamma, rel_tol=1e-12)
        or mapping.indexOffset != 0.0
        or mapping.interpolation != _INTERPOLATION_NONE
    ):
        raise ValueError(
            f"{where}: a sketch of another mapping (gamma {mapping.gamma!r}, offset "
            f"{mapping.indexOffset!r}); expected a logarithmic one at {RELATIVE_ACCURACY:.0%}"
        )
    if _bins(where, message.negativeValues):
        raise ValueError(f"{where}: negative durations")
    out = _Sketch()
    out.zeros = _count(where, message.zeroCount)
    bins = _bins(where, message.positiveValues)
    if bins:
        lo, hi = min(bins), max(bins)
        if hi - lo >= _MAX_SPAN:
            raise ValueError(f"{where}: {hi - lo + 1} bins wide, more than durations span")
        for key in sorted(bins):
            out.store.add(key, bins[key])
    if out.store.count + out.zeros > _MAX_COUNT:
        raise ValueError(f"{where}: more samples than can be counted exactly")
    return out


def _bins(where: str, store: Any) -> dict[int, float]:
    """The non-empty bins of a ``Store`` message (its sparse and contiguous parts)."""
    out: dict[int, float] = {}
    first = int(store.contiguousBinIndexOffset)
    counts = store.contiguousBinCounts
    if len(counts) > _MAX_SPAN or len(store.binCounts) > _MAX_SPAN:
        raise ValueError(f"{where}: more bins than durations span")
    pairs = [*((first + i, c) for i, c in enumerate(counts)), *store.binCounts.items()]
    for key, raw in pairs:
        count = _count(where, raw)
        if not count:
            continue
        if not -_MAX_KEY <= key <= _MAX_KEY:
            raise ValueError(f"{where}: bin {key} out of range")
        out[key] = out.get(key, 0.0) + count
    return out


def _count(where: str, value: float) -> float:
    if not (math.isfinite(value) and 0 <= value <= _MAX_COUNT and value == int(value)):
        raise ValueError(f"{where}: {value!r} is not a count of samples")
    return float(value)


__all__ = ["RELATIVE_ACCURACY", "Durations", "key_of"]
