"""FeatureMap: online standardization of the context signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from seedworker.core.features import DEFAULT_FEATURES, FeatureMap

NAMES = ("loss", "lr", "epoch")


def _fed(rows: np.ndarray, clip: float = 50.0) -> FeatureMap:
    fm = FeatureMap(names=NAMES, clip=clip)
    for row in rows:
        fm.update(dict(zip(NAMES, row.tolist())))
    return fm


def test_standardized_values_match_numpy_mean_and_std():
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(2.0, 0.5, 200), rng.lognormal(-7, 1, 200), rng.integers(0, 100, 200)])
    fm = _fed(data)
    assert_allclose(fm.mean, data.mean(axis=0), rtol=1e-10)
    assert_allclose(np.sqrt(fm.m2 / (fm.count - 1)), data.std(axis=0, ddof=1), rtol=1e-10)
    query = np.array([2.3, 1e-3, 40.0])
    x = fm.transform(dict(zip(NAMES, query.tolist())))
    expected = (query - data.mean(axis=0)) / data.std(axis=0, ddof=1)
    assert_allclose(x[1:], expected, rtol=1e-9)


def test_transform_does_not_change_the_state_and_update_does():
    fm = _fed(np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    before = fm.to_dict()
    fm.transform({"loss": 10.0})
    after = fm.to_dict()
    for key in ("count", "mean", "m2"):
        assert_allclose(after[key], before[key], rtol=0, atol=0)


def test_bias_term_first_and_dim():
    fm = FeatureMap(names=NAMES)
    assert fm.dim == len(NAMES) + 1
    x = fm.transform({"loss": 1.0, "lr": 0.1, "epoch": 3.0})
    assert x.shape == (fm.dim,)
    assert x[0] == 1.0
    assert FeatureMap().dim == len(DEFAULT_FEATURES) + 1


def test_before_enough_data_a_signal_is_centred_but_not_scaled():
    fm = FeatureMap(names=NAMES)
    # Nothing seen: mean 0, std 1, so the raw value passes through (clipped).
    assert_allclose(fm.transform({"loss": 0.5, "lr": -2.0, "epoch": 3.0}), [1.0, 0.5, -2.0, 3.0])
    fm.update({"loss": 4.0, "lr": 1.0, "epoch": 1.0})
    # One sample: centred on it, no variance yet so std is 1.
    assert_allclose(fm.transform({"loss": 5.0, "lr": 1.0, "epoch": 0.0}), [1.0, 1.0, 0.0, -1.0])


def test_constant_signal_does_not_divide_by_zero():
    fm = _fed(np.array([[1.0, 2.0, 7.0]] * 10))
    x = fm.transform({"loss": 1.0, "lr": 2.5, "epoch": 7.0})
    assert np.isfinite(x).all()
    assert_allclose(x, [1.0, 0.0, 0.5, 0.0])


def test_missing_signal_is_zero():
    rng = np.random.default_rng(1)
    fm = _fed(rng.normal(5.0, 2.0, size=(50, 3)))
    x = fm.transform({"loss": 5.0})  # lr and epoch missing
    assert x[2] == 0.0 and x[3] == 0.0
    for bad in (None, math.nan, math.inf, -math.inf):
        assert fm.transform({"loss": 1.0, "lr": bad, "epoch": 2.0})[2] == 0.0
    assert_allclose(fm.transform({}), [1.0, 0.0, 0.0, 0.0])


def test_missing_signal_does_not_move_its_statistics():
    fm = FeatureMap(names=NAMES)
    for v in (1.0, 2.0, 3.0):
        fm.update({"loss": v, "lr": 10.0 * v})
    fm.update({"lr": 40.0})  # loss missing
    fm.update({"loss": math.nan, "lr": 50.0})
    assert fm.count.tolist() == [3.0, 5.0, 0.0]
    assert fm.mean[0] == pytest.approx(2.0)
    assert fm.mean[1] == pytest.approx(30.0)
    assert fm.m2[0] == pytest.approx(np.var([1.0, 2.0, 3.0]) * 3)
    assert fm.m2[1] == pytest.approx(np.var([10.0, 20.0, 30.0, 40.0, 50.0]) * 5)


def test_clip():
    rng = np.random.default_rng(2)
    fm = _fed(rng.normal(0.0, 1.0, size=(100, 3)), clip=2.5)
    x = fm.transform({"loss": 1e6, "lr": -1e6, "epoch": 0.0})
    assert x[1] == 2.5 and x[2] == -2.5
    assert abs(x[3]) < 2.5
    assert x[0] == 1.0  # the bias is never clipped


def test_unknown_signals_are_ignored():
    fm = FeatureMap(names=NAMES)
    fm.update({"loss": 1.0, "something_else": 99.0})
    assert fm.count.tolist() == [1.0, 0.0, 0.0]


def test_round_trip():
    rng = np.random.default_rng(3)
    fm = _fed(rng.normal(size=(20, 3)))
    copy = FeatureMap.from_dict(fm.to_dict())
    ctx = {"loss": 0.3, "lr": -0.2, "epoch": 1.5}
    assert_allclose(copy.transform(ctx), fm.transform(ctx), rtol=0, atol=0)
    assert copy.names == fm.names and copy.clip == fm.clip


def _reference_transform(names, clip, count, mean, m2, context):
    """The former array implementation of transform (numpy on the whole vector), for the equivalence test."""
    raw = np.array([context.get(n) for n in names], dtype=float)
    present = np.isfinite(raw)
    raw[~present] = 0.0
    np.clip(raw, -1e100, 1e100, out=raw)
    std = np.sqrt(np.divide(m2, count - 1, out=np.ones_like(m2), where=count > 1))
    std[std < 1e-12] = 1.0
    z = (raw - mean) / std
    z[~present] = 0.0
    return np.concatenate([[1.0], np.maximum(np.minimum(z, clip), -clip)])


def _reference_update(count, mean, m2, names, context):
    raw = np.array([context.get(n) for n in names], dtype=float)
    present = np.isfinite(raw)
    raw[~present] = 0.0
    np.clip(raw, -1e100, 1e100, out=raw)
    count += present
    delta = np.where(present, raw - mean, 0.0)
    mean += np.divide(delta, count, out=np.zeros_like(delta), where=count > 0)
    m2 += delta * np.where(present, raw - mean, 0.0)


def test_per_signal_code_gives_the_same_floats_as_the_array_code():
    rng = np.random.default_rng(11)
    names = tuple(f"f{j}" for j in range(12))
    fm = FeatureMap(names=names, clip=5.0)
    count, mean, m2 = np.zeros(12), np.zeros(12), np.zeros(12)
    for _ in range(400):
        values = rng.normal(rng.uniform(-50, 50, 12), rng.uniform(0.01, 30, 12))
        ctx = {}
        for j, n in enumerate(names):
            u = rng.random()
            if u < 0.15:
                continue  # missing
            ctx[n] = float(values[j]) if u > 0.02 else float(rng.choice([math.inf, -math.inf, math.nan, 3e300]))
        x = fm.transform(ctx)
        assert np.array_equal(x, _reference_transform(names, 5.0, count, mean, m2, ctx))
        fm.update(ctx)
        _reference_update(count, mean, m2, names, ctx)
        assert np.array_equal(fm.count, count) and np.array_equal(fm.mean, mean) and np.array_equal(fm.m2, m2)
    again = FeatureMap.from_dict(fm.to_dict())
    assert np.array_equal(again.transform({"f1": 2.0}), fm.transform({"f1": 2.0}))
