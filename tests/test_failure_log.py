"""Failures are logged on the "trioflow" logger without flooding it: the first few of each
(stage, reason) in full, then counts."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._failure_log import EVERY, FIRST


async def test_the_first_failures_in_full_then_counts(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def parse(x: int) -> int:
        await trio.sleep(0.01)  # 1,000 items over 10 s of (virtual) time
        if x % 2:
            raise ValueError(f"odd {x}")
        if x % 10 == 4:
            raise KeyError("four")
        return x

    with caplog.at_level(logging.WARNING, logger="trioflow"):
        report = await (
            tf.from_iterable(range(2000)) | tf.process(parse) | tf.sink(lambda x: None)
        ).run()
    assert report.failed_by_reason == {"ValueError": 1000, "KeyError": 200}
    records = [r for r in caplog.records if r.name == "trioflow"]
    full = [r for r in records if "failed an item" in r.getMessage()]
    assert len(full) == 2 * FIRST  # per (stage, reason)
    first = full[0]
    assert first.exc_info is not None
    assert isinstance(first.exc_info[1], ValueError)  # with its traceback
    assert "parse' failed an item: ValueError: odd 1; the item: 1" in first.getMessage()
    assert sum("later ones counted every" in r.getMessage() for r in full) == 2
    counts = [r for r in records if "more item(s) failed" in r.getMessage()]
    assert 2 <= len(counts) <= 2 * (20 / EVERY + 1)  # a few records, not 1,200
    total = {
        reason: sum(
            int(r.getMessage().split("': ")[1].split(" ")[0])
            for r in counts
            if f"failed with {reason}" in r.getMessage()
        )
        for reason in ("ValueError", "KeyError")
    }
    assert total == {"ValueError": 1000 - FIRST, "KeyError": 200 - FIRST}  # nothing uncounted
