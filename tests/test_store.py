"""The store's write of one batch: what a decision and its resolutions in one batch leave."""

from __future__ import annotations

from seedworker.core.join import Resolution
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
