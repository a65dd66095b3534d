"""W6 acknowledgement cost: W2 from a source with a recording acknowledger vs. plain data."""

from __future__ import annotations

from typing import Any

import trio

from ._common import w2_expected
from .w2_transforms import trioflow_pipeline

TITLE = "W6 acknowledgement cost"
DESCRIPTION = (
    "W2 ({n} ints, three non-suspending async stages, sink) from trioflow.testing.TestSource "
    "(every item a Message with a recording acknowledger) vs. from_iterable (plain data)"
)
METRIC = "time"
BASELINE = "trioflow"
SIZES = {"default": {"n": 1_000_000}, "quick": {"n": 5_000}}


def expected(p: dict[str, Any]) -> dict[str, int]:
    return w2_expected(p["n"])


def run_plain(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    total = {"sum": 0, "count": 0}
    trio.run(trioflow_pipeline(tf.from_iterable(range(p["n"])), total).run)
    return total


def run_acked(p: dict[str, Any]) -> dict[str, Any]:
    from trioflow.testing import TestSource

    total = {"sum": 0, "count": 0}
    src = TestSource(range(p["n"]))
    trio.run(trioflow_pipeline(src, total).run)
    # every item must have been acked once, as successful
    if len(src.acked) != p["n"] or src.failed:
        total["count"] = -len(src.acked)
    return total


class _CountingAcknowledger:
    """The least an acknowledger can do: count (what trioflow's own acking costs)."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0

    async def ack(self, successful: list[Any], failed: list[Any]) -> None:
        self.acked += len(successful)
        self.failed += len(failed)


def run_counting(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    total = {"sum": 0, "count": 0}
    acker = _CountingAcknowledger()
    messages = (tf.Message(i, acknowledger=acker) for i in range(p["n"]))
    trio.run(trioflow_pipeline(tf.from_iterable(messages), total).run)
    if acker.acked != p["n"] or acker.failed:
        total["count"] = -acker.acked
    return total


IMPLS = {
    "trioflow": run_plain,
    "trioflow+acks": run_acked,
    "trioflow+count-acks": run_counting,
}
NOTES = {
    "trioflow": "from_iterable: plain data, no acknowledger",
    "trioflow+acks": "TestSource: a Message per item, acks recorded (and checked: all acked); "
    "this is the figure of the issue",
    "trioflow+count-acks": "a Message per item (made in the source's iterable) with an "
    "acknowledger that only counts: trioflow's own acking cost without TestSource's recording",
}
SKIPPED = {
    "peers": "W6 compares trioflow with itself",
}
