"""W2 pure transforms: ints through three async functions that do not suspend, then a sink."""

from __future__ import annotations

import asyncio
from typing import Any

import trio

from ._common import BUF, dec, inc, run_slurry_pipeline, slurry_sections, triple, w2_expected

TITLE = "W2 pure transforms"
DESCRIPTION = "{n} ints -> three async functions that do not suspend -> a sink that sums"
METRIC = "time"
SIZES = {"default": {"n": 1_000_000}, "quick": {"n": 5_000}}
#: slow peers run fewer items in the default run (throughput is compared); see the docs
PEER_SIZES = {
    "trio": {"n": 100_000},
    "slurry": {"n": 50_000},
    "aiostream": {"n": 100_000},
    "pypeln": {"n": 20_000},
}
STAGES = (inc, triple, dec)


def expected(p: dict[str, Any]) -> dict[str, int]:
    return w2_expected(p["n"])


def trioflow_pipeline(source: Any, total: dict[str, int]) -> Any:
    """``source | inc | triple | dec | sink``: shared with W6."""
    import trioflow as tf

    async def acc(x: int) -> None:
        total["sum"] += x
        total["count"] += 1

    return source | inc | triple | dec | tf.sink(acc)


def run_trioflow(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    total = {"sum": 0, "count": 0}
    trio.run(trioflow_pipeline(tf.from_iterable(range(p["n"])), total).run)
    return total


async def trio_pipeline(n: int, total: dict[str, int]) -> None:
    """The hand-written trio version of W2 (a task per stage, memory channels): shared with W7."""
    channels = [trio.open_memory_channel[int](BUF) for _ in range(len(STAGES) + 1)]

    async def source(s: trio.MemorySendChannel[int]) -> None:
        async with s:
            for i in range(n):
                await s.send(i)

    async def stage(
        fn: Any, r: trio.MemoryReceiveChannel[int], s: trio.MemorySendChannel[int]
    ) -> None:
        async with r, s:
            async for x in r:
                await s.send(await fn(x))

    async def sink(r: trio.MemoryReceiveChannel[int]) -> None:
        async with r:
            async for x in r:
                total["sum"] += x
                total["count"] += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(source, channels[0][0])
        for fn, (_, r), (s, _) in zip(STAGES, channels, channels[1:], strict=False):
            nursery.start_soon(stage, fn, r, s)
        nursery.start_soon(sink, channels[-1][1])


def run_trio(p: dict[str, Any]) -> dict[str, Any]:
    total = {"sum": 0, "count": 0}
    trio.run(trio_pipeline, p["n"], total)
    return total


def run_asyncio(p: dict[str, Any]) -> dict[str, Any]:
    total = {"sum": 0, "count": 0}
    end = object()

    async def main() -> None:
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue(BUF) for _ in range(len(STAGES) + 1)]

        async def source(q: asyncio.Queue[Any]) -> None:
            for i in range(p["n"]):
                await q.put(i)
            await q.put(end)

        async def stage(fn: Any, qi: asyncio.Queue[Any], qo: asyncio.Queue[Any]) -> None:
            while (x := await qi.get()) is not end:
                await qo.put(await fn(x))
            await qo.put(end)

        async def sink(q: asyncio.Queue[Any]) -> None:
            while (x := await q.get()) is not end:
                total["sum"] += x
                total["count"] += 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(source(queues[0]))
            for fn, qi, qo in zip(STAGES, queues, queues[1:], strict=False):
                tg.create_task(stage(fn, qi, qo))
            tg.create_task(sink(queues[-1]))

    asyncio.run(main())
    return total


def run_slurry(p: dict[str, Any]) -> dict[str, Any]:
    async_map, _ = slurry_sections()
    return run_slurry_pipeline(p["n"], *(async_map(fn) for fn in STAGES))


def run_aiostream(p: dict[str, Any]) -> dict[str, Any]:
    from aiostream import pipe, stream

    total = {"sum": 0, "count": 0}

    async def main() -> None:
        xs = stream.iterate(range(p["n"]))
        for fn in STAGES:
            xs = xs | pipe.map(fn, task_limit=1)
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
        stage: Any = range(p["n"])
        for fn in STAGES:
            stage = pl.task.map(fn, stage, workers=1, maxsize=BUF)
        async for x in stage:
            total["sum"] += x
            total["count"] += 1

    asyncio.run(main())
    return total


def run_sequential(p: dict[str, Any]) -> dict[str, Any]:
    """The limit: one task awaiting the same functions in a loop, the sink's included."""
    total = {"sum": 0, "count": 0}

    async def acc(x: int) -> None:  # the same sink function as trioflow's pipeline
        total["sum"] += x
        total["count"] += 1

    async def main() -> None:
        for i in range(p["n"]):
            await acc(await dec(await triple(await inc(i))))

    trio.run(main)
    return total


IMPLS = {
    "trioflow": run_trioflow,
    "trio": run_trio,
    "asyncio": run_asyncio,
    "slurry": run_slurry,
    "aiostream": run_aiostream,
    "pypeln": run_pypeln,
    "sequential": run_sequential,
}
NOTES = {
    "slurry": "each stage a TrioSection awaiting the function (slurry's Map is sync)",
    "aiostream": "asyncio; map(task_limit=1) per stage",
    "pypeln": "pypeln.task (asyncio), workers=1 per stage",
    "sequential": "one task awaiting the same four functions in a loop (the sink's too)",
}
SKIPPED: dict[str, str] = {}
