"""The simulator's report: a text table, a JSON document and a PNG (cumulative regret, selection share per seed).

The JSON holds only what the run computed from its settings (no wall-clock times), so the same settings give
byte-identical files. The PNG is drawn with matplotlib's Agg canvas directly, without pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import orjson

from seedworker.tools.simulation.runner import BASELINE, ScenarioResult

JSON_FORMAT = "seedworker.tools.simulation/1"


# -- table ---------------------------------------------------------------------------------------------------------
def summary_line(result: ScenarioResult) -> str:
    h = result.hidden
    parts = []
    if "best_seed" in h:
        parts.append(f"best seed {h['best_seed']}")
    if "best_before" in h:
        parts.append(f"best seed {h['best_before']} until step {h['change_at']}, then {h['best_after']}")
    if "best_seed_changes" in h:
        parts.append(f"the best seed changes {h['best_seed_changes']} times")
    if "features" in h:
        top = max(range(result.n_seeds), key=lambda j: result.best_seed_share[j])
        parts.append(
            f"the best seed depends on {' and '.join(h['features'])} "
            f"(most often {result.seed_ids[top]}: {result.best_seed_share[top]:.0%} of contexts)"
        )
    if "over_budget" in h:
        best = int(np.bincount(result.best_per_step, minlength=result.n_seeds).argmax())
        parts.append(
            f"memory budget {h['memory_budget_mb']:.0f} MB, over it: {', '.join(h['over_budget'])}; "
            f"best after costs {result.seed_ids[best]}"
        )
    return "; ".join(parts)


def format_table(result: ScenarioResult) -> str:
    r = result
    window = f"steps {r.exploration_steps + 1}-{r.steps}"
    lines = [
        f"{r.scenario}: {r.description}",
        f"  {r.n_seeds} seeds, {r.steps} steps, seed {r.seed}, delay {r.delay}"
        + (f", half-life {r.half_life_s:g} s" if r.half_life_s else "")
        + f"; oracle mean reward {r.oracle_mean_reward:.4f}",
    ]
    summary = summary_line(r)
    if summary:
        lines.append(f"  {summary}")
    costly = r.budget_mb is not None
    header = ["strategy", "mean reward", "cum. regret", f"best share ({window})", "never tried", "vs seed0"]
    if costly:
        header += ["over budget", "violations"]
    rows = []
    for name in r.strategies:
        s = r.results[name]
        label = f"{name} (baseline)" if name == BASELINE else name
        imp = "-" if s.improvement_pct is None else f"{s.improvement_pct:+.1f}%"
        row = [
            label,
            f"{s.mean_reward:.5f}",
            f"{s.cumulative_regret:.3f}",
            f"{s.best_share:.1%}",
            str(len(s.never_tried)),
            imp,
        ]
        if costly:
            row += [str(s.over_budget_picks), str(s.constraint_violations)]
        rows.append(row)
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  " + "  ".join([first, *rest])

    lines.append(fmt(header))
    lines.append("  " + "  ".join("-" * w for w in widths))
    lines.extend(fmt(row) for row in rows)
    return "\n".join(lines)


def print_tables(results: Iterable[ScenarioResult], file: TextIO) -> None:
    for i, result in enumerate(results):
        if i:
            print(file=file)
        print(format_table(result), file=file)


# -- JSON ----------------------------------------------------------------------------------------------------------
def to_json_dict(result: ScenarioResult) -> dict[str, Any]:
    return {"format": JSON_FORMAT, **result.to_dict()}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def write_json(result: ScenarioResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dumps(to_json_dict(result)))
    return path


# -- PNG -----------------------------------------------------------------------------------------------------------
def write_png(result: ScenarioResult, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    r = result
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_regret, ax_share = fig.subplots(1, 2, width_ratios=(1.15, 1))
    fig.suptitle(
        f"seedworker simulate — {r.scenario}: {r.description}\n"
        f"{r.n_seeds} seeds, {r.steps} steps, seed {r.seed}, delay {r.delay}",
        fontsize=10,
    )

    steps = np.arange(1, r.steps + 1)
    line_colors = _colors(len(r.strategies), "tab10")
    for color, name in zip(line_colors, r.strategies):
        s = r.results[name]
        style = {"linestyle": "--", "color": "black"} if name == BASELINE else {"color": color}
        ax_regret.plot(steps, s.regret_curve, label=f"{name} ({s.cumulative_regret:.2f})", linewidth=1.4, **style)
    if "change_at" in r.hidden:
        ax_regret.axvline(r.hidden["change_at"], color="grey", linewidth=0.8, linestyle=":")
    ax_regret.set_xlabel("step")
    ax_regret.set_ylabel("cumulative regret (reward units)")
    ax_regret.set_title("cumulative regret", fontsize=10)
    ax_regret.grid(alpha=0.3)
    ax_regret.legend(fontsize=8, loc="upper left")

    # Selection share per seed after the exploration window, with the oracle's for reference.
    start = r.exploration_steps
    labels = ["oracle", *r.strategies]
    shares = [np.bincount(r.best_per_step[start:], minlength=r.n_seeds)]
    shares += [np.bincount(r.results[name].picks[start:], minlength=r.n_seeds) for name in r.strategies]
    shares = [s / max(s.sum(), 1) for s in shares]
    seed_colors = _colors(r.n_seeds, "tab10" if r.n_seeds <= 10 else "tab20" if r.n_seeds <= 20 else "viridis")
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for j in range(r.n_seeds):
        width = np.array([s[j] for s in shares])
        ax_share.barh(
            y, width, left=left, color=seed_colors[j], label=r.seed_ids[j], height=0.7, edgecolor="white", linewidth=0.5
        )
        left += width
    ax_share.set_yticks(y, labels, fontsize=8)
    ax_share.set_xlim(0, 1)
    ax_share.set_xlabel("share of selections")
    ax_share.set_title(f"selection share per seed (steps {start + 1}-{r.steps})", fontsize=10)
    ax_share.legend(fontsize=7, ncols=min(r.n_seeds, 4), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path


def _colors(n: int, cmap: str) -> list:
    from matplotlib import colormaps

    cm = colormaps[cmap]
    if cm.N >= n and cm.N < 256:
        return [cm(i) for i in range(n)]
    return [cm(i / max(n - 1, 1)) for i in range(n)]
