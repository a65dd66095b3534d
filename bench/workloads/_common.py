"""Helpers shared by the workloads: stage functions, slurry sections, memory readings."""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import trio

#: channel / queue capacity of the hand-written peers (trioflow's DEFAULT_BUFFER is 512)
BUF = 256

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def ru_maxrss_kb() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux).

    On Linux it survives ``execve``: a fresh child starts with its parent's peak (the runner's),
    so it cannot show a peak below that. :func:`peak_rss_kb` reads the figure of this process's
    own address space instead.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kb() -> int:
    """Peak resident set size of this process's address space (VmHWM), in KiB.

    Falls back to ``ru_maxrss`` where /proc is not there.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return ru_maxrss_kb()


def rss_kb() -> int:
    """Current resident set size (from /proc/self/statm), in KiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except OSError:  # not Linux: fall back to the peak
        return peak_rss_kb()


# -- the functions every implementation awaits -----------------------------------------------


async def double(x: int) -> int:
    return x * 2


async def inc(x: int) -> int:
    return x + 1


async def triple(x: int) -> int:
    return x * 3


async def dec(x: int) -> int:
    return x - 1


async def trio_checkpoint(x: int) -> int:
    await trio.lowlevel.checkpoint()  # what trio.sleep(0) does
    return x


async def aio_checkpoint(x: int) -> int:
    await asyncio.sleep(0)
    return x


async def trio_sleep_1ms(x: int) -> int:
    await trio.sleep(0.001)
    return x


async def aio_sleep_1ms(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


def w2_expected(n: int) -> dict[str, int]:
    """W2/W6/W7: ``dec(triple(inc(i)))`` (``3i + 2``) summed over ``range(n)``."""
    return {"sum": 3 * n * (n - 1) // 2 + 2 * n, "count": n}


# -- timer probes: what the event loop itself delivers, measured in the child --------------------


def sleep_duration_s(loop: str, delay: float, k: int) -> float:
    """Mean seconds one ``await sleep(delay)`` takes, over ``k`` sleeps in a row in one task.

    ``loop`` is ``"trio"`` or ``"asyncio"``. One warm-up sleep is not counted.
    """

    async def trio_main() -> float:
        await trio.sleep(delay)
        started = trio.current_time()
        for _ in range(k):
            await trio.sleep(delay)
        return (trio.current_time() - started) / k

    async def aio_main() -> float:
        await asyncio.sleep(delay)
        loop_ = asyncio.get_running_loop()
        started = loop_.time()
        for _ in range(k):
            await asyncio.sleep(delay)
        return (loop_.time() - started) / k

    if loop == "trio":
        return trio.run(trio_main)
    return asyncio.run(aio_main())


def quantiles_ms(values: list[float]) -> dict[str, float]:
    """``p50_ms``, ``p99_ms``, ``max_ms`` of ``values`` (seconds); NaN when there are none."""
    lat = sorted(values)
    k = len(lat)

    def q(f: float) -> float:
        return lat[min(k - 1, int(f * k))] * 1e3 if lat else float("nan")

    return {"p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": lat[-1] * 1e3 if lat else float("nan")}


# -- slurry: it has no concurrent async map, so the idiomatic way is a TrioSection ------------


def slurry_sections() -> tuple[type, type]:
    """``(AsyncMap, Drain)`` section classes (imported lazily: slurry is optional)."""
    from slurry.environments import TrioSection

    class AsyncMap(TrioSection):  # type: ignore[misc]
        """Await ``fn`` per item, with ``n`` concurrent workers."""

        def __init__(self, fn: Callable[[Any], Awaitable[Any]], n: int = 1) -> None:
            self.fn = fn
            self.n = n

        async def refine(self, input: AsyncIterable[Any], output: Any) -> None:
            fn = self.fn
            if self.n == 1:
                async for item in input:
                    await output(await fn(item))
                return
            send, recv = trio.open_memory_channel[Any](0)

            async def work(r: trio.MemoryReceiveChannel[Any]) -> None:
                async with r:
                    async for item in r:
                        await output(await fn(item))

            async with trio.open_nursery() as nursery:
                async with recv:
                    for _ in range(self.n):
                        nursery.start_soon(work, recv.clone())
                async with send:
                    async for item in input:
                        await send.send(item)

    return AsyncMap, TrioSection


def run_slurry_pipeline(n: int, *sections: Any, batched: bool = False) -> dict[str, int]:
    """Run ``range(n)`` through a slurry pipeline of ``sections``; sum and count what comes out
    (``batched``: the output is lists, as after a ``Group``)."""
    from slurry import Pipeline

    total = {"sum": 0, "count": 0}

    async def source() -> Any:
        for i in range(n):
            yield i

    async def main() -> None:
        async with Pipeline.create(source(), *sections) as pipeline, pipeline.tap() as out:
            async for x in out:
                if batched:
                    total["sum"] += sum(x)
                    total["count"] += len(x)
                else:
                    total["sum"] += x
                    total["count"] += 1

    trio.run(main)
    return total
