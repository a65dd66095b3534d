"""``route``: send each item to the entry of its branch by key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from .._exceptions import Fatal
from .._queue import ChunkQueue
from .._stages import Route
from .._topology import Node
from ._context import Emitter, StageContext

__all__ = ["tasks"]


def tasks(
    node: Node, inq: ChunkQueue, branch_entries: dict[Any, Emitter], ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """One dispatcher task; the branches' own stages are nodes of the graph."""
    stage = node.stage
    assert isinstance(stage, Route)
    for entry in branch_entries.values():
        entry.add_producer()
    return [partial(_run, stage, inq, branch_entries, ctx, node.buffer)]


async def _run(
    stage: Route[Any],
    inq: ChunkQueue,
    entries: dict[Any, Emitter],
    ctx: StageContext,
    take: int,
) -> None:
    key_fn = stage.key
    clock = trio.current_time
    try:
        while True:
            got = await inq.get(take)
            if got is None:
                return
            values, origins = got
            ctx.chunk_start(len(values))
            started = clock()
            parts: dict[Any, tuple[list[Any], list[Any]]] = {}
            failed = False
            for value, origin in zip(values, origins, strict=True):
                try:
                    key = key_fn(value)
                    if key not in entries:
                        raise KeyError(
                            f"{ctx.label}: no branch for key {key!r}; "
                            f"branches are {', '.join(repr(k) for k in entries)}"
                        )
                except Exception as exc:
                    if isinstance(exc, Fatal):
                        raise
                    ctx.fail(origin, value, exc)
                    failed = True
                    continue
                part = parts.get(key)
                if part is None:
                    part = parts[key] = ([], [])
                part[0].append(value)
                part[1].append(origin)
            for key, (vals, origs) in parts.items():
                await entries[key].put_many(vals, origs)
            if failed:
                await ctx.settler.room()
            ctx.chunk_stop(len(values), clock() - started)
    finally:
        for entry in entries.values():
            entry.close_producer()
