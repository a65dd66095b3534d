"""W8 acknowledgement cost on Broadway's own shapes: messages with an acknowledger vs plain data.

The source is written the way docs/connectors tell connector authors (``trioflow.abc.Source``:
``await out.demand()``, then ``send_many`` of a chunk), once with plain data and once with a
``tf.Message`` per item carrying its id in the metadata and an acknowledger that counts (the
least a broker's acknowledger does). Two shapes, as in the issue: 8 processors of trivial work
-> batch(100) -> a sink; and one processor -> ack.
"""

from __future__ import annotations

from typing import Any

import trio

TITLE = "W8 acknowledgement cost (Broadway's shapes)"
DESCRIPTION = (
    "{n} items from a trioflow.abc.Source: plain data, or a Message per item with an id and a "
    "counting acknowledger; shapes: process(n=8) -> batch(100) -> sink, and one sink"
)
METRIC = "time"
BASELINE = "batch-plain"
SIZES = {"default": {"n": 500_000}, "quick": {"n": 5_000}}


def expected(p: dict[str, Any]) -> dict[str, int]:
    n = p["n"]
    return {"sum": n * (n - 1) // 2, "count": n}


class _Counting:
    def __init__(self) -> None:
        self.acked = 0

    async def ack(self, successful: list[Any], failed: list[Any]) -> None:
        self.acked += len(successful) + len(failed)


def _run(p: dict[str, Any], shape: str, messages: bool) -> dict[str, Any]:
    import trioflow as tf
    from trioflow.abc import Outlet, Source

    n = p["n"]
    acker = _Counting()
    total = {"sum": 0, "count": 0}

    class Numbers(Source[int]):
        async def produce(self, out: Outlet) -> None:
            i = 0
            while i < n:
                room = await out.demand()
                hi = min(n, i + room)
                if messages:
                    await out.send_many([tf.Message(x, {"id": x}, acker) for x in range(i, hi)])
                else:
                    await out.send_many(list(range(i, hi)))
                i = hi

    async def work(x: int) -> int:
        return x

    async def save_batch(batch: list[int]) -> None:
        total["sum"] += sum(batch)
        total["count"] += len(batch)

    async def save(x: int) -> None:
        total["sum"] += x
        total["count"] += 1

    if shape == "batch":
        pipeline = Numbers() | tf.process(work, n=8) | tf.batch(100) | tf.sink(save_batch)
    else:
        pipeline = Numbers() | tf.sink(save)
    trio.run(pipeline.run)
    if messages and acker.acked != n:
        total["count"] = -acker.acked  # every message must reach its acknowledger
    return total


IMPLS = {
    "batch-plain": lambda p: _run(p, "batch", False),
    "batch-acks": lambda p: _run(p, "batch", True),
    "one-plain": lambda p: _run(p, "one", False),
    "one-acks": lambda p: _run(p, "one", True),
}
NOTES = {
    "batch-acks": "Broadway's shape (8 processors -> batch 100 -> sink), a Message per item",
    "one-acks": "one processor -> ack, a Message per item",
}
SKIPPED: dict[str, str] = {}
