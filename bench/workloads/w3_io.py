"""W3 I/O-bound: process(n=100) of a function that sleeps 1 ms.

Besides the ratio to the hand-written trio pool, every run is set against its own *ceiling*:
100 workers each sleeping one ``sleep(0.001)`` per item can deliver at most
``100 / (how long one such sleep takes)`` items per second. :func:`probe` measures that duration
in the same child process (trio's sleep for the trio implementations, asyncio's for the asyncio
ones), before and after the run, outside the clock; the runner reports ``of_ceiling``
(throughput / ceiling) per run.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

import trio

from ._common import (
    BUF,
    aio_sleep_1ms,
    run_slurry_pipeline,
    sleep_duration_s,
    slurry_sections,
    trio_sleep_1ms,
)

TITLE = "W3 I/O-bound"
DESCRIPTION = "{n} ints -> process(n=100) of a function that sleeps 1 ms -> a sink that sums"
METRIC = "time"
SIZES = {"default": {"n": 20_000}, "quick": {"n": 500}}
WORKERS = 100
SLEEP = 0.001
#: sleeps per probe reading (two readings per run: about 0.45 s)
PROBE_SLEEPS = 200
#: the implementations that run on asyncio (their ceiling is asyncio's 1 ms sleep)
ASYNCIO_IMPLS = frozenset({"asyncio", "aiostream", "pypeln"})


def probe(impl: str) -> dict[str, float]:
    """How long one 1 ms sleep takes in this process, on the implementation's event loop."""
    loop = "asyncio" if impl in ASYNCIO_IMPLS else "trio"
    return {"sleep_s": sleep_duration_s(loop, SLEEP, PROBE_SLEEPS)}


def ceiling(measured: dict[str, float]) -> float:
    """Items/s that ``WORKERS`` workers reach if each item costs exactly one measured sleep."""
    return WORKERS / measured["sleep_s"]


class TimedSleep:
    """The workload's function, timing each of its sleeps as the workers experience them.

    ``in_run_s()`` is the mean time one 1 ms sleep took *during the run*: under load a sleep
    wakes later than on an idle loop, and ``100 / in_run_s()`` is then what 100 slots busy
    sleeping all the time would deliver. Throughput over that is the share of the time the
    pool's slots were in a call (the pool's own overhead between calls is the rest).
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.calls = 0

    async def __call__(self, x: int) -> int:
        started = perf_counter()
        await trio.sleep(SLEEP)
        self.total += perf_counter() - started
        self.calls += 1
        return x

    def in_run_s(self) -> float:
        return self.total / self.calls if self.calls else float("nan")


def expected(p: dict[str, Any]) -> dict[str, int]:
    n = p["n"]
    return {"sum": n * (n - 1) // 2, "count": n}


def run_trioflow(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    total = {"sum": 0, "count": 0}

    async def acc(x: int) -> None:
        total["sum"] += x
        total["count"] += 1

    io = TimedSleep()
    pipeline = tf.from_iterable(range(p["n"])) | tf.process(io, n=WORKERS) | tf.sink(acc)
    trio.run(pipeline.run)
    return {**total, "sleep_in_run_s": io.in_run_s()}


def run_trio(p: dict[str, Any]) -> dict[str, Any]:
    """A worker pool of 100 tasks between two memory channels."""
    total = {"sum": 0, "count": 0}

    async def main() -> None:
        s1, r1 = trio.open_memory_channel[int](BUF)
        s2, r2 = trio.open_memory_channel[int](BUF)

        async def source() -> None:
            async with s1:
                for i in range(p["n"]):
                    await s1.send(i)

        async def worker(r: trio.MemoryReceiveChannel[int], s: trio.MemorySendChannel[int]) -> None:
            async with r, s:
                async for x in r:
                    await s.send(await trio_sleep_1ms(x))

        async def sink() -> None:
            async with r2:
                async for x in r2:
                    total["sum"] += x
                    total["count"] += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(source)
            async with r1, s2:
                for _ in range(WORKERS):
                    nursery.start_soon(worker, r1.clone(), s2.clone())
            nursery.start_soon(sink)

    trio.run(main)
    return total


def run_asyncio(p: dict[str, Any]) -> dict[str, Any]:
    total = {"sum": 0, "count": 0}
    end = object()

    async def main() -> None:
        q1: asyncio.Queue[Any] = asyncio.Queue(BUF)
        q2: asyncio.Queue[Any] = asyncio.Queue(BUF)

        async def source() -> None:
            for i in range(p["n"]):
                await q1.put(i)
            for _ in range(WORKERS):
                await q1.put(end)

        async def worker() -> None:
            while (x := await q1.get()) is not end:
                await q2.put(await aio_sleep_1ms(x))
            await q2.put(end)

        async def sink() -> None:
            ended = 0
            while ended < WORKERS:
                x = await q2.get()
                if x is end:
                    ended += 1
                    continue
                total["sum"] += x
                total["count"] += 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(source())
            for _ in range(WORKERS):
                tg.create_task(worker())
            tg.create_task(sink())

    asyncio.run(main())
    return total


def run_slurry(p: dict[str, Any]) -> dict[str, Any]:
    async_map, _ = slurry_sections()
    return run_slurry_pipeline(p["n"], async_map(trio_sleep_1ms, WORKERS))


def run_aiostream(p: dict[str, Any]) -> dict[str, Any]:
    from aiostream import pipe, stream

    total = {"sum": 0, "count": 0}

    async def main() -> None:
        xs = stream.iterate(range(p["n"])) | pipe.map(
            aio_sleep_1ms, task_limit=WORKERS, ordered=False
        )
        async with xs.stream() as out:
            async for x in out:
                total["sum"] += x
                total["count"] += 1

    asyncio.run(main())
    return total


def run_pypeln(p: dict[str, Any]) -> dict[str, Any]:
    import pypeln as pl

    total = {"sum": 0, "count": 0}

    async def main() -> None:
        stage = pl.task.map(aio_sleep_1ms, range(p["n"]), workers=WORKERS, maxsize=BUF)
        async for x in stage:
            total["sum"] += x
            total["count"] += 1

    asyncio.run(main())
    return total


def run_sleepers(p: dict[str, Any]) -> dict[str, Any]:
    """100 tasks, each awaiting the function in a loop over every 100th item (no channels).

    The pool's shape on trio's timers with nothing in between: what trio itself delivers against
    the same ceiling (as W1's ``sequential-8``).
    """
    total = {"sum": 0, "count": 0}

    io = TimedSleep()

    async def loop(start: int) -> None:
        for i in range(start, p["n"], WORKERS):
            x = await io(i)
            total["sum"] += x
            total["count"] += 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for start in range(WORKERS):
                nursery.start_soon(loop, start)

    trio.run(main)
    return {**total, "sleep_in_run_s": io.in_run_s()}


IMPLS = {
    "trioflow": run_trioflow,
    "trio": run_trio,
    "asyncio": run_asyncio,
    "slurry": run_slurry,
    "aiostream": run_aiostream,
    "pypeln": run_pypeln,
    "trio-sleepers": run_sleepers,
}
NOTES = {
    "trio": "a worker pool of 100 tasks between two memory channels",
    "slurry": "100 workers in a TrioSection",
    "aiostream": "asyncio; map(task_limit=100, ordered=False)",
    "pypeln": "pypeln.task (asyncio), workers=100",
    "trio-sleepers": "100 tasks each sleeping per item over every 100th item, no channels: "
    "trio's own timers against the same ceiling (a sleep in a busy pool wakes later than a "
    "lone one: epoll rounds its timeout up to whole milliseconds)",
}
SKIPPED = {
    "sequential": "no concurrency: it would take n x 1 ms (20 s); the limit with 100 workers "
    "is the ceiling column (100 / the measured duration of one 1 ms sleep)",
}
