"""The changelog's records and their fold, without a broker (the real-broker cases: tests/test_changelog_kafka.py)."""

from __future__ import annotations

import orjson
import pytest

from seedworker.contract import events as ev
from seedworker.core.join import Resolution
from seedworker.core.selector import SeedSelector
from seedworker.store import changelog
from seedworker.store.rows import Batch, BlueprintRow, DecisionRow, dump_state


def _selected(i: int) -> tuple[ev.SeedSelected, bytes]:
    sel = SeedSelector()
    seeds = [{"seed_id": f"s{j}", "seed_idx": j} for j in range(3)]
    s = sel.select({"request_id": f"r{i}", "blueprint_id": "bp", "seeds": seeds, "context": {"urgency": 0.5}})
    return s, ev.encode(s)


def _records(b: Batch) -> list[tuple[bytes | None, bytes | None]]:
    rows = changelog.batch_records("cl", b, "w", ("rq", "oc"), {("rq", 0): 3, ("oc", 0): 1})
    return [(r.key, r.value) for r in rows]


def test_the_fold_keeps_a_state_as_written_and_decisions_as_a_full_decode_reads_them():
    sel = SeedSelector()
    sel.select({"request_id": "r", "blueprint_id": "bp", "seeds": [{"seed_id": "a", "seed_idx": 0}]})
    state = dump_state(sel.blueprints["bp"].to_dict())
    b = Batch(blueprints={"bp": BlueprintRow(state, 7, 0)}, offsets={("rq", 0): 3})
    made = [_selected(i) for i in range(3)]
    b.decisions = [DecisionRow.of(s, payload, 0) for s, payload in made]
    b.resolutions = [Resolution(made[0][0].decision_id, "learned", 0.25, 12.5, 0)]
    folded = changelog.fold(0, _records(b))
    assert folded.blueprints == {"bp": BlueprintRow(state, 7, 0)}
    assert folded.blueprints["bp"].state == state  # the very bytes
    got = {d.row.decision_id: d for d in folded.decisions}
    for s, payload in made:
        full = DecisionRow.of(ev.decode(payload, ev.SEED_SELECTED), payload, 0)  # type: ignore[arg-type]
        assert got[s.decision_id].row == full
        assert [type(v) for v in got[s.decision_id].row] == [type(v) for v in full]
    assert (got[made[0][0].decision_id].status, got[made[1][0].decision_id].status) == ("learned", "pending")


@pytest.mark.parametrize(
    "value",
    [
        b'{"version": 7, "state": {"x": [1, 2.5]}}',
        b'{"state": {"x": [1, 2.5]}, "version": 7 }',
        b'{"state":{"x":[1,2.5]},"version":7}',
    ],
)
def test_a_blueprint_value_in_another_layout_is_parsed(value):
    folded = changelog.fold(0, [(b"b:bp", value), (b"o", orjson.dumps({"requests": 1, "outcomes": 0}))])
    row = folded.blueprints["bp"]
    assert (orjson.loads(row.state), row.version) == ({"x": [1, 2.5]}, 7)


def test_a_decision_payload_the_columns_refuse_raises_the_full_decoders_error():
    s, payload = _selected(0)
    bad = orjson.dumps({**orjson.loads(payload), "propensity": 0})
    with pytest.raises(ev.EventError, match="propensity"):
        changelog.fold(0, [(b"d:" + s.decision_id.encode(), orjson.dumps({"payload": bad.decode()}))])
