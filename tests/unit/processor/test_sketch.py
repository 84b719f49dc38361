"""Durations: three DDSketches at 1% with exact breach counts; nearest-rank p99 within the
sketch's accuracy, exact merges, removal, and a JSON form that refuses garbage."""

from __future__ import annotations

import base64
import math

import pytest
from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.proto import DDSketchProto
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge import sla
from otelbridge.processor.sketch import RELATIVE_ACCURACY, Durations

SD, SL, TR = sla.DURATIONS
seconds = st.floats(0.0, 3600.0, allow_nan=False)
positive = st.floats(1e-6, 3600.0, allow_nan=False)


def durations(values: list[float], duration: str = TR, budget: float = 1.0) -> Durations:
    out = Durations()
    for v in values:
        out.add(duration, v, budget)
    return out


def close(got: float | None, want: float) -> bool:
    """Within the sketch's relative accuracy (durations have nanosecond resolution)."""
    return got is not None and abs(got - want) <= RELATIVE_ACCURACY * want + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(seconds, min_size=1, max_size=400))
def test_p99_is_within_one_percent_of_the_exact_nearest_rank_p99(values: list[float]) -> None:
    d = durations(values)
    assert close(d.p99(TR), sla.p99(values))
    assert close(d.quantile(TR, 0.5), sla.p50(values))
    assert d.samples(TR) == len(values)
    assert d.breaches(TR) == sum(1 for v in values if v > 1.0)


def test_p99_takes_the_nearest_rank_not_the_interpolated_rank_of_get_quantile_value() -> None:
    # 19 fast, 1 slow: the nearest-rank p99 of 20 samples is the slowest one
    values = [0.1] * 19 + [1.4]
    assert sla.p99(values) == 1.4
    assert durations(values).p99(TR) == pytest.approx(1.4, rel=RELATIVE_ACCURACY)


def test_zero_durations_have_the_zero_bin_and_no_samples_give_none() -> None:
    d = durations([0.0, 0.0, 0.5])
    assert d.quantile(TR, 0.5) == 0.0
    assert d.p99(TR) == pytest.approx(0.5, rel=RELATIVE_ACCURACY)
    assert Durations().p99(SD) is None and Durations().samples(SD) == 0


def test_add_refuses_what_is_not_a_duration() -> None:
    d = Durations()
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number >= 0"):
            d.add(SD, bad, 4.0)
    with pytest.raises(KeyError):
        d.add("coverage", 1.0, 1.0)
    assert d.samples(SD) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sla.DURATIONS), seconds), max_size=200), st.data())
def test_merging_any_split_gives_the_durations_of_the_whole(
    samples: list[tuple[str, float]], data: st.DataObject
) -> None:
    parts = data.draw(st.lists(st.integers(0, 3), min_size=len(samples), max_size=len(samples)))
    whole, shards = Durations(), [Durations() for _ in range(4)]
    for (duration, value), part in zip(samples, parts, strict=True):
        whole.add(duration, value, 1.0)
        shards[part].add(duration, value, 1.0)
    merged = Durations()
    for shard in shards:
        merged.merge(Durations.from_json(shard.to_json(), breaches=_breaches(shard)))
    assert merged.to_json() == whole.to_json()
    for duration in sla.DURATIONS:
        assert merged.p99(duration) == whole.p99(duration)
        assert merged.samples(duration) == whole.samples(duration)
        assert merged.breaches(duration) == whole.breaches(duration)


@settings(max_examples=100, deadline=None)
@given(st.lists(seconds, max_size=100), st.lists(seconds, max_size=100))
def test_removing_what_was_added_leaves_the_rest_exactly(
    keep: list[float], drop: list[float]
) -> None:
    d = durations(keep + drop)
    for v in drop:
        d.remove(TR, v, 1.0)
    assert d.to_json() == durations(keep).to_json()
    assert d.p99(TR) == durations(keep).p99(TR)
    assert (d.samples(TR), d.breaches(TR)) == (len(keep), sum(1 for v in keep if v > 1.0))


def test_to_json_round_trips_and_is_the_librarys_ddsketch_message() -> None:
    d = durations([0.01, 0.2, 0.2, 3.0], SL, budget=2.0)
    encoded = d.to_json()
    assert set(encoded) == set(sla.DURATIONS)
    back = Durations.from_json(encoded, breaches={SL: 1})
    assert (back.p99(SL), back.samples(SL), back.breaches(SL)) == (d.p99(SL), 4, 1)
    # any DDSketch implementation reads it: the library's own decoder does
    message = DDSketchMessage.FromString(base64.b64decode(encoded[SL]))
    theirs = DDSketchProto.from_proto(message)
    assert theirs.count == 4
    assert theirs.get_quantile_value(1.0) == pytest.approx(3.0, rel=RELATIVE_ACCURACY)


def test_from_json_reads_a_sketch_the_library_wrote() -> None:
    theirs = DDSketch(RELATIVE_ACCURACY)
    for v in (0.1, 0.2, 0.3, 1.5):
        theirs.add(v)
    text = base64.b64encode(DDSketchProto.to_proto(theirs).SerializeToString()).decode()
    got = Durations.from_json({TR: text})
    assert got.samples(TR) == 4 and close(got.p99(TR), 1.5)
    assert got.samples(SD) == 0


def _message(**fields: object) -> str:
    message = DDSketchMessage()
    message.mapping.gamma = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
    for path, value in fields.items():
        target: object = message
        *parents, leaf = path.split("__")
        for name in parents:
            target = getattr(target, name)
        if isinstance(value, list):
            getattr(target, leaf).extend(value)
        else:
            setattr(target, leaf, value)
    return base64.b64encode(message.SerializeToString()).decode()


def _other_accuracy() -> str:
    sketch = DDSketch(0.02)
    sketch.add(1.0)
    return base64.b64encode(DDSketchProto.to_proto(sketch).SerializeToString()).decode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "expected an object"),
        ({"coverage": ""}, "unknown duration"),
        ({SD: 42}, "expected a base64 string"),
        ({SD: "not base64!"}, "not base64 of a DDSketch"),
        ({SD: base64.b64encode(b"\xff\xff\xff garbage").decode()}, "not base64 of a DDSketch"),
        ({SD: _other_accuracy()}, "another mapping"),
        ({SD: _message(mapping__interpolation=1)}, "another mapping"),
        ({SD: _message(mapping__indexOffset=3.0)}, "another mapping"),
        ({SD: _message(negativeValues__contiguousBinCounts=[1.0])}, "negative durations"),
        ({SD: _message(positiveValues__contiguousBinCounts=[-1.0])}, "not a count"),
        ({SD: _message(positiveValues__contiguousBinCounts=[0.5])}, "not a count"),
        ({SD: _message(positiveValues__contiguousBinCounts=[math.nan])}, "not a count"),
        ({SD: _message(zeroCount=math.inf)}, "not a count"),
        (
            {SD: _message(positiveValues__contiguousBinCounts=[1.0] * 10_000)},
            "more bins than durations span",
        ),
        (
            {
                SD: _message(
                    positiveValues__contiguousBinIndexOffset=10**6,
                    positiveValues__contiguousBinCounts=[1.0],
                )
            },
            "out of range",
        ),
        ({SD: "A" * (600 * 1024)}, "more than a sketch"),
    ],
)
def test_from_json_refuses_garbage_with_value_error(data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Durations.from_json(data)  # type: ignore[arg-type]


def test_from_json_refuses_a_sketch_too_wide_to_be_durations() -> None:
    message = DDSketchMessage()
    message.mapping.gamma = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
    message.positiveValues.binCounts[-20_000] = 1.0
    message.positiveValues.binCounts[20_000] = 1.0
    text = base64.b64encode(message.SerializeToString()).decode()
    with pytest.raises(ValueError, match="bins wide"):
        Durations.from_json({SD: text})


@pytest.mark.parametrize("count", [-1, 3, True, 1.0])
def test_from_json_refuses_breaches_that_do_not_fit_the_samples(count: object) -> None:
    encoded = durations([0.5, 2.0]).to_json()
    with pytest.raises(ValueError, match="breaches must be an integer"):
        Durations.from_json(encoded, breaches={TR: count})  # type: ignore[dict-item]


def _breaches(d: Durations) -> dict[str, int]:
    return {name: d.breaches(name) for name in sla.DURATIONS}
