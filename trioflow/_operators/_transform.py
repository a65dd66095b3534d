"""``filter`` (one to zero or one) and ``flat_map`` (one to zero or more)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from .._queue import ChunkQueue
from .._stages import Filter, FlatMap
from .._topology import Node
from ._context import Emitter, StageContext, is_fatal, step_counter
from ._loop import each_chunk

__all__ = ["filter_tasks", "flat_map_tasks"]


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
    steps = step_counter()
    suspends = False  # once the predicate is seen to wait, kept items are handed on one by one

    async def handle(values: list[Any], origins: list[Any]) -> None:
        nonlocal suspends
        keep_v: list[Any] = []
        keep_o: list[Any] = []
        dropped: list[Any] = []
        for value, origin in zip(values, origins, strict=True):
            before = steps._schedule_points
            try:
                # bool() inside: a result without a truth value (an array) fails the item
                keep = bool((await pred(value)) if is_async else pred(value))
            except Exception as exc:
                if is_fatal(exc):
                    raise
                ctx.fail(origin, value, exc)
                continue
            if keep:
                keep_v.append(value)
                keep_o.append(origin)
            else:
                dropped.append(origin)
            if is_async and steps._schedule_points != before:
                suspends = True
            if keep_v and (suspends or out.waiting):
                await out.put_many(keep_v, keep_o)
                keep_v, keep_o = [], []
        if dropped:
            settler.filtered_out(dropped)
        if keep_v:
            await out.put_many(keep_v, keep_o)

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

    async def handle(values: list[Any], origins: list[Any]) -> None:
        out_v: list[Any] = []
        out_o: list[Any] = []
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
                    async for child in result:
                        parent.remaining += 1
                        out_v.append(child)
                        out_o.append(parent)
                        if len(out_v) >= flush_at or out.waiting:
                            await out.put_many(out_v, out_o)
                            out_v, out_o = [], []
                elif isinstance(result, Iterable):
                    for child in result:
                        parent.remaining += 1
                        out_v.append(child)
                        out_o.append(parent)
                        if len(out_v) >= flush_at:
                            await out.put_many(out_v, out_o)
                            out_v, out_o = [], []
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
        if out_v:
            await out.put_many(out_v, out_o)

    await each_chunk(inq, ctx, take, handle, out.close_producer)
