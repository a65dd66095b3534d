"""A graceful drain of RedisStreamSource strands nothing it read: every entry Redis delivered to it
(``XREADGROUP ... >``, a retry's ``XCLAIM``) is handed over and acked by the drain; what it had
not read yet of its own retries stays pending, and a log line says how many and what happens to
them (re-read by a consumer of the same name at start, claimed by any after ``claim_idle``).

Before the fix a drain cancelled the blocking read in progress after Redis had answered it, so a
whole read (up to ``count`` entries) stayed pending, read but never handed over."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSource
from trioflow.connectors.redis import connect as redis_connect

from .servers import RedisServer


async def fill(client: Any, stream: str, count: int) -> None:
    for start in range(0, count, 500):
        pipe = client.pipeline(transaction=False)
        async with pipe:
            for i in range(start, min(count, start + 500)):
                pipe.xadd(stream, {"n": str(i)})


@pytest.mark.parametrize("stop_after", [1, 7, 50, 333])
async def test_a_drain_leaves_nothing_pending(redis_server: RedisServer, stop_after: int) -> None:
    stream, group = f"d-{uuid.uuid4().hex[:8]}", "g"
    async with redis_connect(port=redis_server.port) as client:
        await fill(client, stream, 2000)
        seen: list[str] = []
        stop = trio.Event()

        async def work(entry: dict[str, str]) -> None:
            await trio.sleep(0.001)
            seen.append(entry["n"])
            if len(seen) == stop_after:
                stop.set()

        source = RedisStreamSource(stream, group, "c1", port=redis_server.port, block=0.05)
        with trio.fail_after(30):
            report = await (source | tf.sink(work, n=4)).run(stop=stop)
        pending = await client.xpending(stream, group)
    assert report.acked == report.received == len(seen) >= stop_after
    assert pending.pending == 0  # nothing read and left behind


async def test_retries_not_reached_at_a_drain_are_left_pending_and_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    stream, group = f"d-{uuid.uuid4().hex[:8]}", "g"
    async with redis_connect(port=redis_server.port) as client:
        await fill(client, stream, 40)
        await client.xgroup_create(stream, group, identifier="0")
        # c1 had read all 40 when its process died: they are its pending entries
        await client.xreadgroup(group, "c1", streams={stream: ">"}, count=40)
        seen: list[str] = []
        stop = trio.Event()

        async def work(entry: dict[str, str]) -> None:
            seen.append(entry["n"])
            stop.set()  # a drain after the first retry: the others are not reached

        source = RedisStreamSource(
            stream, group, "c1", port=redis_server.port, block=0.05, claim_idle=60
        )
        with caplog.at_level(logging.WARNING, "trioflow"), trio.fail_after(30):
            report = await (source | tf.sink(work)).run(stop=stop)
        pending = await client.xpending(stream, group)
    assert report.acked == len(seen) >= 1
    assert pending.pending == 40 - len(seen)
    [line] = [r.getMessage() for r in caplog.records if "not retried" in r.getMessage()]
    assert f"stops with {40 - len(seen)} entries of its pending list not retried" in line
    assert "claim_idle=60" in line
    assert "'c1'" in line
