"""Redis Streams connector against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSink, RedisStreamSource, connect

from .servers import RedisServer

_names = itertools.count()


def names() -> tuple[str, str]:
    n = next(_names)
    return f"stream{n}", f"group{n}"


async def fill(server: RedisServer, stream: str, count: int) -> None:
    async with connect(port=server.port) as client:
        for start in range(0, count, 500):
            pipe = client.pipeline(transaction=False)
            async with pipe:
                for i in range(start, min(count, start + 500)):
                    pipe.xadd(stream, {"n": str(i)})


async def pending(server: RedisServer, stream: str, group: str) -> int:
    async with connect(port=server.port) as client:
        info = await client.xpending(stream, group)
        return int(info.pending)


async def test_consume_ack_and_dead_letter(redis_server: RedisServer) -> None:
    stream, group = names()
    await fill(redis_server, stream, 1000)
    seen: list[int] = []

    async def check(fields: dict[str, str]) -> int:
        n = int(fields["n"])
        if n % 100 == 7:
            raise ValueError(f"bad {n}")
        return n

    async def save(batch: list[int]) -> None:
        seen.extend(batch)
        if len(seen) >= 990:
            stop.set()

    stop = trio.Event()
    source = RedisStreamSource(stream, group, "c1", port=redis_server.port, block=0.05)
    pipeline = source | tf.process(check, n=4) | tf.batch(50, 0.1) | tf.sink(save)
    report = await pipeline.run(stop=stop)
    assert sorted(seen) == [n for n in range(1000) if n % 100 != 7]
    assert report.acked == 990
    assert report.failed == 10
    assert report.failed_by_reason == {"ValueError": 10}
    assert await pending(redis_server, stream, group) == 0
    async with connect(port=redis_server.port) as client:
        dead = await client.xrange(f"{stream}:dead")
    assert len(dead) == 10
    fields = sorted((dict(d.field_values) for d in dead), key=lambda f: int(f["n"]))
    assert [f["n"] for f in fields] == [str(n) for n in range(7, 1000, 100)]
    assert fields[0]["trioflow_reason"].startswith("ValueError: bad 7")


async def test_reads_follow_demand(redis_server: RedisServer) -> None:
    """Back-pressure reaches the broker: entries read but unacked stay under the bound."""
    stream, group = names()
    await fill(redis_server, stream, 3000)
    peak = 0
    stop = trio.Event()
    done = 0

    async def slow(batch: list[Any]) -> None:
        nonlocal done, peak
        await trio.sleep(0.01)
        done += len(batch)
        peak = max(peak, await pending(redis_server, stream, group))
        if done >= 600:
            stop.set()

    source = RedisStreamSource(stream, group, "c1", port=redis_server.port, block=0.05)
    p = (
        source
        | tf.process(lambda f: f, buffer=32)
        | tf.batch(10, 0.05, buffer=16)
        | tf.sink(slow, buffer=4)
    )
    await p.run(stop=stop)
    # buffers 32 + 16 + 4 batches of 10 and the ack backlog: far below the 3000 available
    assert peak < 700
    assert await pending(redis_server, stream, group) == 0


async def test_dead_consumer_entries_are_claimed_and_poison_dead_lettered(
    redis_server: RedisServer,
) -> None:
    stream, group = names()
    await fill(redis_server, stream, 20)
    async with connect(port=redis_server.port) as client:
        await client.xgroup_create(stream, group, identifier="0", mkstream=True)
        # "dead" reads 20 entries and never acks them; n=3 was already delivered 5 times
        got = await client.xreadgroup(group, "dead", streams={stream: ">"}, count=20)
        ids = [e.identifier for e in got[stream]]
        for _ in range(5):
            await client.xclaim(stream, group, "dead", min_idle_time=0, identifiers=[ids[3]])
    await trio.sleep(0.2)
    stop = trio.Event()
    seen: list[str] = []

    async def save(fields: dict[str, str]) -> None:
        seen.append(fields["n"])
        if len(seen) == 19:
            stop.set()

    source = RedisStreamSource(
        stream,
        group,
        "alive",
        port=redis_server.port,
        claim_idle=0.1,
        block=0.05,
        max_deliveries=5,
    )
    report = await (source | tf.sink(save)).run(stop=stop)
    assert sorted(seen, key=int) == [str(i) for i in range(20) if i != 3]
    # one read by "dead", five claims, and the claim by "alive": seven deliveries
    assert report.failed_by_reason == {"poison: delivered 7 times (max_deliveries=5)": 1}
    assert await pending(redis_server, stream, group) == 0
    async with connect(port=redis_server.port) as client:
        dead = await client.xrange(f"{stream}:dead")
    assert [dict(d.field_values)["n"] for d in dead] == ["3"]


async def test_restarted_consumer_gets_its_own_pending_back(redis_server: RedisServer) -> None:
    stream, group = names()
    await fill(redis_server, stream, 50)
    async with connect(port=redis_server.port) as client:
        await client.xgroup_create(stream, group, identifier="0", mkstream=True)
        await client.xreadgroup(group, "w1", streams={stream: ">"}, count=30)
    seen: list[dict[str, Any]] = []
    stop = trio.Event()

    async def save(message: tf.Message[dict[str, str]]) -> None:
        seen.append(message.metadata)
        if len(seen) == 50:
            stop.set()

    source = RedisStreamSource(stream, group, "w1", port=redis_server.port, block=0.05)
    await (source | tf.sink(save, messages=True)).run(stop=stop)
    # the 30 it had pending come back as second deliveries (one at a time, beside the 20 new
    # ones, which flow meanwhile: see test_redis_poison.py)
    seen.sort(key=lambda m: tuple(map(int, m["id"].split("-"))))
    assert [m["deliveries"] for m in seen] == [2] * 30 + [1] * 20
    # delivery_count is the same figure under its common name
    assert [m["delivery_count"] for m in seen] == [2] * 30 + [1] * 20
    assert await pending(redis_server, stream, group) == 0


async def test_sink_adds_batches(redis_server: RedisServer) -> None:
    stream, _ = names()
    async with connect(port=redis_server.port) as client:
        out = RedisStreamSink(client, stream)
        report = await (
            tf.from_iterable(range(1234))
            | tf.process(lambda n: {"n": n})
            | tf.batch(100)
            | tf.sink(out)
        ).run()
        assert report.acked == 1234
        assert await client.xlen(stream) == 1234
        entries = await client.xrange(stream, count=3)
    assert [dict(e.field_values)["n"] for e in entries] == ["0", "1", "2"]


def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "coredis", None)
    with pytest.raises(ImportError, match=r"pip install 'trioflow\[redis\]'"):
        connect()


async def test_pending_entries_deleted_since_they_were_read_are_acked_away(
    redis_server: RedisServer,
) -> None:
    stream, group = names()
    async with connect(port=redis_server.port) as client:
        await client.xgroup_create(stream, group, identifier="$", mkstream=True)
        ids = [await client.xadd(stream, {"n": str(i)}) for i in range(3)]
        await client.xreadgroup(group, "w1", streams={stream: ">"}, count=10)  # then "crash"
        await client.xdel(stream, [ids[0]])
    seen: list[str] = []
    stop = trio.Event()

    async def save(fields: dict[str, str]) -> None:
        seen.append(fields["n"])
        if len(seen) == 2:
            stop.set()

    source = RedisStreamSource(stream, group, "w1", port=redis_server.port, block=0.05)
    report = await (source | tf.sink(save)).run(stop=stop)
    assert sorted(seen) == ["1", "2"]
    assert report.unsettled == 0
    assert await pending(redis_server, stream, group) == 0
