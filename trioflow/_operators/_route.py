"""``route``: send each item to the entry of its branch by key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from .._awaitables import checked_key
from .._groups import is_fatal
from .._queue import ChunkQueue
from .._stages import Route
from .._topology import Node
from .._validate import describe
from ._context import Emitter, StageContext
from ._loop import each_chunk

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
    what = f"stage {ctx.label!r}: key_fn={describe(key_fn)}"

    async def handle(values: list[Any], origins: list[Any]) -> None:
        parts: dict[Any, tuple[list[Any], list[Any]]] = {}
        for value, origin in zip(values, origins, strict=True):
            try:
                key = checked_key(key_fn(value), what)
                if key not in entries:
                    raise KeyError(
                        f"{ctx.label}: no branch for key {key!r}; "
                        f"branches are {', '.join(repr(k) for k in entries)}"
                    )
            except Exception as exc:
                if is_fatal(exc):
                    raise
                ctx.fail(origin, value, exc)
                continue
            part = parts.get(key)
            if part is None:
                part = parts[key] = ([], [])
            part[0].append(value)
            part[1].append(origin)
        for key, (vals, origs) in parts.items():
            await entries[key].put_many(vals, origs)

    def close() -> None:
        for entry in entries.values():
            entry.close_producer()

    await each_chunk(inq, ctx, take, handle, close)
