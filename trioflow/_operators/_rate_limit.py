"""``rate_limit``: at most ``count`` items in any window of ``per`` seconds (a sliding log)."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from .._queue import ChunkQueue
from .._stages import RateLimit
from .._topology import Node
from ._context import Emitter, StageContext
from ._loop import each_chunk

__all__ = ["tasks"]


def tasks(
    node: Node, inq: ChunkQueue, out: Emitter, ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """One task per rate limit."""
    stage = node.stage
    assert isinstance(stage, RateLimit)
    out.add_producer()
    return [partial(_run, stage.count, stage.per, inq, out, ctx, node.buffer)]


async def _run(
    count: int, per: float, inq: ChunkQueue, out: Emitter, ctx: StageContext, take: int
) -> None:
    # times of the last ``count`` releases: an item may pass at t if the oldest is <= t - per
    released: deque[float] = deque()
    clock = trio.current_time

    async def handle(values: list[Any], origins: list[Any]) -> None:
        i, n = 0, len(values)
        while i < n:
            # the same expression as the sleep below: (t + per) - per may be < t in floating point
            now = clock()
            while released and released[0] + per <= now:
                released.popleft()
            free = count - len(released)
            if free == 0:
                await trio.sleep_until(released[0] + per)
                continue
            j = min(n, i + free)
            whole = i == 0 and j == n
            await out.put_many(values if whole else values[i:j], origins if whole else origins[i:j])
            # stamped when they are through: a hand-over that waited on a full queue must not
            # count as earlier releases, or a burst follows the stall
            released.extend([clock()] * (j - i))
            i = j

    await each_chunk(inq, ctx, take, handle, out.close_producer)
