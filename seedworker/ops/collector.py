"""CPython's cyclic garbage collector, set for a long-running worker process (``seedworker run``).

With the defaults (a young collection every 700 net allocations of container objects, older ones every 10) the
collector took about 40% of the worker's CPU (in-process on the memory bus, 2026-12-06: 429 µs per event with the
defaults, 242 with the collector off, 345 with the settings below): every decision allocates its request, its event
and their models, and the collections keep scanning what the worker holds for long (blueprint states, pending
decisions, the duplicate window), although the worker makes almost no cyclic garbage in steady state (counted the
same day: none per decision; the cycles a run leaves are whole retired workers and selectors). Through a real
broker, back to back, see README "Speed work of 2026-12-06".

So: collect young objects every ``THRESHOLDS[0]`` allocations instead, older generations more rarely, and once the
worker is ready (its state restored) move everything alive to the permanent generation (``gc.freeze``), which
full collections skip. Cyclic garbage is still collected, later; frozen objects are still freed by reference
counting when they are dropped. A library embedding the worker in its own process keeps its own settings: this is
only applied by the process entry points.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

THRESHOLDS = (20_000, 20, 20)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)


async def freezing(ready: asyncio.Event, main: Awaitable[T]) -> T:
    """Run ``main``; once ``ready`` is set, collect once and freeze what is alive (see the module docstring)."""

    async def freeze() -> None:
        await ready.wait()
        gc.collect()
        gc.freeze()

    waiter = asyncio.create_task(freeze())
    try:
        return await main
    finally:
        waiter.cancel()
