"""W5 latency: 1k items/s offered through a 3-stage pipeline without batching.

The source sleeps until each item's scheduled time (real clock, ``rate`` items per second) and
stamps it; the sink reads the clock again. Latency is end to end, per item.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import trio

from ._common import BUF, dec, inc, slurry_sections, triple

TITLE = "W5 latency"
DESCRIPTION = "{n} items offered at {rate}/s -> three async stages -> sink; per-item latency"
METRIC = "latency"
SIZES = {"default": {"n": 2_000, "rate": 1000}, "quick": {"n": 200, "rate": 1000}}
STAGES = (inc, triple, dec)


def expected(p: dict[str, Any]) -> dict[str, int]:
    n = p["n"]
    return {"sum": sum(3 * (i + 1) - 1 for i in range(n)), "count": n}


class _Clock:
    """Schedules and stamps items at the source; records latency at the sink."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.n = p["n"]
        self.period = 1.0 / p["rate"]
        self.sent = [0.0] * self.n
        self.latency: list[float] = []
        self.sum = 0
        self.t0 = 0.0

    def due(self, i: int) -> float:
        """Seconds to wait before offering item ``i`` (negative: late)."""
        if i == 0:
            self.t0 = time.perf_counter()
        return self.t0 + i * self.period - time.perf_counter()

    def stamp(self, i: int) -> int:
        self.sent[i] = time.perf_counter()
        return i

    def arrive(self, i: int, value: int) -> None:
        self.latency.append(time.perf_counter() - self.sent[i])
        self.sum += value

    def result(self) -> dict[str, Any]:
        lat = sorted(self.latency)
        k = len(lat)

        def q(f: float) -> float:
            return lat[min(k - 1, int(f * k))] * 1e3 if lat else float("nan")

        return {
            "sum": self.sum,
            "count": k,
            "p50_ms": q(0.50),
            "p99_ms": q(0.99),
            "max_ms": lat[-1] * 1e3 if lat else float("nan"),
        }


# Items are (index, value) pairs so the sink can find the stamp; the stages map the value.


def _lift(fn: Any) -> Any:
    async def lifted(item: tuple[int, int]) -> tuple[int, int]:
        return item[0], await fn(item[1])

    return lifted


LIFTED = tuple(_lift(fn) for fn in STAGES)


async def _trio_source(clock: _Clock) -> Any:
    for i in range(clock.n):
        delay = clock.due(i)
        if delay > 0:
            await trio.sleep(delay)
        yield (clock.stamp(i), i)


async def _aio_source(clock: _Clock) -> Any:
    for i in range(clock.n):
        delay = clock.due(i)
        if delay > 0:
            await asyncio.sleep(delay)
        yield (clock.stamp(i), i)


def run_trioflow(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    clock = _Clock(p)

    async def sink(item: tuple[int, int]) -> None:
        clock.arrive(*item)

    pipeline = tf.from_aiter(_trio_source(clock))
    for fn in LIFTED:
        pipeline = pipeline | fn
    trio.run((pipeline | tf.sink(sink)).run)
    return clock.result()


def run_trio(p: dict[str, Any]) -> dict[str, Any]:
    clock = _Clock(p)

    async def main() -> None:
        channels = [trio.open_memory_channel[Any](BUF) for _ in range(len(LIFTED) + 1)]

        async def source(s: trio.MemorySendChannel[Any]) -> None:
            async with s:
                async for item in _trio_source(clock):
                    await s.send(item)

        async def stage(
            fn: Any, r: trio.MemoryReceiveChannel[Any], s: trio.MemorySendChannel[Any]
        ) -> None:
            async with r, s:
                async for x in r:
                    await s.send(await fn(x))

        async def sink(r: trio.MemoryReceiveChannel[Any]) -> None:
            async with r:
                async for item in r:
                    clock.arrive(*item)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(source, channels[0][0])
            for fn, (_, r), (s, _) in zip(LIFTED, channels, channels[1:], strict=False):
                nursery.start_soon(stage, fn, r, s)
            nursery.start_soon(sink, channels[-1][1])

    trio.run(main)
    return clock.result()


def run_asyncio(p: dict[str, Any]) -> dict[str, Any]:
    clock = _Clock(p)
    end = object()

    async def main() -> None:
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue(BUF) for _ in range(len(LIFTED) + 1)]

        async def source(q: asyncio.Queue[Any]) -> None:
            async for item in _aio_source(clock):
                await q.put(item)
            await q.put(end)

        async def stage(fn: Any, qi: asyncio.Queue[Any], qo: asyncio.Queue[Any]) -> None:
            while (x := await qi.get()) is not end:
                await qo.put(await fn(x))
            await qo.put(end)

        async def sink(q: asyncio.Queue[Any]) -> None:
            while (item := await q.get()) is not end:
                clock.arrive(*item)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(source(queues[0]))
            for fn, qi, qo in zip(LIFTED, queues, queues[1:], strict=False):
                tg.create_task(stage(fn, qi, qo))
            tg.create_task(sink(queues[-1]))

    asyncio.run(main())
    return clock.result()


def run_slurry(p: dict[str, Any]) -> dict[str, Any]:
    from slurry import Pipeline

    async_map, _ = slurry_sections()
    clock = _Clock(p)

    async def main() -> None:
        async with (
            Pipeline.create(_trio_source(clock), *(async_map(fn) for fn in LIFTED)) as pipeline,
            pipeline.tap() as out,
        ):
            async for item in out:
                clock.arrive(*item)

    trio.run(main)
    return clock.result()


def run_aiostream(p: dict[str, Any]) -> dict[str, Any]:
    from aiostream import pipe, stream

    clock = _Clock(p)

    async def main() -> None:
        xs = stream.iterate(_aio_source(clock))
        for fn in LIFTED:
            xs = xs | pipe.map(fn, task_limit=1)
        async with xs.stream() as out:
            async for item in out:
                clock.arrive(*item)

    asyncio.run(main())
    return clock.result()


def run_pypeln(p: dict[str, Any]) -> dict[str, Any]:
    import pypeln as pl

    clock = _Clock(p)

    async def main() -> None:
        stage: Any = _aio_source(clock)
        for fn in LIFTED:
            stage = pl.task.map(fn, stage, workers=1, maxsize=BUF)
        async for item in stage:
            clock.arrive(*item)

    asyncio.run(main())
    return clock.result()


def run_sequential(p: dict[str, Any]) -> dict[str, Any]:
    clock = _Clock(p)

    async def main() -> None:
        async for item in _trio_source(clock):
            for fn in LIFTED:
                item = await fn(item)
            clock.arrive(*item)

    trio.run(main)
    return clock.result()


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
    "sequential": "the source loop awaits the three functions inline (no hand-over at all)",
}
SKIPPED: dict[str, str] = {}
