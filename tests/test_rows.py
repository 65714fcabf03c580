"""StateEncoder (seedworker.store.rows) writes exactly dump_state's bytes for every state it is given: over states
that evolve as a worker's do, arrays that change shape or dtype (or become something else) under one path,
blueprints it has forgotten, states it encoded that were never stored, and random sequences of random states."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seedworker.contract import events as ev
from seedworker.core.config import Settings
from seedworker.core.selector import SeedSelector
from seedworker.store.rows import StateEncoder, dump_state, load_state
from tests.support import outcome, request

CONTEXT = {"current_loss": 1.0, "current_accuracy": 0.5, "learning_rate": 1e-3, "current_epoch": 3.0}


def same(enc: StateEncoder, bp: str, state: dict) -> bytes:
    out = enc.dump(bp, state)
    assert out == dump_state(state), bp
    return out


@pytest.mark.parametrize("strategy", ["glr-ucb", "linucb", "ucb", "thompson"])
def test_the_bytes_of_dump_state_as_a_worker_decides_and_learns(strategy):
    sel = SeedSelector(Settings(default_strategy=strategy))
    enc = StateEncoder()
    blueprints = ["bp-a", "bp-b", "bp-c"]
    for i in range(120):
        bp = blueprints[i % 3]
        k = 3 + (i // 30)  # new seeds now and then: the per-arm arrays grow under the same paths
        s = sel.decide(ev.decode(request(i, bp, k, context={**CONTEXT, "current_epoch": float(i)}), ev.GRAFT_REQUESTED))
        sel.apply_selection(s)
        same(enc, bp, sel.blueprints[bp].to_dict())  # a decision: most arrays as last written
        if i % 4:
            sel.learn(s, ev.decode(outcome(s, 0.01 * (i % 7)), ev.ADAPTATION_OUTCOME))
            same(enc, bp, sel.blueprints[bp].to_dict())  # an outcome: most arrays changed
        if i == 60:
            sel.switch_strategy("thompson" if strategy != "thompson" else "ucb", bp)
    for bp in blueprints:
        assert load_state(same(enc, bp, sel.blueprints[bp].to_dict())).keys() == sel.blueprints[bp].to_dict().keys()


def test_an_array_that_changes_shape_dtype_or_kind_under_one_path():
    enc = StateEncoder()
    zeros = bytes(32)  # every one of these arrays has these raw bytes: only dtype and shape tell them apart
    for a in [
        np.zeros(4),
        np.zeros((2, 2)),
        np.zeros((4, 1)),
        np.zeros(4, dtype=np.int64),
        np.zeros(4, dtype=">f8"),
        np.zeros(8, dtype=np.float32),
        np.zeros(32, dtype=np.uint8),
        np.zeros(4),
    ]:
        assert a.tobytes() == zeros
        same(enc, "bp", {"x": a, "y": [a, {"z": a}]})
    for x in [
        np.arange(6.0).reshape(2, 3).T,  # not contiguous
        np.arange(6.0)[::2],
        np.array(1.5),  # 0-d
        np.empty(0),
        np.empty((0, 3)),
        np.array([np.nan, -0.0, np.inf]),
        np.array([1, 2], dtype=np.int32),
        [1.0, float("nan"), float("-inf")],  # no longer an array
        {"nested": np.ones(2)},
        np.float64(2.5),  # numpy scalars, as dump_state writes them
        np.float64("nan"),
        np.int64(7),
        np.bool_(True),
        None,
        (np.ones(2), 3, "s"),
        np.ones(2),
    ]:
        same(enc, "bp", {"x": x, "seed_ids": ["a", "b"], "flag": True, "n": 3, "f": 0.1})


def test_a_forgotten_blueprint_and_a_state_that_was_never_stored():
    enc = StateEncoder()
    enc.BLUEPRINTS = 2
    states = {f"bp-{i}": {"a": np.full(3, float(i)), "b": np.arange(i + 1)} for i in range(5)}
    for _ in range(3):
        for bp, state in states.items():
            same(enc, bp, state)
        assert len(enc._arrays) <= 2
    # A state encoded for a batch that failed (not stored); the store's earlier state follows, read back as a new
    # array object: the output is that state's dump_state, whatever the encoder remembers.
    before = {"a": np.full(3, 1.0), "b": np.arange(2)}
    same(enc, "bp-1", {"a": np.full(3, 99.0), "b": np.arange(7)})
    same(enc, "bp-1", load_state(dump_state(before)))
    same(enc, "bp-1", before)
    # Another blueprint's state under this one's name (the cache is keyed by content, not by who wrote it).
    same(enc, "bp-1", states["bp-4"])
    # A copy (the tests deepcopy a bus holding a worker) goes on writing the same bytes.
    same(copy.deepcopy(enc), "bp-4", states["bp-4"])


# A few values per element, and small shapes, so that consecutive states often repeat an array (the cached path).
_elements = st.sampled_from([0.0, -0.0, 1.0, 0.5, np.nan, np.inf, -1e30])
_dtypes = st.sampled_from([np.dtype("<f8"), np.dtype(">f8"), np.dtype("<f4"), np.dtype("<i8")])
_arrays = _dtypes.flatmap(
    lambda dt: hnp.arrays(
        dt,
        hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
        elements=_elements if dt.kind == "f" else st.integers(-2, 2),
    )
)
_leaves = st.one_of(
    _arrays,
    _arrays.map(lambda a: a.T),  # not contiguous (for 2-d)
    st.sampled_from([0, 1, 0.5, float("nan"), float("inf"), "s", None, True, np.float64(1.5), np.int64(3)]),
)
_states = st.dictionaries(
    st.sampled_from(["arms", "gram", "w", "seed_ids"]),
    st.recursive(
        _leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2)
        ),
        max_leaves=6,
    ),
    max_size=4,
)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["bp-a", "bp-b", "bp-c"]), _states), min_size=1, max_size=12))
def test_random_sequences_of_random_states(writes):
    enc = StateEncoder()
    enc.BLUEPRINTS = 2  # so that the sequences forget blueprints too
    for bp, state in writes:
        same(enc, bp, state)
