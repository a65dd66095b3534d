"""W1 peer pipeline: ints -> double -> 8 workers that checkpoint once -> batch(100, 1.0) -> sum."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import trio

from ._common import (
    BUF,
    aio_checkpoint,
    double,
    run_slurry_pipeline,
    slurry_sections,
    trio_checkpoint,
)

TITLE = "W1 peer pipeline"
DESCRIPTION = (
    "{n} ints -> process(x*2) -> process(n=8) of an async function that checkpoints once "
    "-> batch(100, 1.0) -> a sink that sums"
)
METRIC = "time"
SIZES = {"default": {"n": 200_000}, "quick": {"n": 2_000}}
#: slow peers run fewer items in the default run (throughput is compared); see the docs
PEER_SIZES = {
    "trio": {"n": 50_000},
    "slurry": {"n": 50_000},
    "aiostream": {"n": 50_000},
    "pypeln": {"n": 25_000},
}
WORKERS = 8
SIZE = 100
TIMEOUT = 1.0


def expected(p: dict[str, Any]) -> dict[str, int]:
    n = p["n"]
    return {"sum": n * (n - 1), "count": n}


def run_trioflow(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    total = {"sum": 0, "count": 0}

    async def acc(batch: list[int]) -> None:
        total["sum"] += sum(batch)
        total["count"] += len(batch)

    pipeline = (
        tf.from_iterable(range(p["n"]))
        | tf.process(double)
        | tf.process(trio_checkpoint, n=WORKERS)
        | tf.batch(SIZE, TIMEOUT)
        | tf.sink(acc)
    )
    trio.run(pipeline.run)
    return total


async def _trio_batcher(
    recv: trio.MemoryReceiveChannel[int], send: trio.MemorySendChannel[list[int]]
) -> None:
    async with recv, send:
        batch: list[int] = []
        deadline = math.inf
        while True:
            with trio.move_on_at(deadline):
                try:
                    item = await recv.receive()
                except trio.EndOfChannel:
                    break
                if not batch:
                    deadline = trio.current_time() + TIMEOUT
                batch.append(item)
                if len(batch) < SIZE:
                    continue
            if batch:  # full, or its timeout passed
                await send.send(batch)
                batch, deadline = [], math.inf
        if batch:
            await send.send(batch)


def run_trio(p: dict[str, Any]) -> dict[str, Any]:
    total = {"sum": 0, "count": 0}

    async def main() -> None:
        s1, r1 = trio.open_memory_channel[int](BUF)
        s2, r2 = trio.open_memory_channel[int](BUF)
        s3, r3 = trio.open_memory_channel[int](BUF)
        s4, r4 = trio.open_memory_channel[list[int]](BUF)

        async def source() -> None:
            async with s1:
                for i in range(p["n"]):
                    await s1.send(i)

        async def doubler() -> None:
            async with r1, s2:
                async for x in r1:
                    await s2.send(await double(x))

        async def worker(r: trio.MemoryReceiveChannel[int], s: trio.MemorySendChannel[int]) -> None:
            async with r, s:
                async for x in r:
                    await s.send(await trio_checkpoint(x))

        async def sink() -> None:
            async with r4:
                async for batch in r4:
                    total["sum"] += sum(batch)
                    total["count"] += len(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(source)
            nursery.start_soon(doubler)
            async with r2, s3:
                for _ in range(WORKERS):
                    nursery.start_soon(worker, r2.clone(), s3.clone())
            nursery.start_soon(_trio_batcher, r3, s4)
            nursery.start_soon(sink)

    trio.run(main)
    return total


def run_asyncio(p: dict[str, Any]) -> dict[str, Any]:
    total = {"sum": 0, "count": 0}
    end = object()

    async def main() -> None:
        q1: asyncio.Queue[Any] = asyncio.Queue(BUF)
        q2: asyncio.Queue[Any] = asyncio.Queue(BUF)
        q3: asyncio.Queue[Any] = asyncio.Queue(BUF)
        q4: asyncio.Queue[Any] = asyncio.Queue(BUF)

        async def source() -> None:
            for i in range(p["n"]):
                await q1.put(i)
            await q1.put(end)

        async def doubler() -> None:
            while (x := await q1.get()) is not end:
                await q2.put(await double(x))
            for _ in range(WORKERS):
                await q2.put(end)

        async def worker() -> None:
            while (x := await q2.get()) is not end:
                await q3.put(await aio_checkpoint(x))
            await q3.put(end)

        async def batcher() -> None:
            loop = asyncio.get_running_loop()
            batch: list[int] = []
            deadline = None
            ended = 0
            while ended < WORKERS:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await q3.get()
                except TimeoutError:
                    await q4.put(batch)
                    batch, deadline = [], None
                    continue
                if item is end:
                    ended += 1
                    continue
                if not batch:
                    deadline = loop.time() + TIMEOUT
                batch.append(item)
                if len(batch) >= SIZE:
                    await q4.put(batch)
                    batch, deadline = [], None
            if batch:
                await q4.put(batch)
            await q4.put(end)

        async def sink() -> None:
            while (batch := await q4.get()) is not end:
                total["sum"] += sum(batch)
                total["count"] += len(batch)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(source())
            tg.create_task(doubler())
            for _ in range(WORKERS):
                tg.create_task(worker())
            tg.create_task(batcher())
            tg.create_task(sink())

    asyncio.run(main())
    return total


def run_slurry(p: dict[str, Any]) -> dict[str, Any]:
    from slurry.sections import Group

    async_map, _ = slurry_sections()
    sections = (
        async_map(double),
        async_map(trio_checkpoint, WORKERS),
        Group(TIMEOUT, max_size=SIZE),
    )
    return run_slurry_pipeline(p["n"], *sections, batched=True)


def run_aiostream(p: dict[str, Any]) -> dict[str, Any]:
    from aiostream import pipe, stream

    total = {"sum": 0, "count": 0}

    async def main() -> None:
        xs = (
            stream.iterate(range(p["n"]))
            | pipe.map(double, task_limit=1)
            | pipe.map(aio_checkpoint, task_limit=WORKERS)
            | pipe.chunks(SIZE)  # no timeout in aiostream's chunks
        )
        async with xs.stream() as batches:
            async for batch in batches:
                total["sum"] += sum(batch)
                total["count"] += len(batch)

    asyncio.run(main())
    return total


def run_pypeln(p: dict[str, Any]) -> dict[str, Any]:
    import pypeln as pl

    total = {"sum": 0, "count": 0}

    async def main() -> None:
        stage = pl.task.map(double, range(p["n"]), workers=1, maxsize=BUF)
        stage = pl.task.map(aio_checkpoint, stage, workers=WORKERS, maxsize=BUF)
        batch: list[int] = []  # pypeln has no batch stage: batch in the consumer
        async for x in stage:
            batch.append(x)
            if len(batch) >= SIZE:
                total["sum"] += sum(batch)
                total["count"] += len(batch)
                batch = []
        total["sum"] += sum(batch)
        total["count"] += len(batch)

    asyncio.run(main())
    return total


def _sequential(p: dict[str, Any], tasks: int) -> dict[str, Any]:
    """``tasks`` tasks, each awaiting the same functions in a loop over every ``tasks``-th item
    (each item pays its checkpoint), batching by ``SIZE`` and awaiting the sink per batch."""
    total = {"sum": 0, "count": 0}

    async def acc(batch: list[int]) -> None:
        total["sum"] += sum(batch)
        total["count"] += len(batch)

    async def loop(start: int) -> None:
        batch: list[int] = []
        for i in range(start, p["n"], tasks):
            batch.append(await trio_checkpoint(await double(i)))
            if len(batch) >= SIZE:
                await acc(batch)
                batch = []
        if batch:
            await acc(batch)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for start in range(tasks):
                nursery.start_soon(loop, start)

    trio.run(main)
    return total


def run_sequential(p: dict[str, Any]) -> dict[str, Any]:
    """The limit: one task awaiting the same functions in a loop (each item pays its checkpoint)."""
    return _sequential(p, 1)


def run_sequential_pool(p: dict[str, Any]) -> dict[str, Any]:
    """8 tasks, each the sequential loop over every 8th item: the pool's shape, no hand-over.

    A checkpoint of one task alone costs a whole pass of trio's run loop (2.5-2.7 us here); eight
    tasks checkpointing share a pass (about 1.5 us each). This row shows how much of the
    sequential loop's per-item cost is that pass, which a pool of 8 does not pay in full.
    """
    return _sequential(p, WORKERS)


IMPLS = {
    "trioflow": run_trioflow,
    "trio": run_trio,
    "asyncio": run_asyncio,
    "slurry": run_slurry,
    "aiostream": run_aiostream,
    "pypeln": run_pypeln,
    "sequential": run_sequential,
    "sequential-8": run_sequential_pool,
}
NOTES = {
    "slurry": "n=8 workers as a TrioSection subclass (slurry's Map is sync and serial); "
    "batch is Group(1.0, max_size=100)",
    "aiostream": "asyncio; batch is chunks(100), which has no timeout",
    "pypeln": "pypeln.task (asyncio); no batch stage, so the consumer batches",
    "sequential": "one task awaiting the same functions in a loop, no channels (the figure's "
    "baseline; every item still pays its checkpoint)",
    "sequential-8": "8 tasks, each that loop over every 8th item (no channels): the "
    "checkpoints of 8 tasks share trio's scheduler passes, so this is above the one-task loop",
}
SKIPPED: dict[str, str] = {}
