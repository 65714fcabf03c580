"""Contextual bake-off: seedworker's contextual strategies beside Vowpal Wabbit's ``cb_explore_adf`` explorers.

The protocol of Bietti, Agarwal & Langford, "A Contextual Bandit Bake-off" (JMLR 2021), on four multiclass data
sets that ship with the installed packages (no download): scikit-learn's digits, wine and breast cancer, and
River's image segments. A data set becomes a bandit problem by making each class an arm: at every example the
learner sees the context, picks an arm, and is told only that arm's reward, 1 if it is the example's label and 0
otherwise (cost 1 - reward for VW). Features are standardized over the whole data set (a constant feature is 0)
and clipped to ±5, the clip seedworker's feature map applies; every player gets the same vector. The examples are
shuffled per random seed (the same order for every player). The metric is the progressive validation reward: the
mean reward the learner earned over one pass, every example scored before it is learned from (the paper's
progressive validation loss is 1 minus it).

seedworker is driven through its core API the way ``bench/regret.py`` drives it (``CoreArms``: an ``ArmTable``
with one seed per class, ``policy.choose(Situation)`` with the decision's seeded ``Draw``, ``select`` + ``learn``
with the context, the selector's burn-in of one selection per seed first), at the strategies' untuned defaults;
the context vector is ``[1, z]``, what ``FeatureMap`` yields. VW gets the same features as a shared namespace,
one line per arm with the arm's indicator, ``-q sa`` (so a linear model per arm, as seedworker's disjoint ridge
regressions), its default learner (``cb_type mtr``, adaptive normalized SGD at learning rate 0.5), and a grid of
exploration settings; the action is drawn from VW's pmf with the run's own generator. The best VW setting of a
data set is chosen after the fact, on that data set; the ratio is seedworker's mean reward over it, with a 90%
paired bootstrap interval over the random seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from bench import Report
from bench.regret import CoreArms, Entry, Player, mean_ci, ratio_interval

DATASETS = ("digits", "wine", "breast cancer", "image segments")
SEEDS = 20
QUICK_SEEDS = 3
QUICK_EXAMPLES = 400  # --quick plays the first examples of each shuffled data set only
CLIP = 5.0  # FeatureMap's clip: a standardized feature beyond it carries no more weight
SW_DEFAULTS = ("linucb", "lin-thompson")


@dataclass(frozen=True)
class Dataset:
    name: str
    z: np.ndarray  # (n, d) standardized, clipped features
    y: np.ndarray  # (n,) class index 0..k-1
    k: int
    shared: tuple[str, ...]  # VW's shared line of every example (non-zero features only: VW skips zeros anyway)


def _standardize(raw: np.ndarray) -> np.ndarray:
    sd = raw.std(axis=0)
    z = (raw - raw.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return np.clip(z, -CLIP, CLIP)


@cache
def load(name: str) -> Dataset:
    if name == "image segments":
        from river import datasets

        rows = list(datasets.ImageSegments())
        names = sorted(rows[0][0])
        raw = np.array([[x[f] for f in names] for x, _ in rows], dtype=float)
        classes = sorted({label for _, label in rows})
        y = np.array([classes.index(label) for _, label in rows])
    else:
        from sklearn import datasets as sk

        loader = {"digits": sk.load_digits, "wine": sk.load_wine, "breast cancer": sk.load_breast_cancer}[name]
        raw, y = loader(return_X_y=True)
        raw = raw.astype(float)
        y = np.unique(y, return_inverse=True)[1]
    z = _standardize(raw)
    shared = tuple(
        "shared |s " + " ".join(f"f{j}:{v:.6g}" for j, v in enumerate(row) if v != 0.0) for row in z.tolist()
    )
    return Dataset(name, z, y, int(y.max()) + 1, shared)


@dataclass(frozen=True)
class Run:
    """One data set in one random seed's order: what every player of that run sees."""

    data: Dataset
    seed: int
    order: np.ndarray  # example indices in play order

    @property
    def key(self) -> str:
        return f"{self.data.name}-{self.seed}"


def shuffled(data: Dataset, seed: int, limit: int | None = None) -> Run:
    order = np.random.default_rng([seed, DATASETS.index(data.name)]).permutation(len(data.y))
    return Run(data, seed, order[:limit])


# -- players ----------------------------------------------------------------------------------------------------
def seedworker(
    name: str, params: dict | None = None, ridge: float = 1.0, feature_ridge: float | None = None
) -> Callable[[Run], Player]:
    """``feature_ridge`` as a multiple of the data set's number of features (None: the same as ``ridge``)."""

    def make(run: Run) -> Player:
        data = run.data
        d = data.z.shape[1]
        arms = CoreArms(
            name,
            data.k,
            d + 1,
            salt="contextual",
            params=params,
            ridge=ridge,
            feature_ridge=None if feature_ridge is None else feature_ridge * d,
        )
        xs = np.hstack([np.ones((len(run.order), 1)), data.z[run.order]])  # [1, z]: FeatureMap's bias first

        def choose(t: int) -> int:
            return arms.choose(t, xs[t], f"{run.key}-{t}")

        def update(t: int, arm: int, reward: float) -> None:
            arms.learn(t, arm, reward, xs[t])

        return Player(choose, update)

    return make


VW_COMMON = "--cb_explore_adf -q sa --quiet"
# The exploration grid: the explorers of the bake-off paper and VW's newer ones, each at a few settings around its
# default (greedy is the paper's surprisingly strong baseline; squarecb's gamma_scale default is 10, regcb's
# mellowness 0.1, softmax's lambda 1, nearly uniform on costs in [0, 1], hence 10 and 100).
VW_GRID = {
    "greedy (epsilon 0)": "--epsilon 0",
    "epsilon 0.01": "--epsilon 0.01",
    "epsilon 0.05": "--epsilon 0.05",
    "epsilon 0.1": "--epsilon 0.1",
    "squarecb gamma_scale 10": "--squarecb --gamma_scale 10",
    "squarecb gamma_scale 100": "--squarecb --gamma_scale 100",
    "squarecb gamma_scale 1000": "--squarecb --gamma_scale 1000",
    "cover 4": "--cover 4",
    "cover 8": "--cover 8",
    "bag 4": "--bag 4",
    "bag 4 greedify": "--bag 4 --greedify",
    "bag 8": "--bag 8",
    "softmax lambda 10": "--softmax --lambda 10",
    "softmax lambda 100": "--softmax --lambda 100",
    "regcb": "--regcb",
    "regcbopt": "--regcbopt",
}
QUICK_VW = ("greedy (epsilon 0)", "epsilon 0.05", "squarecb gamma_scale 10", "regcbopt")


def vw(options: str) -> Callable[[Run], Player]:
    def make(run: Run) -> Player:
        from vowpalwabbit import Workspace

        ws = Workspace(f"{VW_COMMON} {options} --random_seed {run.seed}")
        k = run.data.k
        actions = [f"|a a{j}" for j in range(k)]
        shared = [run.data.shared[i] for i in run.order]
        u = np.random.default_rng([run.seed, DATASETS.index(run.data.name), 1]).random(len(run.order))
        state: dict = {}

        def choose(t: int) -> int:
            ex = [shared[t], *actions]
            pmf = np.asarray(ws.predict(ex))
            a = min(int(np.searchsorted(np.cumsum(pmf), u[t] * pmf.sum(), side="right")), k - 1)
            state["ex"], state["p"] = ex, float(pmf[a])
            return a

        def update(t: int, arm: int, reward: float) -> None:
            ex = state["ex"]
            ex[arm + 1] = f"0:{1.0 - reward:g}:{state['p']:.6g} {actions[arm]}"
            ws.learn(ex)

        return Player(choose, update, ws.finish)

    return make


DEFAULT_LABEL = "{} (default, untuned)"
# Other seedworker settings that say where a default's loss or gain comes from; the goal counts the defaults only.
# alpha 0 is the ridge model with no exploration at all (its accuracy, not the explorer's); the others move one
# knob each off the default: lin-thompson's spread (1: the posterior itself), and the blueprint's ridge
# (``Settings.ridge``, default 1), which both strategies share, or only the features' precision
# (``Settings.feature_ridge``, here a third of the number of features).
DIAGNOSTIC = {
    "linucb alpha=0 (greedy)": ("linucb", {"alpha": 0.0}, 1.0),
    "lin-thompson scale=1 (the posterior)": ("lin-thompson", {"scale": 1.0}, 1.0),
    "linucb ridge=10": ("linucb", None, 10.0),
    "lin-thompson ridge=10": ("lin-thompson", None, 10.0),
    "linucb feature_ridge=d/3": ("linucb", None, 1.0, 1.0 / 3.0),
    "lin-thompson feature_ridge=d/3, scale=0.15": ("lin-thompson", {"scale": 0.15}, 1.0, 1.0 / 3.0),
}


def entries(quick: bool) -> list[Entry]:
    sw = [Entry("seedworker", DEFAULT_LABEL.format(name), seedworker(name)) for name in SW_DEFAULTS]
    if not quick:
        sw += [Entry("seedworker", f"{label} (diagnostic)", seedworker(*spec)) for label, spec in DIAGNOSTIC.items()]
    grid = QUICK_VW if quick else tuple(VW_GRID)
    return sw + [Entry("VW", label, vw(VW_GRID[label])) for label in grid]


def play(entry: Entry, run: Run) -> float:
    """Progressive validation reward of one pass: the mean of the rewards earned, each before it was learned."""
    player = entry.make(run)
    labels = run.data.y[run.order]
    total = 0.0
    try:
        for t in range(len(labels)):
            arm = player.choose(t)
            reward = 1.0 if arm == labels[t] else 0.0
            total += reward
            player.update(t, arm, reward)
    finally:
        player.close()
    return total / len(labels)


def main(report: Report) -> None:
    quick = report.quick
    seeds = QUICK_SEEDS if quick else SEEDS
    limit = QUICK_EXAMPLES if quick else None
    started = time.perf_counter()
    report.section("Contextual bake-off: seedworker vs Vowpal Wabbit cb_explore_adf" + (" (--quick)" if quick else ""))
    data = {name: load(name) for name in DATASETS}
    facts = [
        f"{d.name} n={len(d.y) if limit is None else min(limit, len(d.y))} d={d.z.shape[1]} K={d.k}"
        for d in data.values()
    ]
    report.line("; ".join(facts))
    report.line(
        f"{seeds} random seeds (example orders); mean progressive reward (± 1.96 se); VW: {VW_COMMON} "
        "+ the exploration option, default learner (cb_type mtr)"
    )
    report.line(
        "K arms as seeds: each class is one seed of one blueprint (K seeds), the example's features are the context "
        "vector [1, z], the reward is 1 for the seed that is the label; seedworker sees nothing else"
    )
    entries_ = entries(quick)
    results: dict[str, dict[str, np.ndarray]] = {}
    for e in entries_:
        t0 = time.perf_counter()
        try:
            results[e.name] = {
                name: np.array([play(e, shuffled(d, seed, limit)) for seed in range(seeds)]) for name, d in data.items()
            }
        except Exception as exc:  # a setting VW refuses must not hide the others
            report.line(f"  {e.name}: failed ({type(exc).__name__}: {exc})")
            continue
        print(f"  [contextual] {e.name}: {time.perf_counter() - t0:.1f} s", flush=True)

    report.table(["player", *DATASETS], [[name, *(mean_ci(r[s], 3) for s in DATASETS)] for name, r in results.items()])
    report.line("uniform random: " + ", ".join(f"{s} {1 / d.k:.3f}" for s, d in data.items()))

    peers = {n: r for n, r in results.items() if n.startswith("VW")}
    best = {s: max(peers, key=lambda n: peers[n][s].mean()) for s in DATASETS}
    report.line()
    report.line("Best VW setting per data set (highest mean reward, chosen after the fact on that data set):")
    for s in DATASETS:
        report.line(f"  {s}: {best[s]} ({peers[best[s]][s].mean():.3f})")
    rng = np.random.default_rng(0)
    rows, verdicts = [], []
    for name, r in results.items():
        if not name.startswith("seedworker"):
            continue
        cells = []
        for s in DATASETS:
            ratio, lo, hi = ratio_interval(r[s], peers[best[s]][s], rng)
            met = ratio >= 1.0
            if name.endswith("(diagnostic)"):
                cells.append(f"{ratio:.3f} [{lo:.3f}, {hi:.3f}]")
                continue
            cells.append(f"{ratio:.3f} [{lo:.3f}, {hi:.3f}] {'pass' if met else 'MISS'}")
            verdicts.append((name, s, met))
        rows.append([name, *cells])
    report.line()
    report.line(
        "Mean reward ratio seedworker ÷ best VW setting (90% paired bootstrap interval); goal >= 1 for the defaults "
        "(diagnostic rows move one setting off the default and are not judged)"
    )
    report.table(["seedworker", *DATASETS], rows)
    missed = [f"{n.removeprefix('seedworker: ')} on {s}" for n, s, met in verdicts if not met]
    report.line()
    report.line(
        "goal: every contextual default at least as good as VW's best setting on every data set: "
        + ("met" if not missed else f"MISSED ({'; '.join(missed)})")
    )
    report.line(f"contextual bake-off took {time.perf_counter() - started:.0f} s")
