"""``batch``: group items into lists by size, by time since the first item, and by key."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from .._acking import Group
from .._awaitables import checked_key
from .._batches import Batch, BatchInfo, Trigger
from .._groups import is_fatal
from .._queue import ChunkQueue
from .._stages import BatchStage
from .._topology import Node
from .._validate import describe
from ._context import Emitter, StageContext

__all__ = ["tasks"]


class _Open:
    """A partial batch: values, their origins, its weight, and when it must leave."""

    __slots__ = ("deadline", "opened", "origins", "values", "weight")

    def __init__(self, opened: float, timeout: float) -> None:
        self.values: Batch[Any] = Batch()
        self.origins: list[Any] = []
        self.weight: float = 0
        self.opened = opened
        self.deadline = opened + timeout


def tasks(
    node: Node, inq: ChunkQueue, out: Emitter, ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """One task per batch stage."""
    stage = node.stage
    assert isinstance(stage, BatchStage)
    out.add_producer()
    return [partial(_run, stage, inq, out, ctx, node.buffer, node.branch)]


async def _run(
    stage: BatchStage,
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    take: int,
    branch: Any,
) -> None:
    size = stage.size
    timeout = stage.timeout if stage.timeout is not None else math.inf
    key_fn = stage.key
    weigh = _weigher(stage, ctx) if stage.weight is not None else None
    open_: dict[Any, _Open] = {}
    telemetry = ctx.telemetry
    label = ctx.label

    async def emit(key: Any, batch: _Open, trigger: Trigger) -> None:
        del open_[key]
        values = batch.values
        n = len(values)
        ctx.active -= n
        values.info = BatchInfo(key, n, batch.weight if weigh is not None else n, trigger, branch)
        if telemetry.has_batch:
            telemetry.emit("batch", label, n, trigger, values.info)
        # a batch stage's latency: how long its items waited for the batch to leave
        ctx.histogram.add(trio.current_time() - batch.opened, n)
        await out.put(values, Group(batch.origins))

    try:
        while True:
            # Unkeyed, once a batch is open (its timer running, if any), the stage needs
            # ``size - len(open batch)`` more items before anything leaves but the timer: it asks
            # the queue not to wake it for fewer. The first item of a batch is taken at once.
            want = 1
            if key_fn is None and weigh is None:
                current = open_.get(None)
                if current is not None:
                    want = min(inq.capacity, size - len(current.values))
                elif timeout == math.inf:
                    want = min(inq.capacity, size)
            if open_ and timeout != math.inf:
                deadline = min(b.deadline for b in open_.values())
                got: Any = _TIMEOUT
                with trio.move_on_at(deadline):
                    got = await inq.get(take, want)
                if got is _TIMEOUT:
                    # what arrived by the deadline joins its batch before it leaves
                    got = inq.get_nowait(take) or _TIMEOUT
            else:
                got = await inq.get(take, want)
            if got is None:
                trigger: Trigger = "drain" if ctx.draining() else "end"
                for key in list(open_):
                    await emit(key, open_[key], trigger)
                return
            now = trio.current_time()
            if got is not _TIMEOUT:
                values, origins = got
                ctx.active += len(values)
                if key_fn is None and weigh is None:
                    await _add_unkeyed(open_, values, origins, size, now, timeout, emit, ctx)
                elif weigh is None:
                    assert key_fn is not None
                    await _add_keyed(open_, values, origins, size, now, timeout, key_fn, emit, ctx)
                else:
                    await _add_keyed(
                        open_,
                        values,
                        origins,
                        size,
                        now,
                        timeout,
                        key_fn,
                        emit,
                        ctx,
                        weigh=weigh,
                        limit=stage.max_weight,
                    )
            for key in [k for k, b in open_.items() if b.deadline <= now]:
                await emit(key, open_[key], "timeout")
    finally:
        out.close_producer()


#: ``weigh(value) -> weight``; raises for a bad weight (the item fails)
Weigher = Callable[[Any], float]


def _weigher(stage: BatchStage, ctx: StageContext) -> Weigher:
    fn = stage.weight
    assert fn is not None
    limit = stage.max_weight
    what = f"stage {ctx.label!r}: weight={describe(fn)}"

    def weigh(value: Any) -> float:
        w = checked_key(fn(value), what)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise TypeError(f"{what} returned {w!r}: a weight is a non-negative number")
        if limit is not None and w > limit:
            raise ValueError(
                f"{ctx.label}: the item weighs {w}, more than max_weight={limit}: it cannot fit "
                "in any batch"
            )
        return w

    return weigh


_TIMEOUT = object()


async def _add_unkeyed(
    open_: dict[Any, _Open],
    values: list[Any],
    origins: list[Any],
    size: int,
    now: float,
    timeout: float,
    emit: Callable[[Any, _Open, Trigger], Awaitable[None]],
    ctx: StageContext,
) -> None:
    i, n = 0, len(values)
    while i < n:
        batch = open_.get(None)
        if batch is None:
            batch = open_[None] = _Open(now, timeout)
            if ctx.telemetry.has_batch_start:
                ctx.telemetry.emit("batch_start", ctx.label)
        j = min(n, i + size - len(batch.values))
        batch.values.extend(values[i:j])
        batch.origins.extend(origins[i:j])
        i = j
        if len(batch.values) >= size:
            await emit(None, batch, "size")


async def _add_keyed(
    open_: dict[Any, _Open],
    values: list[Any],
    origins: list[Any],
    size: int,
    now: float,
    timeout: float,
    key_fn: Callable[[Any], Any] | None,
    emit: Callable[[Any, _Open, Trigger], Awaitable[None]],
    ctx: StageContext,
    *,
    weigh: Weigher | None = None,
    limit: float | None = None,
) -> None:
    """Add items one by one: per key (each batch its own), and by weight (``limit`` is
    ``max_weight``: a batch leaves before the item that would take it past it)."""
    failed = False
    what = f"stage {ctx.label!r}: key={describe(key_fn)}"
    for value, origin in zip(values, origins, strict=True):
        try:
            key = checked_key(key_fn(value), what) if key_fn is not None else None
            batch = open_.get(key)
            w = weigh(value) if weigh is not None else 0
        except Exception as exc:  # a bad key (failing key_fn, unhashable) or weight
            if is_fatal(exc):
                raise
            ctx.active -= 1
            ctx.fail(origin, value, exc)
            failed = True
            continue
        if batch is not None and limit is not None and batch.weight + w > limit:
            await emit(key, batch, "weight")  # this item would take it past max_weight
            batch = None
        if batch is None:
            batch = open_[key] = _Open(now, timeout)
            if ctx.telemetry.has_batch_start:
                ctx.telemetry.emit("batch_start", ctx.label)
        batch.values.append(value)
        batch.origins.append(origin)
        batch.weight += w
        if len(batch.values) >= size:
            await emit(key, batch, "size")
    if failed:
        await ctx.settler.room()
