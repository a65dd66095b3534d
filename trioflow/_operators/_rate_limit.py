"""``rate_limit``: at most ``count`` items in any window of ``per`` seconds (a sliding log)."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, final

import trio

from .._queue import ChunkQueue
from .._stages import RateLimit
from .._topology import Node
from ._context import Emitter, StageContext
from ._loop import each_chunk

__all__ = ["RateControl", "tasks"]


@final
class RateControl:
    """The live limit of a ``rate_limit`` stage: ``handle.set_rate`` changes it while it runs."""

    __slots__ = ("changed", "count", "per")

    def __init__(self, count: int, per: float) -> None:
        self.count = count
        self.per = per
        self.changed = trio.Event()

    def set(self, count: int, per: float) -> None:
        """Take ``count`` items per ``per`` seconds from now on (a waiting release re-checks)."""
        self.count, self.per = count, per
        self.changed.set()
        self.changed = trio.Event()


def tasks(
    node: Node, inq: ChunkQueue, out: Emitter, ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """One task per rate limit."""
    stage = node.stage
    assert isinstance(stage, RateLimit)
    out.add_producer()
    control = RateControl(stage.count, stage.per)
    ctx.control = control
    return [partial(_run, control, inq, out, ctx, node.buffer)]


async def _run(
    control: RateControl, inq: ChunkQueue, out: Emitter, ctx: StageContext, take: int
) -> None:
    # times of the last releases: an item may pass at t if the ``count``-th newest is <= t - per
    released: deque[float] = deque()
    clock = trio.current_time

    async def handle(values: list[Any], origins: list[Any]) -> None:
        i, n = 0, len(values)
        while i < n:
            count, per = control.count, control.per
            # the same expression as the wait below: (t + per) - per may be < t in floating point
            now = clock()
            while released and released[0] + per <= now:
                released.popleft()
            free = count - len(released)
            if free <= 0:
                # the oldest release that must age out before one more fits
                with trio.move_on_at(released[len(released) - count] + per):
                    await control.changed.wait()
                continue
            j = min(n, i + free)
            whole = i == 0 and j == n
            await out.put_many(values if whole else values[i:j], origins if whole else origins[i:j])
            # stamped when they are through: a hand-over that waited on a full queue must not
            # count as earlier releases, or a burst follows the stall
            released.extend([clock()] * (j - i))
            i = j

    await each_chunk(inq, ctx, take, handle, out.close_producer)
