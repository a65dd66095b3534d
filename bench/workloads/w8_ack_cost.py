"""W8 acknowledgement cost on Broadway's own shapes: messages with an acknowledger vs plain data.

The source is written the way the docs tell connector authors (``trioflow.abc.Source``:
``await out.demand()``, then hand the chunk over), once with plain data (``send_many``) and once
as messages with an acknowledger that counts (the least a broker's acknowledger does), handed
over with ``send_bulk`` (each item's id is the item; its metadata ``{"id": id}``, built only if
needed) as the broker connectors do. Two shapes, as in the issue: 8 processors of trivial work
-> batch(100) -> a sink; and one processor -> ack. The ``*-messages`` rows build a
``tf.Message`` per item instead (``send_many``), for comparison.
"""

from __future__ import annotations

from typing import Any

import trio

TITLE = "W8 acknowledgement cost (Broadway's shapes)"
DESCRIPTION = (
    "{n} items from a trioflow.abc.Source: plain data, or messages with a counting "
    "acknowledger handed over in bulk (send_bulk); shapes: process(n=8) -> batch(100) -> sink, "
    "and one sink"
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

    async def ack_ids(self, ids: list[Any]) -> None:
        self.acked += len(ids)


def _run(p: dict[str, Any], shape: str, messages: str) -> dict[str, Any]:
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
                if messages == "bulk":
                    await out.send_bulk(list(range(i, hi)), acknowledger=acker)
                elif messages == "each":
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
    "batch-plain": lambda p: _run(p, "batch", ""),
    "batch-acks": lambda p: _run(p, "batch", "bulk"),
    "batch-messages": lambda p: _run(p, "batch", "each"),
    "one-plain": lambda p: _run(p, "one", ""),
    "one-acks": lambda p: _run(p, "one", "bulk"),
    "one-messages": lambda p: _run(p, "one", "each"),
}
NOTES = {
    "batch-acks": "Broadway's shape (8 processors -> batch 100 -> sink), messages via send_bulk",
    "batch-messages": "the same with a tf.Message built per item (send_many)",
    "one-acks": "one processor -> ack, messages via send_bulk",
    "one-messages": "the same with a tf.Message built per item (send_many)",
}
SKIPPED: dict[str, str] = {}
