"""The validated seed lists a request takes from ``events._CANDIDATES``: the same request as validating the dict
from scratch (every field, the candidates' fields-sets), and the same error for one that is refused, whatever the
cache holds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import seedworker.contract.events as E
from seedworker.contract.events import EventError, GraftRequested, from_dict

_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 300),
    st.floats(-1.0, 300.0),
    st.just(float("nan")),
    st.text(max_size=3),
    st.sampled_from(["dormant", "active", "", "s" * 257, "0", "1"]),
    st.dictionaries(st.sampled_from(["x", "y"]), st.floats(allow_nan=True), max_size=2),
)
_SEED = st.fixed_dictionaries(
    {},
    optional={
        "seed_id": st.one_of(st.sampled_from(["a", "b", "c"]), _ANY),
        "seed_idx": st.one_of(st.integers(0, 3), _ANY),
        "state": st.one_of(st.sampled_from(["dormant", "active", "failed"]), _ANY),
        "features": st.one_of(st.none(), _ANY),
        "other": _ANY,
    },
)


def _direct(raw: dict):
    """What from_dict gave before the cache: validation of the dict as it came."""
    try:
        return GraftRequested.model_validate(raw)
    except ValidationError as exc:
        return EventError(E._describe(exc))


def _cached(raw: dict):
    try:
        return from_dict(raw, "graft.requested")
    except EventError as exc:
        return exc


def _same(got, want) -> None:
    if isinstance(want, Exception):
        assert isinstance(got, EventError) and str(got) == str(want)
        return
    assert isinstance(got, GraftRequested)
    assert got.model_dump(exclude={"event_id"}) == want.model_dump(exclude={"event_id"})
    assert got.model_fields_set == want.model_fields_set
    assert [type(c) for c in got.seeds] == [type(c) for c in want.seeds]
    assert [c.model_fields_set for c in got.seeds] == [c.model_fields_set for c in want.seeds]
    assert [c.__dict__ for c in got.seeds] == [c.__dict__ for c in want.seeds]
    assert [type(v) for c in got.seeds for v in c.__dict__.values()] == [
        type(v) for c in want.seeds for v in c.__dict__.values()
    ]


@settings(max_examples=400, deadline=None)
@given(seeds=st.lists(st.one_of(_SEED, _ANY), max_size=4), lists=st.lists(st.lists(_SEED, max_size=4), max_size=3))
def test_a_request_from_the_cache_equals_one_validated_from_scratch(seeds, lists):
    # Other lists first (some valid: they fill the cache), then this one twice: once to fill it, once from it.
    for other in lists:
        _cached({"request_id": "r0", "blueprint_id": "bp", "seeds": other})
    raw = {"request_id": "r1", "blueprint_id": "bp", "seeds": seeds, "context": {"f": 1.0}}
    want = _direct(raw)
    _same(_cached(raw), want)
    _same(_cached(raw), want)
    bad = {**raw, "blueprint_id": ""}  # cached seeds beside an invalid field: the same error as without the cache
    _same(_cached(bad), _direct(bad))


def test_the_usual_request_is_served_from_the_cache():
    E._CANDIDATES.clear()
    seeds = [{"seed_id": f"s{i}", "seed_idx": i, "state": "dormant"} for i in range(8)]
    first = from_dict({"request_id": "r1", "blueprint_id": "bp", "seeds": seeds}, "graft.requested")
    again = from_dict({"request_id": "r2", "blueprint_id": "bp", "seeds": [dict(c) for c in seeds]}, "graft.requested")
    assert len(E._CANDIDATES) == 1
    assert all(a is b for a, b in zip(first.seeds, again.seeds))  # the frozen models themselves, not copies
