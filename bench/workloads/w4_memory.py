"""W4 memory: an endless fast source into a slower sink; RSS after 100k and after 5M items.

The sink does a little work per item and checkpoints every 64 items (so it is slower than the
source, which does nothing but count); it stops the run after ``n_large`` items. Memory is read
in the same process at ``n_small`` and at ``n_large`` items.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import trio

from ._common import BUF, peak_rss_kb, rss_kb

TITLE = "W4 memory"
DESCRIPTION = (
    "endless fast source -> slower sink; peak RSS after {n_small} and after {n_large} items"
)
METRIC = "memory"
SIZES = {
    "default": {"n_small": 100_000, "n_large": 5_000_000},
    "quick": {"n_small": 2_000, "n_large": 20_000},
}
#: the hand-written peers are slower; they show the baseline on fewer items
PEER_SIZES = {
    "trio": {"n_small": 100_000, "n_large": 500_000},
    "asyncio": {"n_small": 100_000, "n_large": 2_000_000},
}
YIELD_EVERY = 64


def expected(p: dict[str, Any]) -> dict[str, int]:
    n = p["n_large"]
    return {"sum": n * (n - 1) // 2, "count": n}


class _Sink:
    """Counts and sums the first ``n_large`` items and reads memory at the two marks."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.n_small = p["n_small"]
        self.n_large = p["n_large"]
        self.sum = 0
        self.count = 0
        self.work = 0
        self.marks: dict[str, int] = {}

    def take(self, x: int) -> bool:
        """Account for ``x``; True once ``n_large`` items were taken."""
        if self.count >= self.n_large:
            return True
        self.sum += x
        self.count += 1
        # a little per-item work: the sink is slower than the source
        self.work ^= x * 7 + 3
        if self.count == self.n_small:
            self.marks["rss_small_kb"] = rss_kb()
            self.marks["peak_small_kb"] = peak_rss_kb()
        if self.count == self.n_large:
            self.marks["rss_large_kb"] = rss_kb()
            self.marks["peak_large_kb"] = peak_rss_kb()
            return True
        return False

    def result(self) -> dict[str, Any]:
        return {"sum": self.sum, "count": self.count, **self.marks}


def run_trioflow(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    state = _Sink(p)

    async def main() -> None:
        stop = trio.Event()

        async def slow_sink(x: int) -> None:
            if state.take(x):
                stop.set()
            if state.count % YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()

        pipeline = tf.from_iterable(itertools.count()) | tf.sink(slow_sink)
        await pipeline.run(stop=stop)

    trio.run(main)
    return state.result()


def run_trio(p: dict[str, Any]) -> dict[str, Any]:
    state = _Sink(p)

    async def main() -> None:
        send, recv = trio.open_memory_channel[int](BUF)

        async def source() -> None:
            async with send:
                for i in itertools.count():
                    await send.send(i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(source)
            async with recv:
                async for x in recv:
                    if state.take(x):
                        break
                    if state.count % YIELD_EVERY == 0:
                        await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()

    trio.run(main)
    return state.result()


def run_asyncio(p: dict[str, Any]) -> dict[str, Any]:
    state = _Sink(p)

    async def main() -> None:
        q: asyncio.Queue[int] = asyncio.Queue(BUF)

        async def source() -> None:
            for i in itertools.count():
                await q.put(i)

        task = asyncio.create_task(source())
        while True:
            x = await q.get()
            if state.take(x):
                break
            if state.count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return state.result()


IMPLS = {
    "trioflow": run_trioflow,
    "trio": run_trio,
    "asyncio": run_asyncio,
}
NOTES = {
    "trio": "one bounded memory channel (256)",
    "asyncio": "one bounded asyncio.Queue (256)",
}
SKIPPED = {
    "slurry": "W4 checks trioflow's own bound; the hand-written peers show the baseline "
    "(the other peers are left out to keep the suite short)",
    "aiostream": "as slurry",
    "pypeln": "as slurry",
    "sequential": "no queue: nothing to bound",
}
