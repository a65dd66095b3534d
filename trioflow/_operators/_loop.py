"""The loop every single-task operator runs: take a chunk, handle it, account for it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._queue import ChunkQueue
from ._context import StageContext

__all__ = ["Handler", "each_chunk"]

#: ``handle(values, origins)``: work through one chunk (the lists are not to be mutated).
Handler = Callable[[list[Any], list[Any]], Awaitable[None]]


async def each_chunk(
    inq: ChunkQueue, ctx: StageContext, take: int, handle: Handler, close: Callable[[], None]
) -> None:
    """Run ``handle`` on every chunk of ``inq`` until it ends, then ``close`` the output(s).

    After each chunk the stage's figures are updated and the worker waits while too many settled
    messages wait for their acks (back-pressure from the acknowledgers). ``close`` runs however
    the loop ends: the next stage learns the stream ended, or the run is being torn down.
    """
    clock = trio.current_time
    try:
        while True:
            got = await inq.get(take)
            if got is None:
                return
            values, origins = got
            ctx.chunk_start(len(values))
            started = clock()
            await handle(values, origins)
            await ctx.settler.room()
            ctx.chunk_stop(len(values), clock() - started)
    finally:
        close()
