"""The store's write of one batch: what a decision and its resolutions in one batch leave."""

from __future__ import annotations

from datetime import UTC, datetime

from seedworker.contract import events as ev
from seedworker.core.join import HeldOutcome, Resolution
from seedworker.store.rows import Batch, DecisionRow
from seedworker.store.store import Store


def _row(did: str) -> DecisionRow:
    return DecisionRow(did, f"req-{did}", "bp", "s0", 0, "ucb", 0.5, 0, 1, 10.0, b"{}", 0)


async def test_resolutions_in_the_batch_of_their_decision_are_what_updates_would_leave():
    store = await Store(":memory:").open()
    try:
        old = _row("old")._replace(seed_id="kept")
        await store.write(Batch(decisions=[old]))
        b = Batch(
            # "old" again (ignored: the stored row stays), "a" resolved twice (the last wins) and written twice,
            # "b" pending between them (read back in write order), and a resolution of an earlier batch's decision
            decisions=[old._replace(seed_id="other"), _row("a"), _row("b"), _row("a")],
            resolutions=[
                Resolution("a", "expired", None, None),
                Resolution("old", "learned", 0.5, 20.0),
                Resolution("a", "replaced", 0.25, 30.0),
            ],
        )
        await store.write(b)
        got = {d.row.decision_id: (d.row.seed_id, d.status, d.reward, d.outcome_time) for d in await store.decisions()}
        assert got == {
            "old": ("kept", "learned", 0.5, 20.0),
            "a": ("s0", "replaced", 0.25, 30.0),
            "b": ("s0", "pending", None, None),
        }
        assert [d.row.decision_id for d in await store.decisions()] == ["old", "a", "b"]  # as written
        assert [did for did, _p, _q in await store.pending_decisions()] == ["b"]
        await store.write(Batch(resolutions=[Resolution("b", "learned", 0.1, 40.0)]))
        assert await store.pending_decisions() == []
    finally:
        await store.close()


async def test_an_outcome_released_and_held_again_in_one_batch_stays_held(tmp_path):
    """Holds are written before releases (in the store and in the changelog): a release in the same batch as a
    later hold of the same outcome must not delete it."""
    o = ev.AdaptationOutcome(
        request_id="r",
        blueprint_id="bp",
        seed_id="s0",
        accuracy_delta=0.1,
        occurred_at=datetime.fromtimestamp(5.0, UTC),
    )
    store = await Store(tmp_path / "s.sqlite").open()
    try:
        await store.write(Batch(held=[HeldOutcome(o, 0, 5.0, 3)]))
        b = Batch()
        b.release(o.event_id, 0)
        b.hold(HeldOutcome(o, 0, 5.0, 3))
        assert b.released == [] and not b.released_from
        await store.write(b)
        assert [row[0] for row in await store.held_outcomes()] == [o.event_id]
        # Held, then released, in one batch: gone.
        b = Batch()
        b.hold(HeldOutcome(o, 0, 5.0, 3))
        b.release(o.event_id, 0)
        await store.write(b)
        assert await store.held_outcomes() == []
    finally:
        await store.close()
