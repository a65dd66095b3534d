"""``process(..., partition_by=key)``: any idle worker takes the oldest item whose key is free.

Items wait in a FIFO per key; a key is *runnable* while it has items and no call in flight. The
flow-controlled stages (``_flowing``) use the same per-key FIFOs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from heapq import heappop, heappush
from typing import Any

import trio
from trio.lowlevel import ParkingLot

from .._awaitables import checked_key, is_awaitable
from .._groups import is_fatal
from .._queue import ChunkQueue
from .._stages import Process
from .._topology import Node
from .._validate import describe
from ._context import Emitter, StageContext
from ._process import Call, Pool, fail_item, view_of
from ._steer import Steering

__all__ = ["Partitions", "partitioned"]


def partitioned(
    node: Node,
    stage: Process[Any, Any],
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    call: Call,
    is_async: bool,
    views: bool,
    steer: Steering,
) -> list[Callable[[], Awaitable[None]]]:
    """``partition_by``: any idle worker takes the oldest item whose key is not being worked on.

    Items wait in a FIFO per key; a key is *runnable* while it has items and no call in flight.
    So items of one key go through one at a time, in input order, and among the items the stage
    holds none waits while a worker is idle unless an earlier item of its key is still in a call
    (a slow key holds up only itself). At most ``max(buffer, n)`` items are held (queued per key,
    in calls, or finished and pending): a single key whose backlog is longer than that holds up
    the items behind it in the input queue, as any bounded buffer must.
    """
    key_fn = stage.partition_by
    assert key_fn is not None
    part = Partitions(ctx, out, stage, node.buffer, key_fn, views)

    def on_resize(k: int) -> None:
        part.pool.resized(k, node.buffer)
        part.work.unpark_all()

    def make_worker(idx: int) -> Callable[[], Awaitable[None]]:
        out.add_producer()
        return partial(_keyed_worker, part, call, is_async, steer, idx)

    steer.on_resize, steer.make_worker = on_resize, make_worker
    workers = [make_worker(i) for i in range(stage.max_n)]
    return [partial(_intake, part, inq, steer), *workers]


class Partitions:
    """What ``partition_by`` workers share: the items per key, the runnable keys, the output.

    Every item gets a sequence number at intake; the runnable keys form a heap ordered by the
    number of their oldest item, so an idle worker always takes the oldest item whose key has
    no call in flight (with ``n=1``: input order).
    """

    __slots__ = (
        "busy",
        "by_key",
        "ended",
        "key_fn",
        "key_of_message",
        "pool",
        "runnable",
        "seq",
        "what",
        "work",
    )

    def __init__(
        self,
        ctx: StageContext,
        out: Emitter,
        stage: Process[Any, Any],
        buffer: int,
        key_fn: Callable[[Any], Any],
        views: bool,
    ) -> None:
        self.pool = Pool(ctx, out, stage, buffer, views)
        self.key_fn = key_fn
        #: a messages=True stage's key function sees the message too (a traced one: the data)
        self.key_of_message = stage.messages
        self.what = f"stage {ctx.label!r}: partition_by={describe(key_fn)}"
        self.by_key: dict[Any, deque[tuple[int, Any, Any]]] = {}
        #: (sequence number of the key's oldest item, key): keys are never compared
        self.runnable: list[tuple[int, Any]] = []
        self.busy: set[Any] = set()
        self.seq = 0
        #: workers waiting for a runnable key
        self.work = ParkingLot()
        self.ended = False

    def add(self, value: Any, origin: Any, key: Any) -> None:
        seq = self.seq
        self.seq += 1
        items = self.by_key.get(key)
        if items is None:
            items = self.by_key[key] = deque()
            if key not in self.busy:
                heappush(self.runnable, (seq, key))
                self.work.unpark()
        items.append((seq, value, origin))

    def next_item(self) -> tuple[Any, Any, Any] | None:
        """The oldest item whose key is free (its key now busy), or None."""
        if not self.runnable:
            return None
        _, key = heappop(self.runnable)
        items = self.by_key[key]
        _, value, origin = items.popleft()
        if not items:
            del self.by_key[key]
        self.busy.add(key)
        return value, origin, key

    def done(self, key: Any) -> None:
        """The call for ``key`` ended: the key is runnable again if it has items."""
        self.busy.discard(key)
        items = self.by_key.get(key)
        if items is not None:
            heappush(self.runnable, (items[0][0], key))
            self.work.unpark()


async def _intake(part: Partitions, inq: ChunkQueue, steer: Steering) -> None:
    """Move items from the input into the per-key FIFOs, while fewer than the cap are held."""
    pool = part.pool
    ctx = pool.ctx
    key_fn, what = part.key_fn, part.what
    lots = ctx.settler.lots
    messages = pool.messages  # calls take the item's view: built once here
    key_of_message = part.key_of_message
    try:
        while True:
            await pool.room()
            got = await inq.get(pool.cap - pool.held)
            if got is None:
                return
            values, origins = got
            failed = False
            for value, origin in zip(values, origins, strict=True):
                # a messages=True stage: its key function and its call see the same message,
                # built once here
                arg = view_of(lots, value, origin) if messages else value
                try:
                    key = checked_key(key_fn(arg if key_of_message else value), what)
                    hash(key)
                except Exception as exc:
                    if is_fatal(exc):
                        raise
                    ctx.fail(origin, value, exc)
                    failed = True
                    continue
                pool.held += 1
                part.add(arg, origin, key)
            if failed:
                await ctx.settler.room()
    finally:
        part.ended = True
        part.work.unpark_all()
        steer.end()


async def _keyed_worker(
    part: Partitions, call: Call, is_async: bool, steer: Steering, idx: int
) -> None:
    pool = part.pool
    ctx, out, pending = pool.ctx, pool.out, pool.pending
    clock = trio.current_time
    try:
        while True:
            if idx >= steer.limit:
                if len(pending) and not pending.busy:
                    await pool.flush()
                    continue
                if not await steer.idle(idx):
                    return
                continue
            got = part.next_item()
            if got is None:
                if len(pending) and not pending.busy:
                    await pool.flush()  # nothing to call: hand on what is done first
                    continue
                if part.ended and not part.by_key:
                    return
                await part.work.park()
                continue
            arg, origin, key = got  # (a message already, for a messages=True stage)
            started = clock()
            ctx.chunk_start(1)
            try:
                result = await call(arg) if is_async else call(arg)
                if not is_async and is_awaitable(result):
                    result = await result
            except Exception as exc:
                if is_fatal(exc):
                    raise
                result = fail_item(ctx, origin, arg, exc)
            pool.finish(0, result, origin)
            part.done(key)
            if out.waiting:
                out.wake()
            if len(pending) >= pool.take and not pending.busy:
                await pool.flush()
            ctx.chunk_stop(1, clock() - started)
            await ctx.settler.room()
    finally:
        if part.ended and not part.by_key:
            part.work.unpark_all()  # the others may be parked waiting for keys that never come
        out.close_producer()
