"""The collector settings of the worker process (seedworker.ops.collector): young collections less often, and what
is alive once the worker is ready frozen out of full collections. Applied by ``seedworker run`` only."""

from __future__ import annotations

import asyncio
import gc

from seedworker.ops import collector


async def test_tune_sets_the_thresholds_and_freezing_waits_for_ready():
    before = gc.get_threshold()
    start = gc.get_freeze_count()
    try:
        collector.tune()
        assert gc.get_threshold() == collector.THRESHOLDS
        ready = asyncio.Event()
        seen: list[int] = []

        async def main() -> str:
            await asyncio.sleep(0.01)
            seen.append(gc.get_freeze_count())  # not ready yet: nothing frozen
            ready.set()
            await asyncio.sleep(0.01)
            seen.append(gc.get_freeze_count())
            return "done"

        assert await collector.freezing(ready, main()) == "done"
        assert seen[0] == start and seen[1] > start
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_freezing_never_freezes_when_the_worker_never_gets_ready():
    start = gc.get_freeze_count()

    async def main() -> None:
        await asyncio.sleep(0.01)

    await collector.freezing(asyncio.Event(), main())
    await asyncio.sleep(0.01)  # the waiter was cancelled with main's end
    assert gc.get_freeze_count() == start
