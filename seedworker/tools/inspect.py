"""``seedworker inspect``: what a store holds, read from one consistent, read-only snapshot of the SQLite file.

Safe while the worker runs: the file is opened read-only and read in one read transaction (WAL readers neither
block the writer nor wait for it), so a batch the worker is writing is either wholly visible or not at all.

Per blueprint and seed: outcomes learned (pulls), mean reward with a 95% confidence interval, decayed mean, share of
selections, last selected, and the current strategy scores; success rate and the latency, memory and throughput
means with 95% intervals over the outcomes that reported them (as ``SeedSelector.stats()`` gives them). The scores
are what the blueprint's strategy computes from the stored state, as the worker's selector would, for a neutral
request: as candidates every seed the blueprint knows that the newest request listing it found viable (a grafted
seed is not), no context signal (each standardized feature at its running mean, so x = [1, 0, ..., 0]), no
constraints, and a fixed synthetic request id, so that the randomized strategies (Thompson draws, ties, burn-in) are
reproducible: sent to the worker, that request gets exactly these scores and this pick. Also: pending decisions,
dead-letter, dangling, late and duplicate counts, held outcomes, unsent outbox rows and the stored offsets.

Live shadows (seedworker.core.shadow): per blueprint and shadow strategy recorded in its decisions, how often it
chose the live seed and its IPS / SNIPS / DR value on the decisions kept, as ``seedworker evaluate`` computes them;
and, in apprentice mode, the apprenticeship: following the baseline or taken over, the learner's and the baseline's
SNIPS values and the lower bound of their difference that decides the takeover. The shadows' estimates read every
decision kept (the reward model learns from all outcomes): done when the configuration names shadow strategies or
an apprentice, or with ``--shadows``; ``--no-shadows`` skips it.

Settings (``--config`` / ``SEEDWORKER_*``) supply what the store does not hold: the default strategy (unless a
``strategy.switch`` stored one), the strategies' parameters and the salt of the decision generator, so give inspect
the worker's configuration. No setting value other than a strategy's parameters is printed (credentials never are).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import orjson

from seedworker.contract.events import GraftRequested, SeedCandidate, TrainingContext
from seedworker.core.arms import RESOURCES
from seedworker.core.config import Settings, load_settings
from seedworker.core.policies import Draw, Situation
from seedworker.core.selector import SeedSelector, seed_rows
from seedworker.store import readers
from seedworker.store.readers import HistoryRow, read_snapshot
from seedworker.store.rows import load_state
from seedworker.store.store import StoreError
from seedworker.tools import evaluate

SCORE_REQUEST_ID = "seedworker-inspect"  # the synthetic request the scores are computed for
CONTEXT_NOTE = (
    "neutral request: no context signal, so every standardized feature sits at its running mean "
    "(x = [1, 0, ..., 0]); candidates: every seed the blueprint knows that its newest request listing it "
    f"found viable; no constraints; synthetic request id {SCORE_REQUEST_ID!r}"
)
Z95 = 1.959963984540054  # normal quantile of 0.975
WATCHED = (
    "dead_letters",
    "dangling_outcomes",
    "late_outcomes",
    "duplicate_outcomes",
    "duplicate_requests",
    "mismatched_outcomes",
    "expired_decisions",
    "held_outcomes",
)
RESOURCE_COLUMNS = {"latency_ms": "latency ms", "memory_mb": "memory MB", "throughput": "throughput /s"}
_SECRET = re.compile(r"pass|secret|token|credential|sasl|salt|key", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0].removeprefix("``seedworker inspect``: ")
    parser.add_argument("--db", help="SQLite state file (default: the `db` setting, var/seedworker.sqlite)")
    parser.add_argument("--config", help="TOML settings file: strategy parameters and salt for the scores")
    parser.add_argument("--blueprint", metavar="ID", help="only this blueprint")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--plot", metavar="FILE.png", help="write selection share and reward over time to a PNG")
    parser.add_argument(
        "--shadows",
        action=argparse.BooleanOptionalAction,
        help="estimate the live shadows recorded in the decisions (reads every decision kept); default: when the "
        "configuration names shadow strategies or an apprentice",
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    settings = load_settings(args.config, overrides={"db": args.db})
    try:
        report, history = read(
            settings.db,
            settings,
            blueprint=args.blueprint,
            history=bool(args.plot),
            shadows=getattr(args, "shadows", None),  # a namespace built without the flag: the default
        )
    except StoreError as exc:
        print(f"seedworker inspect: {exc}", file=sys.stderr)
        return 1
    if args.blueprint and not report["blueprints"]:
        print(f"seedworker inspect: no blueprint {args.blueprint!r} in {settings.db}", file=sys.stderr)
        return 1
    if args.plot:
        write_plot(history, args.plot)
    if args.json:
        # default=str: a strategy parameter of an unexpected type is shown, not a crash.
        out.write(
            orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode() + "\n"
        )
    else:
        print_tables(report, out)
        if args.plot:
            print(f"\nplot: {args.plot}", file=out)
    return 0


# -- reading -------------------------------------------------------------------------------------------------------
def read(
    path: str | Path,
    settings: Settings | None = None,
    *,
    blueprint: str | None = None,
    history: bool = False,
    shadows: bool | None = None,
) -> tuple[dict[str, Any], list[HistoryRow]]:
    """(the report, the decisions in request-time order if ``history``) from one read-only snapshot; the live
    shadows' estimates if ``shadows`` (default: when the settings name shadow strategies or an apprentice)."""
    settings = settings or Settings()
    shadows = bool(settings.shadow_names) if shadows is None else shadows
    rows = read_snapshot(path, lambda db: _query(db, settings, blueprint or None, history, shadows))  # '': all
    return _report(str(path), settings, rows), rows["history"]


def _query(db, settings: Settings, blueprint: str | None, history: bool, shadows: bool) -> dict[str, Any]:
    # Not the watermarks: inspect also reads a store of schema version 1, which no worker has migrated yet.
    readers.require_tables(db, ("blueprints", "decisions", "counters", "offsets", "meta"))
    has_partitions = readers.schema_version(db) >= 3  # the outbox names partitions from schema version 3 on
    states = [(bp, load_state(blob)) for bp, blob in readers.blueprint_states(db, blueprint).items()]
    return {
        "schema_version": readers.schema_version(db),
        "states": states,
        "seed_idx": {
            bp: _seed_indexes(readers.decision_payloads_newest_first(db, bp), state["arms"]["seed_ids"])
            for bp, state in states
        },
        "counters": readers.counters(db),
        "offsets": readers.offsets(db),
        "meta": readers.meta(db),
        "last_selected": readers.last_selected(db, blueprint),
        "statuses": readers.decisions_by_status(db, blueprint),
        "held": readers.held_by_blueprint(db, blueprint),
        "unsent": readers.unsent_by_topic(db),
        "changelog_lag": readers.changelog_lag(db, settings.kafka.topics.changelog) if has_partitions else [],
        "span": readers.decision_span(db, blueprint),
        "history": readers.decision_history(db, blueprint) if history else [],
        "shadowed": _shadowed(db, blueprint) if shadows else None,
    }


def _shadowed(db, blueprint: str | None) -> dict[str, list]:
    """The decisions of each blueprint that has any decision with shadows (all of them: the reward model of DR learns
    from every outcome), in the order they were written."""
    rows = readers.decisions(db, blueprint)
    with_shadow = {d.row.blueprint_id for d in rows if b'"shadow"' in d.row.payload}
    out: dict[str, list] = {}
    for d in rows:
        if d.row.blueprint_id in with_shadow:
            out.setdefault(d.row.blueprint_id, []).append(d)
    return out


def _seed_indexes(payloads: Iterable[bytes], seed_ids: list[str]) -> dict[str, tuple[int, bool, str | None]]:
    """seed_id -> (seed_idx, viable, note) from the newest request that listed the seed (its logged candidates),
    given the blueprint's decisions newest first."""
    found: dict[str, tuple[int, bool, str | None]] = {}
    wanted = set(seed_ids)
    # Stopping once every seed is found: usually the first decision lists them all.
    for payload in payloads:
        for c in orjson.loads(payload).get("scores", ()):
            if c["seed_id"] in wanted and c["seed_id"] not in found:
                found[c["seed_id"]] = (c["seed_idx"], c.get("viable", True), c.get("note"))
        if len(found) == len(wanted):
            break
    return found


def _iso(t: float | None) -> str | None:
    if t is None or not math.isfinite(t):
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _report(path: str, settings: Settings, rows: dict[str, Any]) -> dict[str, Any]:
    meta = rows["meta"]
    selector = SeedSelector(settings)
    # The worker restores these from the store over the settings (see Worker._restore): so does inspect.
    if "default_strategy" in meta:
        selector.default_strategy = meta["default_strategy"]
    if "logging_only" in meta:
        selector.logging_only = meta["logging_only"] == "1"
    last_selected: dict[str, dict[str, float]] = {}
    for last in rows["last_selected"]:
        last_selected.setdefault(last.blueprint_id, {})[last.seed_id] = last.request_time
    statuses: dict[str, dict[str, tuple[int, float]]] = {}
    for s in rows["statuses"]:
        statuses.setdefault(s.blueprint_id, {})[s.status] = (s.count, s.oldest_request_time)
    held = {h.blueprint_id: (h.count, h.oldest_held_since) for h in rows["held"]}

    blueprints = {}
    for bp_id, state in rows["states"]:
        selector.load_blueprint(bp_id, state)
        blueprints[bp_id] = _blueprint(
            selector,
            bp_id,
            last_selected.get(bp_id, {}),
            rows["seed_idx"][bp_id],
            statuses.get(bp_id, {}),
            held.get(bp_id),
        )
        shadowed = rows["shadowed"]
        blueprints[bp_id]["shadows"] = None if shadowed is None else _shadows(settings, shadowed.get(bp_id, []))
        blueprints[bp_id]["apprentice"] = _apprentice(selector, bp_id)
    counters = rows["counters"]
    by_status: dict[str, int] = {}
    oldest_pending = None
    for per_bp in statuses.values():
        for status, (n, oldest) in per_bp.items():
            by_status[status] = by_status.get(status, 0) + n
            if status == "pending" and (oldest_pending is None or oldest < oldest_pending):
                oldest_pending = oldest
    return {
        "db": path,
        "schema_version": rows["schema_version"],
        "counters": counters,
        "watched": {name: counters.get(name, 0) for name in WATCHED},
        "decisions_by_status": dict(sorted(by_status.items())),
        "pending": {"count": by_status.get("pending", 0), "oldest_request_time": _iso(oldest_pending)},
        "held_outcomes": {
            "count": sum(n for n, _ in held.values()),
            "oldest_held_since": _iso(min((t for _, t in held.values()), default=None)),
        },
        "unsent_outbox": rows["unsent"],
        # How far the changelog is behind this store: records written here (with their batch) that Kafka has not
        # acknowledged yet, per input partition; and which partitions' changelogs are complete (a restore from
        # them gives this store's state).
        "changelog": {
            "topic": settings.kafka.topics.changelog,
            "behind": {
                str(c.partition): {"records": c.records, "oldest_written_at": _iso(c.oldest_created_at)}
                for c in rows["changelog_lag"]
            },
            "complete_partitions": sorted(
                int(k.rsplit(".", 1)[1]) for k, v in meta.items() if k.startswith("changelog_complete.") and v == "1"
            ),
        },
        # What is kept: decisions older than decision_retention_s (event time) are pruned.
        "decisions_kept": {
            "count": rows["span"].count,
            "first_request_time": _iso(rows["span"].first_request_time),
            "last_request_time": _iso(rows["span"].last_request_time),
            "retention_s": settings.decision_retention_s,
        },
        "offsets": [o._asdict() for o in rows["offsets"]],
        "meta": {k: ("(hidden)" if _SECRET.search(k) else v) for k, v in meta.items()},
        "default_strategy": selector.default_strategy,
        "default_strategy_from": "store (strategy.switch)" if "default_strategy" in meta else "settings",
        "logging_only": selector.logging_only,
        "scores_context": CONTEXT_NOTE,
        "blueprints": blueprints,
    }


def _blueprint(
    selector: SeedSelector,
    bp_id: str,
    last_selected: dict[str, float],
    listed: dict[str, tuple[int, bool, str | None]],
    statuses: dict,
    held: tuple[int, float] | None,
) -> dict[str, Any]:
    bp = selector.blueprints[bp_id]
    a = bp.arms
    n = len(a)
    # Rows in seed_idx order (as a request lists them); a seed whose index is not on record goes last.
    idx = {s: listed[s][0] for s in a.seed_ids if s in listed}
    top = max(idx.values(), default=-1)
    for s in a.seed_ids:
        if s not in idx:
            top += 1
            idx[s] = top
    order = sorted(range(n), key=lambda i: (idx[a.seed_ids[i]], i))
    # A seed its newest request ruled out (grafted, over budget) is no candidate of the neutral request either.
    excluded = {s: note for s, (_, viable, note) in listed.items() if not viable}
    candidates = [i for i in order if a.seed_ids[i] not in excluded]
    rows = np.array(order, dtype=np.intp)

    request = GraftRequested.model_construct(
        request_id=SCORE_REQUEST_ID,
        blueprint_id=bp_id,
        layer_name=None,
        trace_id=None,
        correlation_id=None,
        seeds=[
            SeedCandidate.model_construct(seed_id=a.seed_ids[i], seed_idx=idx[a.seed_ids[i]], state=None, features=None)
            for i in candidates
        ],
        context=TrainingContext(),
        constraints=None,
        strategy=None,
        occurred_at=datetime.fromtimestamp(0, UTC),
    )
    strategy = selector.strategy_for(request, bp)
    policy = selector.policy(strategy)
    score: dict[int, float | None] = {}
    prob: dict[int, float | None] = {}
    pick = None
    if candidates:
        # The policy itself, not only decide(): during burn-in decide() returns no scores, the policy always does.
        x = bp.features.transform({})
        cand = np.array(candidates, dtype=np.intp)
        choice = policy.choose(Situation(a, cand, x, bp.decisions, Draw(selector.settings.salt, SCORE_REQUEST_ID)))
        if choice.scores is not None:
            score = {i: _finite(v) for i, v in zip(candidates, choice.scores.tolist())}
        if choice.probabilities is not None:
            prob = dict(zip(candidates, choice.probabilities.tolist()))
        pick = selector.decide(request)

    pulls, sel = a.pulls[rows], a.selections[rows]
    means, decayed = a.means(rows), a.means(rows, True)
    var = a.variances(rows)
    total = float(a.selections[:n].sum())
    resources = seed_rows(bp_id, a, rows)  # the same per-seed figures as SeedSelector.stats()
    seeds = []
    for j, i in enumerate(order):
        k = float(pulls[j])
        half = Z95 * math.sqrt(var[j] * k / (k - 1) / k) if k > 1 else None  # sample sd, normal approximation
        m = float(means[j])
        seeds.append(
            {
                "seed_id": a.seed_ids[i],
                "seed_idx": idx[a.seed_ids[i]],
                "pulls": int(k),
                "selections": int(sel[j]),
                "share": float(sel[j]) / total if total else 0.0,
                "mean_reward": m,
                "ci95": None if half is None else [m - half, m + half],
                "decayed_mean": float(decayed[j]),
                "last_selected": _iso(last_selected.get(a.seed_ids[i])),
                "candidate": a.seed_ids[i] not in excluded,
                "score": score.get(i),
                "probability": prob.get(i),
                "note": excluded.get(a.seed_ids[i]),
                "success_rate": resources[j]["success_rate"],
                "measured": resources[j]["measured"],
                **{name: resources[j][name] for name in RESOURCES},
            }
        )
    pending = statuses.get("pending", (0, None))
    return {
        "strategy": strategy,
        "strategy_override": bp.strategy,
        "strategy_settings": policy.settings(),
        "half_life_s": a.half_life_s,
        "decisions": bp.decisions,
        "version": bp.version,
        "by_strategy": dict(sorted(bp.by_strategy.items())),
        "decisions_by_status": {s: c for s, (c, _) in sorted(statuses.items())},
        "pending": {"count": pending[0], "oldest_request_time": _iso(pending[1])},
        "held_outcomes": held[0] if held else 0,
        "next_choice": None
        if pick is None
        else {
            "seed_id": pick.seed_id,
            "strategy": pick.strategy,
            "propensity": pick.propensity,
            "explored": pick.explored,
            "reason": pick.selection_reason,
        },
        "seeds": seeds,
    }


def _shadows(settings: Settings, decisions: list) -> dict[str, Any]:
    """Per shadow strategy: its agreement with the live choice and its estimated value (see seedworker evaluate)."""
    if not decisions:
        return {}
    results = evaluate.evaluate(
        evaluate.to_records(decisions),
        {},
        reward_range=(settings.reward.clip_min, settings.reward.clip_max),
        reward_wait_s=settings.join.reward_wait_s,
    )
    return {name.removeprefix(evaluate.SHADOW): r.to_dict() for name, r in results.items()}


def _apprentice(selector: SeedSelector, bp_id: str) -> dict[str, Any] | None:
    state = selector.blueprints[bp_id].apprentice
    ap = selector.shadow.apprentice
    if state is None:
        return None
    out = {"learner": state["learner"], "baseline": state["baseline"], "took_over": state["took_over"]}
    if ap is not None and (ap.learner, ap.baseline) == (state["learner"], state["baseline"]):
        out |= {"estimates": ap.estimates(state), "margin": ap.margin, "min_decisions": ap.min_decisions}
    else:  # the configuration names other roles (or none): the next apprentice decision starts afresh
        out["estimates"] = None
    return out


# -- tables --------------------------------------------------------------------------------------------------------
def _num(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def _mean_ci(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    ci = stat["ci95"]
    return f"{stat['mean']:.4g}" + ("" if ci is None else f" [{ci[0]:.4g}, {ci[1]:.4g}]")


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) if n < left else c.rjust(w) for n, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), "  " + "  ".join("-" * w for w in widths), *map(line, rows)]


def print_tables(report: dict[str, Any], out: TextIO) -> None:
    r = report
    lines = [
        f"store {r['db']} (schema {r['schema_version']}), read-only snapshot",
        "watched:  " + ", ".join(f"{k}={v}" for k, v in r["watched"].items()),
        "counters: " + (", ".join(f"{k}={v}" for k, v in r["counters"].items()) or "-"),
        "decisions by status: " + (", ".join(f"{k}={v}" for k, v in r["decisions_by_status"].items()) or "-"),
        f"pending decisions: {r['pending']['count']}"
        + (f" (oldest request {r['pending']['oldest_request_time']})" if r["pending"]["count"] else ""),
        f"held outcomes: {r['held_outcomes']['count']}"
        + (f" (oldest held since {r['held_outcomes']['oldest_held_since']})" if r["held_outcomes"]["count"] else ""),
        "unsent outbox rows: " + (", ".join(f"{t}={n}" for t, n in r["unsent_outbox"].items()) or "0"),
        f"changelog {r['changelog']['topic']}: "
        + (
            ", ".join(
                f"partition {p} behind by {c['records']} records (since {c['oldest_written_at']})"
                for p, c in r["changelog"]["behind"].items()
            )
            or "up to date with this store"
        )
        + f"; complete for partitions {r['changelog']['complete_partitions'] or 'none'}",
        f"decisions kept: {r['decisions_kept']['count']}"
        + (
            f" (requests {r['decisions_kept']['first_request_time']} .. {r['decisions_kept']['last_request_time']})"
            if r["decisions_kept"]["count"]
            else ""
        )
        + f"; older than {r['decisions_kept']['retention_s']:g}s are pruned",
        "offsets:  " + (", ".join(f"{o['topic']}[{o['partition']}]={o['next_offset']}" for o in r["offsets"]) or "-"),
        f"default strategy: {r['default_strategy']} (from the {r['default_strategy_from']})"
        + (", logging-only mode" if r["logging_only"] else ""),
        f"scores: {r['scores_context']}",
    ]
    for bp_id, bp in r["blueprints"].items():
        settings = ", ".join(f"{k}={v}" for k, v in bp["strategy_settings"].items())
        statuses = ", ".join(f"{k}={v}" for k, v in bp["decisions_by_status"].items())
        pending = bp["pending"]
        oldest = f" (oldest {pending['oldest_request_time']})" if pending["count"] else ""
        half_life = f"{bp['half_life_s']:g}s" if bp["half_life_s"] else "none (decayed = mean)"
        override = " (blueprint override)" if bp["strategy_override"] else ""
        lines += [
            "",
            f"blueprint {bp_id}: strategy {bp['strategy']}{override} [{settings}]",
            f"  decisions {bp['decisions']} ({statuses or '-'}), pending {pending['count']}{oldest}, "
            f"held outcomes {bp['held_outcomes']}, half-life {half_life}",
        ]
        if bp["next_choice"]:
            lines.append(f"  next pick for the neutral request: {bp['next_choice']['reason']}")
        rows = [
            [
                s["seed_id"],
                str(s["seed_idx"]),
                str(s["pulls"]),
                str(s["selections"]),
                f"{s['share']:.1%}",
                _num(s["mean_reward"]),
                "-" if s["ci95"] is None else f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]",
                _num(s["decayed_mean"]),
                (s["last_selected"] or "-").split(".")[0].replace("T", " "),
                _num(s["score"], ".4g"),
                _num(s["probability"], ".3f"),
            ]
            for s in bp["seeds"]
        ]
        if rows:
            lines += _table(
                [
                    "seed",
                    "idx",
                    "pulls",
                    "selected",
                    "share",
                    "mean",
                    "95% CI",
                    "decayed",
                    "last selected (UTC)",
                    "score",
                    "prob",
                ],
                rows,
            )
        if any(s["measured"] for s in bp["seeds"]):
            rows = [
                [
                    s["seed_id"],
                    str(s["measured"]),
                    _num(s["success_rate"], ".1%"),
                    *(_mean_ci(s[name]) for name in RESOURCE_COLUMNS),
                ]
                for s in bp["seeds"]
            ]
            lines += ["  resources: means [95% CI] over the outcomes that reported them (measured)"]
            lines += _table(["seed", "measured", "success", *RESOURCE_COLUMNS.values()], rows)
        lines += [
            f"  {s['seed_id']}: not a candidate (its newest request: {s['note'] or 'not viable'})"
            for s in bp["seeds"]
            if not s["candidate"]
        ]
        lines += _apprentice_lines(bp["apprentice"])
        lines += _shadow_lines(bp["shadows"])
    out.write("\n".join(lines) + "\n")


def _apprentice_lines(ap: dict[str, Any] | None) -> list[str]:
    if ap is None:
        return []
    head = f"  apprentice: learner {ap['learner']}, baseline {ap['baseline']}: "
    took = ap["took_over"]
    if took:
        return [
            head + f"the learner took over at decision {took['decisions']} (SNIPS learner {took['learner']:.4g} vs "
            f"baseline {took['baseline']:.4g} on {took['n']} rewarded decisions, lower bound {took['lower']:.3g})"
        ]
    est = ap["estimates"]
    if est is None:
        return [head + "roles changed in the configuration: a new apprenticeship starts with the next decision"]
    if est["learner"] is None:
        return [head + f"following the baseline; no estimate yet ({est['n']} rewarded decisions)"]
    return [
        head + f"following the baseline; SNIPS learner {est['learner']:.4g} vs baseline {est['baseline']:.4g} on "
        f"{est['n']} rewarded decisions (needs {ap['min_decisions']}), difference {est['difference']:.3g} ± se "
        f"{est['se']:.2g}, lower bound {est['lower']:.3g} (takes over at {ap['margin']:g})"
    ]


def _shadow_lines(shadows: dict[str, Any] | None) -> list[str]:
    if not shadows:  # none recorded, or not read (see --shadows)
        return []

    def cell(e: dict[str, Any]) -> str:
        if e["ci95"] is None:
            return "-"
        return f"{e['value']:.4g} [{e['ci95'][0]:.4g}, {e['ci95'][1]:.4g}]" + "*" * bool(e["note"])

    rows = [
        [
            name,
            str(r["shadowed_decisions"]),
            f"{r['agreement']:.1%}",
            f"{r['mean_probability_of_live']:.3f}",
            cell(r["ips"]),
            cell(r["snips"]),
            cell(r["dr"]),
            f"{r['effective_sample_size']:.1f}",
            f"{r['off_support']} of {r['decisions']}",
        ]
        for name, r in shadows.items()
    ]
    lines = [
        "  live shadows: agreement with the live choice and value per decision on the decisions kept "
        "(95% intervals; *: model-based or not identifiable, see seedworker evaluate)"
    ]
    lines += _table(["shadow", "decisions", "agree", "p(live)", "IPS", "SNIPS", "DR", "ESS", "off support"], rows)
    return lines


# -- plot ----------------------------------------------------------------------------------------------------------
def rolling_share(seed_ids: list[str], window: int) -> tuple[list[str], np.ndarray]:
    """(distinct seeds by first appearance, shares): row t is each seed's share of decisions t-window+1..t."""
    names = list(dict.fromkeys(seed_ids))
    col = {s: j for j, s in enumerate(names)}
    hits = np.zeros((len(seed_ids) + 1, len(names)))
    hits[np.arange(1, len(seed_ids) + 1), [col[s] for s in seed_ids]] = 1.0
    cum = hits.cumsum(axis=0)
    t = np.arange(1, len(seed_ids) + 1)
    lo = np.maximum(t - window, 0)
    return names, (cum[t] - cum[lo]) / (t - lo)[:, None]


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    cum = np.concatenate([[0.0], np.cumsum(values)])
    t = np.arange(1, len(values) + 1)
    lo = np.maximum(t - window, 0)
    return (cum[t] - cum[lo]) / (t - lo)


def write_plot(history: list[HistoryRow], path: str | Path, *, max_blueprints: int = 4, max_seeds: int = 8) -> Path:
    """Selection share per seed (rolling) and reward over time, one column per blueprint (the busiest ones)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_bp: dict[str, list[HistoryRow]] = {}
    for d in history:
        by_bp.setdefault(d.blueprint_id, []).append(d)
    shown = sorted(by_bp, key=lambda b: (-len(by_bp[b]), b))[:max_blueprints]
    cols = max(len(shown), 1)
    fig = Figure(figsize=(6.5 * cols, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, cols, squeeze=False)
    title = "seedworker inspect: selection share and reward over time"
    if len(by_bp) > len(shown):
        title += f" ({len(shown)} busiest of {len(by_bp)} blueprints)"
    fig.suptitle(title, fontsize=11)
    if not shown:
        for ax in axes[:, 0]:
            ax.text(0.5, 0.5, "no decisions in this store", ha="center", va="center", transform=ax.transAxes)
    for c, bp_id in enumerate(shown):
        _plot_blueprint(axes[0, c], axes[1, c], bp_id, by_bp[bp_id], max_seeds)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    return path


def _plot_blueprint(ax_share, ax_reward, bp_id: str, decisions: list[HistoryRow], max_seeds: int) -> None:
    from matplotlib import colormaps

    n = len(decisions)
    window = min(200, max(10, n // 10))
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.seed_id] = counts.get(d.seed_id, 0) + 1
    top = sorted(counts, key=lambda s: (-counts[s], s))[:max_seeds]
    label = {s: s for s in top}
    seeds = [label.get(d.seed_id, "other seeds") for d in decisions]
    names, share = rolling_share(seeds, window)
    times = [datetime.fromtimestamp(d.request_time, UTC) for d in decisions]
    cmap = colormaps["tab10"]
    color = {s: cmap(k % 10) for k, s in enumerate(top)}
    color["other seeds"] = "grey"
    for j, s in sorted(enumerate(names), key=lambda js: (js[1] == "other seeds", js[1])):
        # Steps: a share holds until the next decision, so a quiet spell is flat, not a slope.
        ax_share.plot(times, share[:, j], label=s, color=color[s], linewidth=1.3, drawstyle="steps-post")
    ax_share.set_ylim(0, 1.02)
    ax_share.set_ylabel(f"share of the last {window} selections")
    ax_share.set_title(f"blueprint {bp_id}: {n} decisions", fontsize=10)
    ax_share.grid(alpha=0.3)
    ax_share.legend(fontsize=7, loc="upper left", ncols=2)

    # Rewards at the time they were observed (an expired decision's default reward at its request time).
    learned = sorted(
        (d.outcome_time if d.outcome_time is not None else d.request_time, d.reward, d.seed_id)
        for d in decisions
        if d.reward is not None
    )
    if learned:
        t = [datetime.fromtimestamp(x[0], UTC) for x in learned]
        r = np.array([x[1] for x in learned])
        ax_reward.scatter(t, r, s=8, alpha=0.5, c=[color.get(label.get(x[2], "other seeds")) for x in learned])
        w = min(200, max(10, len(r) // 10))
        ax_reward.plot(
            t,
            rolling_mean(r, w),
            color="black",
            linewidth=1.4,
            drawstyle="steps-post",
            label=f"mean of the last {w} rewards",
        )
        ax_reward.legend(fontsize=7, loc="upper left")
    else:
        ax_reward.text(0.5, 0.5, "no rewards yet", ha="center", va="center", transform=ax_reward.transAxes)
    ax_reward.set_ylabel("reward")
    ax_reward.set_xlabel("event time (UTC)")
    ax_reward.grid(alpha=0.3)
    for ax in (ax_share, ax_reward):
        ax.tick_params(axis="x", labelsize=7, labelrotation=20)
