"""The fast paths of the learning core give the answers of the plain computations they replace.

Pooled scale as running totals, deferred Gram updates, the lazily seeded Draw, the directly assembled seed.selected
event, the quadrature propensity of Gaussian sampling (see seedworker/core/policies/propensity.py), the Python-float path
of UCB for a few candidates, the one-read moments of the Gaussian posterior, the Monte-Carlo propensity drawn after
the pick, and the lazily formatted reason.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from seedworker.contract.events import CandidateScore, GraftRequested, SeedSelected, encode
from seedworker.core.arms import ArmTable
from seedworker.core.config import Settings
from seedworker.core.policies import Draw, Situation, base, make_policy, thompson, ucb
from seedworker.core.policies import propensity as P
from seedworker.core.policies.base import Choice
from seedworker.core.policies.linucb import LinearThompson
from seedworker.core.policies.propensity import gaussian_max_probability, ncdf
from seedworker.core.policies.thompson import GaussianThompson
from seedworker.core.selector import SeedSelector


def _two_pass_scale(table: ArmTable) -> float:
    n = len(table)
    pulls, sums = table.pulls[:n], table.reward_sum[:n]
    if pulls.sum() < 2:
        return 1.0
    if table.half_life_s is None:
        within = table.reward_sq_sum[:n].sum() - (sums * sums / np.maximum(pulls, 1)).sum()
        return math.sqrt(max(within, 0.0) / pulls.sum())
    # Decayed: each arm's sums seen from the blueprint's clock.
    f = np.exp2(-(table.clock - table.t_ref[:n]) / table.half_life_s)
    w, s, s2 = f * table.w[:n], f * table.w_reward[:n], f * table.w_reward_sq[:n]
    seen = w > 0
    within = (s2[seen] - s[seen] ** 2 / w[seen]).sum()
    return math.sqrt(max(within, 0.0) / w.sum())


@pytest.mark.parametrize("half_life_s", [None, 50.0])
def test_pooled_scale_running_totals_match_the_two_pass_sum(half_life_s):
    rng = np.random.default_rng(3)
    table = ArmTable(dim=2, half_life_s=half_life_s)
    table.rows([f"s{i}" for i in range(5)])
    assert table.pooled_scale() == 1.0
    for step in range(400):
        table.learn(int(rng.integers(5)), reward=float(rng.normal(3.0, 0.7)), success=True, t=float(step))
        if step % 37 == 0:
            assert table.pooled_scale() == pytest.approx(_two_pass_scale(table), rel=1e-9)
    # A state written before the running totals existed gets them summed once on load.
    old = table.to_dict()
    del old["pooled"]
    assert ArmTable.from_dict(old).pooled_scale() == pytest.approx(table.pooled_scale(), rel=1e-12)


def test_deferred_gram_equals_the_sum_of_outer_products():
    rng = np.random.default_rng(4)
    table = ArmTable(dim=3, ridge=0.5)
    table.rows(["a", "b"])
    xs = {0: [], 1: []}
    for step in range(150):  # more than one batch for arm 0, a partial batch pending for both at the end
        i = 0 if step % 3 else 1
        x = np.concatenate([[1.0], rng.normal(size=2)])
        xs[i].append(x.copy())
        table.learn(i, reward=0.1, success=True, t=0.0, x=x)
        x[:] = 99.0  # the caller reusing its array must not change what was learned
    for i in (0, 1):
        m = np.array(xs[i])
        assert_allclose(table.gram[i], m.T @ m, rtol=1e-12)
        assert_allclose(table.a_inv[i], np.linalg.inv(0.5 * np.eye(3) + m.T @ m), rtol=1e-9)


def test_draw_is_pcg64_keyed_by_the_digest_of_salt_and_request_id():
    """Contract 1.2's stream (events.SCHEMA_MINOR): PCG64 whose state and increment seeds are the four 64-bit words
    of blake2b-256(salt NUL request_id), without SeedSequence. Pinned: a change here changes every decision."""
    draw = Draw("salt", "req-1")
    digest = hashlib.blake2b(b"salt\x00req-1", digest_size=32).digest()
    assert draw.seed == int.from_bytes(digest, "little")
    words = np.frombuffer(digest, dtype="<u8")
    bits = np.random.PCG64(0)
    # numpy's PCG64 seeding (pcg64_set_seed, words as (high, low) pairs): state 0, increment (inc << 1) | 1, a
    # step, the state seed added, a step.
    inc = ((int(words[2]) << 64 | int(words[3])) << 1 | 1) % 2**128
    mult = 0x2360ED051FC65DA44385DF649FCCF645
    state = (0 * mult + inc) % 2**128
    state = (state + (int(words[0]) << 64 | int(words[1]))) % 2**128
    state = (state * mult + inc) % 2**128
    bits.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc}, "has_uint32": 0, "uinteger": 0}
    expected = np.random.Generator(bits).standard_normal(5)
    assert_allclose(draw.rng.standard_normal(5), expected, rtol=0, atol=0)
    assert_allclose(Draw("salt", "req-1").rng.standard_normal(5), expected, rtol=0, atol=0)
    assert Draw("salt", "req-1").rng.integers(1 << 62) == 2649191387399790040  # pinned value of the 1.2 stream


def test_draws_look_independent_across_requests():
    """First uniforms of 4000 request ids: uniform (a coarse chi-square) and uncorrelated with the next id's."""
    u = np.array([Draw("s", f"r{j}").rng.random() for j in range(4000)])
    counts = np.bincount((u * 20).astype(int), minlength=20)
    chi2 = float(((counts - 200.0) ** 2 / 200.0).sum())
    assert chi2 < 45.3  # 19 degrees of freedom, p = 0.001
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 4.0 / math.sqrt(4000)


def test_directly_built_event_equals_model_construct():
    sel = SeedSelector(Settings(default_strategy="thompson"))
    req = GraftRequested.model_validate(
        {
            "request_id": "r1",
            "blueprint_id": "bp",
            "context": {"current_loss": 1.0},
            "seeds": [{"seed_id": f"s{i}", "seed_idx": i, "state": "dormant" if i else "fossilized"} for i in range(4)],
        }
    )
    fast = sel.decide(req)
    fields = dict(fast.__dict__)
    fields["scores"] = [CandidateScore.model_construct(**c.__dict__) for c in fast.scores]
    slow = SeedSelected.model_construct(**fields)
    assert fast == slow and encode(fast) == encode(slow) and repr(fast) == repr(slow)
    assert list(fast.__dict__) == list(slow.__dict__) and fast.model_fields_set == slow.model_fields_set
    for a, b in zip(fast.scores, slow.scores):
        assert list(a.__dict__) == list(b.__dict__) and a.model_fields_set == b.model_fields_set
    assert SeedSelected.model_validate(fast.model_dump()) == fast
    # The candidates share one fields-set; a copy of one gets its own, and the shared one stays as it was.
    shared = set(fast.scores[0].model_fields_set)
    copy = fast.scores[0].model_copy(update={"note": "x"})
    assert copy.note == "x" and copy.model_fields_set is not fast.scores[0].model_fields_set
    assert all(c.model_fields_set == shared for c in fast.scores + sel.decide(req).scores)


# -- quadrature propensity --------------------------------------------------------------------------------------
def _exact_ncdf(t: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0)))(t)


def _reference(loc: np.ndarray, sd: np.ndarray, i: int) -> float:
    """The same integral with exact Φ on a grid 16 times finer over [-9, 9]."""
    u = np.linspace(-9.0, 9.0, 4001)
    f = np.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)
    for j in range(len(loc)):
        if j != i:
            f = f * _exact_ncdf((loc[i] + sd[i] * u - loc[j]) / sd[j])
    return float(f.sum() * (u[1] - u[0]))


def test_ncdf_table():
    t = np.linspace(-10.0, 10.0, 2001)
    assert np.abs(ncdf(t) - _exact_ncdf(t)).max() < 2e-7


def test_quadrature_propensity_two_candidates_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(200):
        loc, sd = rng.normal(size=2), np.exp(rng.normal(size=2))
        exact = 0.5 * math.erfc(-(loc[0] - loc[1]) / math.hypot(sd[0], sd[1]) / math.sqrt(2.0))
        assert gaussian_max_probability(loc, sd, 0, budget=10**6) == pytest.approx(exact, abs=1e-6)


def test_quadrature_propensity_many_candidates():
    rng = np.random.default_rng(1)
    for trial in range(40):
        k = int(rng.choice([3, 8, 20]))
        loc = rng.normal(0.5, rng.choice([0.02, 0.1, 0.5]), size=k)
        sd = np.exp(rng.normal(-2.0, rng.choice([0.1, 0.5, 1.0]), size=k))
        i = int((loc + sd * rng.normal(size=k)).argmax())
        p = gaussian_max_probability(loc, sd, i, budget=10**6)
        assert p == pytest.approx(_reference(loc, sd, i), abs=1e-5), trial
    # All candidates' probabilities sum to one.
    loc, sd = rng.normal(size=6), np.exp(rng.normal(size=6) * 0.3)
    assert sum(gaussian_max_probability(loc, sd, i, budget=10**6) for i in range(6)) == pytest.approx(1.0, abs=1e-5)


def test_quadrature_declines_what_it_cannot_resolve_cheaply():
    assert gaussian_max_probability(np.array([0.0, 1.0]), np.array([1.0, 0.0]), 0) is None  # a point mass
    wide_vs_narrow = gaussian_max_probability(np.array([0.0, 0.0, 0.1]), np.array([1.0, 1e-4, 1e-4]), 0)
    assert wide_vs_narrow is None  # would need ~10^5 grid points: Monte Carlo is cheaper
    assert gaussian_max_probability(np.array([5.0]), np.array([1.0]), 0) == 1.0
    assert gaussian_max_probability(np.array([100.0, 0.0]), np.array([1.0, 1.0]), 0) == 1.0  # out of reach


@pytest.mark.parametrize("cls", [GaussianThompson, LinearThompson])
def test_quadrature_is_the_default_and_only_logged_methods_are_accepted(cls, monkeypatch):
    assert cls().propensity == "quadrature"
    assert "quadrature" in SeedSelected.model_fields["propensity_method"].annotation.__args__
    assert cls(propensity="monte_carlo").propensity == "monte_carlo"
    with pytest.raises(ValueError, match="propensity must be one of"):
        cls(propensity="bogus")
    # A method the seed.selected contract does not list is refused, so no event can fail validation downstream.
    monkeypatch.setattr(thompson, "LOGGED_METHODS", ("exact", "monte_carlo", "fallback"))
    with pytest.raises(ValueError, match="not a propensity_method of the seed.selected contract"):
        cls(propensity="quadrature")


@pytest.mark.parametrize("name", ["thompson", "lin-thompson"])
def test_quadrature_mode_picks_as_monte_carlo_does(name):
    rng = np.random.default_rng(7)
    table = ArmTable(dim=3)
    rows = table.rows([f"s{i}" for i in range(5)])
    for step in range(60):
        i = step % 5
        x = np.concatenate([[1.0], rng.normal(size=2)])
        table.learn(i, reward=float(rng.normal(0.4 + 0.05 * i, 0.2)), success=True, t=float(step), x=x)
    mc, quad = make_policy(name, {"propensity": "monte_carlo"}), make_policy(name)
    x = np.array([1.0, 0.3, -0.2])
    for r in range(30):
        a = mc.choose(Situation(table, rows, x, 60, Draw("salt", f"q{r}")))
        b = quad.choose(Situation(table, rows, x, 60, Draw("salt", f"q{r}")))
        assert a.index == b.index and a.explored == b.explored
        assert_allclose(a.scores, b.scores, rtol=0, atol=0)
        assert a.method == "monte_carlo" and b.method == "quadrature" and b.probabilities is None
        # Monte Carlo with 201 draws is within its sampling error of the integral.
        assert abs(a.propensity - b.propensity) <= 4.5 * math.sqrt(b.propensity * (1 - b.propensity) / 201) + 1 / 201


# -- Python floats for a few candidates -------------------------------------------------------------------------
def _random_table(
    rng: np.random.Generator, k: int, half_life_s: float | None, priors: bool, ties: bool, detect: bool = False
) -> ArmTable:
    """Arms with random statistics: some untried, optionally some warm-started, optionally two identical arms,
    optionally with change detection (segments)."""
    table = ArmTable(dim=2, half_life_s=None if detect else half_life_s, detect=detect)
    prior = (float(rng.uniform(0.1, 3.0)), float(rng.normal(0.5, 0.2))) if priors else None
    table.rows([f"s{j}" for j in range(k)], prior)
    tried = rng.random(k) < 0.8
    for _ in range(int(rng.integers(k, 20 * k))):
        j = int(rng.integers(k))
        if tried[j]:
            table.learn(
                j,
                reward=float(rng.normal(0.4 + 0.02 * j, 0.3)),
                success=bool(rng.random() < 0.5),
                t=float(rng.uniform(0.0, 500.0)),
            )
    if ties and k > 2:  # a copy of arm 0's statistics in arm 1: an exact tie of any score
        for name in (
            "pulls",
            "reward_sum",
            "reward_sq_sum",
            "success_sum",
            "w",
            "w_reward",
            "w_reward_sq",
            "w_success",
            "t_ref",
            "prior_w",
            "prior_mean",
            "seg_n",
            "seg_sum",
            "seg_sq",
        ):
            getattr(table, name)[1] = getattr(table, name)[0]
    return table


@pytest.mark.parametrize("name", ["ucb", "discounted-ucb", "ucb-v", "glr-ucb"])
def test_index_policies_give_the_same_choice_on_lists_and_arrays(name, monkeypatch):
    """Up to base.SMALL candidates UCB computes its bounds on Python floats: the same bounds (bit for bit), the
    same pick, the same propensity (ties included) as the array path, on random states."""
    rng = np.random.default_rng(11)
    policy = make_policy(name)
    checked = 0
    for trial in range(150):
        k = int(rng.integers(1, base.SMALL + 1))
        table = _random_table(
            rng, k, rng.choice([None, 300.0]), bool(rng.random() < 0.3), bool(rng.random() < 0.3), policy.detects
        )
        rows = rng.permutation(k)[: int(rng.integers(1, k + 1))].astype(np.intp)
        if rng.random() < 0.3:
            rows = table.every  # all seeds in table order: read as column slices
        s = Situation(table, rows, np.zeros(2), 5, Draw("salt", f"r{trial}"))
        small = policy.choose(s)
        with monkeypatch.context() as m:
            m.setattr(ucb, "SMALL", 0)
            m.setattr(base, "SMALL", 0)
            big = policy.choose(Situation(table, rows, np.zeros(2), 5, Draw("salt", f"r{trial}")))
        assert (small.index, small.propensity, small.method, small.explored, small.reason) == (
            big.index,
            big.propensity,
            big.method,
            big.explored,
            big.reason,
        )
        np.testing.assert_array_equal(small.scores, big.scores)
        checked += small.propensity < 1.0
    assert checked >= 10  # ties (propensity 1/ties) were among the states compared


def test_segment_scale_is_the_same_on_lists_and_arrays(monkeypatch):
    """The segments' pooled scale, summed exactly rounded, is the same value for a few seeds (Python floats) as on
    arrays, and the within-segment standard deviation a two-pass computation gives."""
    from seedworker.core import arms as arms_module

    rng = np.random.default_rng(14)
    for _ in range(60):
        k = int(rng.integers(1, 17))
        table = _random_table(rng, k, None, False, bool(rng.random() < 0.3), detect=True)
        small = table.segment_scale()
        with monkeypatch.context() as m:
            m.setattr(arms_module, "_FEW", 0)
            assert table.segment_scale() == small
        n, s, s2 = (getattr(table, c)[:k] for c in ("seg_n", "seg_sum", "seg_sq"))
        within = float((s2 - s * s / np.maximum(n, 1.0)).sum())
        if n.sum() >= 2 and within > 0:
            assert small == pytest.approx(math.sqrt(within / n.sum()), rel=1e-9)


@pytest.mark.parametrize("half_life_s, priors", [(None, False), (None, True), (300.0, False), (300.0, True)])
def test_moments_equal_counts_means_variances(half_life_s, priors):
    rng = np.random.default_rng(12)
    for _ in range(30):
        table = _random_table(rng, int(rng.integers(1, 40)), half_life_s, priors, False)
        rows = rng.permutation(len(table)).astype(np.intp)
        for discounted in (False, True):
            n, mean, var = table.moments(rows, discounted)
            n2, mean2 = table.counts_means(rows, discounted)
            np.testing.assert_array_equal(n, n2)
            np.testing.assert_array_equal(mean, mean2)
            np.testing.assert_array_equal(var, table.variances(rows, discounted))


@pytest.mark.parametrize("name", ["beta-thompson", "thompson", "lin-thompson"])
def test_monte_carlo_propensity_is_the_share_of_one_block_of_draws(name):
    """The pick, then the further draws from the same generator: the estimate is what one block of 1 + S draws,
    the pick's row first, gives."""
    policy = make_policy(name, {"propensity": "monte_carlo"})
    rng = np.random.default_rng(13)
    table = ArmTable(dim=3)
    rows = table.rows([f"s{j}" for j in range(6)])
    for step in range(90):
        x = np.concatenate([[1.0], rng.normal(size=2)])
        table.learn(step % 6, reward=float(rng.normal(0.5, 0.3)), success=bool(rng.random() < 0.5), t=float(step), x=x)
    x = np.array([1.0, 0.2, -0.4])
    for r in range(20):
        choice = policy.choose(Situation(table, rows, x, 90, Draw("salt", f"m{r}")))
        block = policy._sample(
            Situation(table, rows, x, 90, Draw("salt", f"m{r}")),
            Draw("salt", f"m{r}").rng,
            1 + policy.propensity_samples,
        )
        winners = block.argmax(axis=1)
        assert choice.method == "monte_carlo" and choice.index == winners[0]
        np.testing.assert_array_equal(choice.scores, block[0])
        np.testing.assert_array_equal(choice.probabilities, np.bincount(winners, minlength=6) / len(block))


def test_choice_formats_its_reason_once_on_first_read():
    calls = []

    def why():
        calls.append(1)
        return "because"

    c = Choice(0, [1.0, 2.0], None, 1.0, "exact", False, why)
    assert calls == []
    assert c.reason == "because" and c.reason == "because" and calls == [1]
    assert c.score_list() == [1.0, 2.0]
    assert isinstance(c.scores, np.ndarray) and c.scores.tolist() == [1.0, 2.0] and c.score_list() == [1.0, 2.0]
    assert Choice(0, None, None, 1.0, "exact", False, "plain").reason == "plain"


# The array code gaussian_max_probability ran for every K before its small-K path, kept for the comparison.
def _array_quadrature(loc: np.ndarray, sd: np.ndarray, i: int, budget: int | None = None) -> float | None:
    """(Former code.) P(candidate ``i`` has the highest of independent normal draws), or None if the grid would cost more than
    ``budget`` Φ evaluations (default: 200 per candidate, what a 200-sample Monte-Carlo estimate draws)."""
    k = len(loc)
    if k == 1:
        return 1.0
    s_i = float(sd[i])
    if not s_i > 0.0 or np.count_nonzero(sd) < k:
        return None  # a point mass: no density to integrate against
    # Row j is (r_j, a_j): competitor j's Φ argument is a_j + r_j u, a_j = (m_i - m_j) / s_j, r_j = s_i / s_j.
    ra = np.empty((k, 2))
    r, a = ra[:, 0], ra[:, 1]
    np.divide(s_i, sd, out=r)
    np.subtract(loc[i], loc, out=a)
    a /= sd
    if k > P._SMALL:
        near = (a - r * P._U < P._T).nonzero()[0]  # j's Φ drops below 1 somewhere on the grid (i itself is near)
        if len(near) == 1:
            return 1.0
        if len(near) < k:
            i = int(np.count_nonzero(near < i))  # i's place among the near ones
            ra = ra[near]
            r, a = ra[:, 0], ra[:, 1]
    # Below the point where some competitor's Φ reaches 0 the integrand is 0: start the grid there (i's own term,
    # a = 0 and r = 1, gives -T < -U and so never moves the start).
    start = np.divide(-P._T - a, r)
    if len(start) <= P._SMALL:
        listed = start.tolist()
        lo = max(listed)
        if not math.isfinite(sum(listed)):
            return None  # not a distribution this can integrate
    else:
        lo = float(np.maximum.reduce(start))
        if lo != lo:
            return None
    if lo >= P._U:
        return 0.0  # out of reach
    # A far competitor: with a at most 40 + U r, Φ(a + r u) is still 1 on the grid (u >= -U), and positions stay small.
    np.minimum(a, 40.0 + P._U * r, out=a)
    ra[i] = 0.0, -P._TABLE_LO  # Φ(0 + 8.5) = 1: i is not its own competitor
    r_max = max(r.tolist()) if len(r) <= P._SMALL else float(np.maximum.reduce(r))
    level = max(0, math.ceil(P._PER_OCTAVE * 0.5 * math.log2(1.0 + r_max * r_max)))
    step = P._SPACING * 2.0 ** (-level / P._PER_OCTAVE)
    points = int((P._U - max(lo, -P._U)) / step) + 2
    if points * (len(r) - 1) > (200 * k if budget is None else budget):
        return None
    to_table, w = P._grid(level, points)
    # Table positions of every competitor's Φ argument at every node, in one product. The grid starts at most one
    # step below lo, where every argument is above -T - r h > -8.5: no position falls below the table.
    a -= P._TABLE_LO
    f = np.multiply.reduce(P._interpolate(ra.dot(to_table)), axis=0)
    # Trapezoidal rule, plus φ's mass beyond U.
    p = float(w.dot(f)) + P._UPPER_TAIL
    # Below -U the integrand is left out (at most 1e-9): a pick no competitor can reach comes out as 1 - 1e-9.
    return 1.0 if p > 1.0 - 1e-8 else max(p, 0.0)


def test_small_k_quadrature_gives_the_same_floats_as_the_array_code():
    rng = np.random.default_rng(5)
    for _ in range(3000):
        k = int(rng.integers(1, 17))
        loc = rng.normal(0.0, rng.choice([0.01, 1.0, 100.0]), k)
        sd = rng.uniform(0.001, 2.0, k) * rng.choice([0.01, 1.0, 10.0], k)
        if rng.random() < 0.05:
            sd[rng.integers(k)] = 0.0
        i = int(rng.integers(k))
        for budget in (None, 50):
            assert gaussian_max_probability(loc, sd, i, budget) == _array_quadrature(loc, sd, i, budget)


@pytest.mark.parametrize("priors", [False, True])
def test_reads_over_every_seed_equal_the_gathered_reads(priors):
    """ArmTable.every (all seeds in table order) is read as column slices; the values are those of gathering the
    same rows, bit for bit, and the shared array cannot be written to."""
    rng = np.random.default_rng(5)
    for k in (1, 3, 8, 20):
        table = _random_table(rng, k, None, priors, False)
        for j in range(k):
            table.learn(j, reward=float(rng.normal()), success=True, t=1.0, x=np.array([1.0, float(rng.normal())]))
        every, gathered = table.rows([f"s{j}" for j in range(k)]), np.arange(k, dtype=np.intp)
        assert every is table.every and table.is_every(every) and not table.is_every(gathered)
        with pytest.raises(ValueError):
            every[0] = 1
        x = np.array([1.0, 0.3])
        for a, b in zip(table.linear_model(every, x), table.linear_model(gathered, x)):
            np.testing.assert_array_equal(a, b)
        assert table.counts_means_list(every) == table.counts_means_list(gathered)
        n, m = table.counts_means(gathered)
        assert table.counts_means_list(every) == (n.tolist(), m.tolist())


@pytest.mark.parametrize("name", ["thompson", "glr-thompson"])
@pytest.mark.parametrize("propensity", ["quadrature", "monte_carlo"])
def test_gaussian_thompson_gives_the_same_decision_on_lists_and_arrays(name, propensity, monkeypatch):
    """Up to base.SMALL candidates the Gaussian posterior and its draws are computed on Python floats: the same
    draws (bit for bit), the same pick and the same propensity as the array path, on random states."""
    rng = np.random.default_rng(12)
    policy = make_policy(name, {"propensity": propensity, "propensity_samples": 50})
    for trial in range(150):
        k = int(rng.integers(1, base.SMALL + 1))
        table = _random_table(rng, k, rng.choice([None, 300.0]), bool(rng.random() < 0.3), bool(rng.random() < 0.3))
        rows = table.every if rng.random() < 0.3 else rng.permutation(k)[: int(rng.integers(1, k + 1))].astype(np.intp)
        small = policy.choose(Situation(table, rows, np.zeros(2), 5, Draw("salt", f"r{trial}")))
        with monkeypatch.context() as m:
            m.setattr(thompson, "SMALL", 0)
            big = policy.choose(Situation(table, rows, np.zeros(2), 5, Draw("salt", f"r{trial}")))
        assert isinstance(small._scores, list) or not math.isfinite(sum(small.score_list()))
        assert (small.index, small.propensity, small.method, small.explored, small.reason) == (
            big.index,
            big.propensity,
            big.method,
            big.explored,
            big.reason,
        )
        assert small.score_list() == big.score_list()
        if big.probabilities is not None:
            np.testing.assert_array_equal(small.probabilities, big.probabilities)
