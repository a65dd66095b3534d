"""The Redis Streams source reports its consumer group's lag and pending count."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSource, connect

from .servers import RedisServer

pytestmark = pytest.mark.server


async def test_lag_and_pending_in_report_and_snapshot(redis_server: RedisServer) -> None:
    stream, group = "figures", "g"
    async with connect(port=redis_server.port) as client:
        for i in range(30):
            await client.xadd(stream, {"i": str(i)})
    release = trio.Event()

    async def hold(item: Any) -> None:
        await release.wait()

    source = RedisStreamSource(stream, group, "c1", port=redis_server.port, block=0.05, count=10)
    pipeline = source | tf.process(lambda x: x, buffer=10) | tf.sink(hold, buffer=10)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        for _ in range(200):  # the source reads XINFO GROUPS as it starts
            if handle.snapshot()["sources"]:
                break
            await trio.sleep(0.05)
        figures = handle.snapshot()["sources"][source.label]
        assert set(figures) == {"lag", "pending"}
        assert figures["lag"] + figures["pending"] == 30
        release.set()
        handle.stop()
        report = await handle.wait()
    assert report.sources[source.label]["lag"] >= 0
