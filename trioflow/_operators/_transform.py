"""``filter`` (one to zero or one) and ``flat_map`` (one to zero or more)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from .._acking import Group
from .._groups import is_fatal
from .._queue import FAILED, ChunkQueue, Pending
from .._stages import Filter, FlatMap
from .._topology import Node
from ._context import Emitter, StageContext
from ._loop import each_chunk

__all__ = ["filter_tasks", "flat_map_tasks", "unbatch_tasks"]


def filter_tasks(
    node: Node, inq: ChunkQueue, out: Emitter, ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """One task: keep items whose predicate is true; ack the dropped ones at once."""
    stage = node.stage
    assert isinstance(stage, Filter)
    out.add_producer()
    return [partial(_filter, inq, out, ctx, stage.pred, stage.is_async, node.buffer)]


async def _filter(
    inq: ChunkQueue, out: Emitter, ctx: StageContext, pred: Any, is_async: bool, take: int
) -> None:
    settler = ctx.settler
    pending = Pending()  # kept items: results[i] is the value, or FAILED for a dropped one
    out.hold(pending)
    # dropped items (their origins) wait here: the acker takes them when it is idle, so they
    # are acked at once even while the predicate waits
    dropped = Pending()
    settler.hold_dropped(dropped)

    async def handle(values: list[Any], origins: list[Any]) -> None:
        results: list[Any] = []
        drops: list[Any] = []
        pending.start(results, origins)
        pending.holes = True
        dropped.start(drops, origins)
        dropped.holes = True
        keep_value, drop = results.append, drops.append
        for value, origin in zip(values, origins, strict=True):
            try:
                keep = await pred(value) if is_async else pred(value)
                if keep is not True and keep is not False:
                    if inspect.isawaitable(keep):
                        keep = await keep
                    # bool() here: a result without a truth value (an array) fails the item
                    keep = bool(keep)
            except Exception as exc:
                if is_fatal(exc):
                    raise
                ctx.fail(origin, value, exc)
                keep_value(FAILED)
                drop(FAILED)
                continue
            if keep:
                keep_value(value)
                drop(FAILED)
            else:
                keep_value(FAILED)
                drop(origin)
                if settler.idle:
                    settler.wake_acker()
            if out.waiting:
                out.wake()
        got = dropped.take()
        if got is not None:
            settler.filtered_out(got[1])
        await pending.flush(out)

    await each_chunk(inq, ctx, take, handle, out.close_producer)


def flat_map_tasks(
    node: Node, inq: ChunkQueue, out: Emitter, ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """One task: expand each item into children that settle their parent together."""
    stage = node.stage
    assert isinstance(stage, FlatMap)
    out.add_producer()
    return [partial(_flat_map, inq, out, ctx, stage.fn, node.buffer)]


async def _flat_map(inq: ChunkQueue, out: Emitter, ctx: StageContext, fn: Any, take: int) -> None:
    settler = ctx.settler
    flush_at = max(1, take)
    pending = Pending()  # children: the next stage takes them when it is idle
    out.hold(pending)

    def add(child: Any, parent: Any) -> None:
        parent.remaining += 1
        pending.results.append(child)
        pending.origins.append(parent)
        if out.waiting:
            out.wake()

    async def handle(values: list[Any], origins: list[Any]) -> None:
        for value, origin in zip(values, origins, strict=True):
            # The parent starts with one guard "child" so that children settled downstream
            # before their siblings are emitted cannot settle it early.
            parent = settler.new_fanout(origin)
            parent.remaining = 1
            try:
                result = fn(value)
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, AsyncIterable):
                    async for child in result:  # pyright: ignore[reportUnknownVariableType]
                        add(child, parent)
                        if len(pending) >= flush_at:
                            await pending.flush(out)
                elif isinstance(result, Iterable):
                    for child in result:  # pyright: ignore[reportUnknownVariableType]
                        add(child, parent)
                        if len(pending) >= flush_at:
                            await pending.flush(out)
                else:
                    raise TypeError(
                        f"flat_map function returned {type(result).__name__}, "
                        "not an iterable or async iterable"
                    )
            except Exception as exc:
                if is_fatal(exc):
                    raise
                # children already emitted go on; the parent fails once they are done
                ctx.fail(parent, value, exc)
            else:
                settler.ok([parent])  # release the guard
        await pending.flush(out)

    await each_chunk(inq, ctx, take, handle, out.close_producer)


def unbatch_tasks(
    node: Node, inq: ChunkQueue, out: Emitter, ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """One task: each batch's items go on with their own origins (settled one by one)."""
    out.add_producer()
    return [partial(_unbatch, inq, out, ctx, node.buffer)]


async def _unbatch(inq: ChunkQueue, out: Emitter, ctx: StageContext, take: int) -> None:
    settler = ctx.settler

    async def handle(values: list[Any], origins: list[Any]) -> None:
        out_v: list[Any] = []
        out_o: list[Any] = []
        for value, origin in zip(values, origins, strict=True):
            if not isinstance(value, list):
                error = TypeError(
                    f"stage {ctx.label!r}: unbatch() got {type(value).__name__}, not a batch"
                )
                ctx.fail(origin, value, error)
                continue
            batch: list[Any] = value  # pyright: ignore[reportUnknownVariableType]
            if type(origin) is Group and len(origin.members) == len(batch):
                out_v.extend(batch)
                out_o.extend(origin.members)
                continue
            # the list no longer matches its messages: its items settle the batch together
            parent = settler.new_fanout(origin)
            parent.remaining = len(batch)
            if not batch:
                settler.ok([origin])
                continue
            out_v.extend(batch)
            out_o.extend([parent] * len(batch))
        if out_v:
            await out.put_many(out_v, out_o)

    await each_chunk(inq, ctx, take, handle, out.close_producer)
