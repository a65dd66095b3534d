"""RedisStreamSource through a restart of the real redis-server (issue 13).

Each test starts its own redis-server (append-only, fsync always: the stream and the group's
pending list survive ``kill -9``), kills it while the pipeline runs, and starts it again on the
same port: the source reconnects with backoff, acks sent during the outage wait for the new
connection, and nothing is lost.
"""

from __future__ import annotations

import gc
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

import trioflow as tf
import trioflow.abc
from trioflow.connectors.redis import RedisStreamSource, connect

from .servers import RedisServer

pytestmark = [
    pytest.mark.server,
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),  # see own_server
]


class Events(tf.abc.Instrument):
    """Records the connection events of sources."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def source_disconnected(
        self, source: str, exc: BaseException, attempt: int, delay: float
    ) -> None:
        self.seen.append(("down", source, type(exc).__name__))

    def source_reconnected(self, source: str, attempts: int, downtime: float) -> None:
        self.seen.append(("up", source))


@pytest.fixture
def own_server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # coredis leaves the buffers of each connection that could not connect (during the
        # outage) to the garbage collector, and the log records of the outage keep them alive
        # (their exceptions' tracebacks): drop those and collect them here, where it is expected
        for when in ("setup", "call"):
            caplog.get_records(when).clear()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unclosed <MemoryObject", ResourceWarning)
            gc.collect()


async def fill(port: int, stream: str, start: int, stop: int) -> None:
    async with connect(port=port) as client:
        pipe = client.pipeline(transaction=False)
        async with pipe:
            for i in range(start, stop):
                pipe.xadd(stream, {"n": str(i)})


async def group_state(port: int, stream: str, group: str) -> tuple[int, int]:
    """(entries pending in the group, entries not yet delivered to it)."""
    async with connect(port=port) as client:
        for info in await client.xinfo_groups(stream):
            if info["name"] == group:
                return int(info["pending"]), int(info["lag"] or 0)
    raise AssertionError(f"no group {group!r}")


async def kill(server: RedisServer) -> None:
    await trio.to_thread.run_sync(server.kill)


async def restart(server: RedisServer) -> None:
    await trio.to_thread.run_sync(server.start)


async def test_a_redis_restart_is_survived_without_loss(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of Redis mid-run, 1.5 s down, started again: the run goes on (default policy)."""
    port = own_server.port
    await fill(port, "events", 0, 300)
    seen: list[tuple[int, int]] = []  # (n, delivery_count)
    halfway = trio.Event()
    done = trio.Event()

    async def save(batch: list[tf.Message[dict[str, str]]]) -> None:
        await trio.sleep(0.01)
        seen.extend((int(m.data["n"]), m.metadata["delivery_count"]) for m in batch)
        if len(seen) >= 60:
            halfway.set()
        if {n for n, _ in seen} == set(range(400)):
            done.set()

    events = Events()
    source = RedisStreamSource("events", "g", "w1", port=port, block=0.05)
    pipeline = (
        source | tf.process(lambda f: f, n=4) | tf.batch(20, 0.05) | tf.sink(save, messages=True)
    )
    with caplog.at_level(logging.WARNING, logger="trioflow"), trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(partial(pipeline.serve, telemetry=events))
            await halfway.wait()
            await kill(own_server)
            await trio.sleep(1.5)
            await restart(own_server)
            await fill(port, "events", 300, 400)
            await done.wait()
            handle.stop()
    report = handle.report
    assert report is not None
    counts = Counter(n for n, _ in seen)
    assert set(counts) == set(range(400))  # nothing lost
    duplicated = sum(c - 1 for c in counts.values())
    assert duplicated <= 20  # at most what was in flight between a sink call and its ack
    assert report.ack_errors == 0
    assert report.unsettled == 0
    assert await group_state(port, "events", "g") == (0, 0)
    # delivery_count stays Redis's own count: the k-th sighting of an entry is delivery k or later
    sightings: Counter[int] = Counter()
    for n, count in seen:
        sightings[n] += 1
        assert count >= sightings[n]
    assert all(count == 1 for n, count in seen if counts[n] == 1) or duplicated > 0
    kinds = [e[0] for e in events.seen]
    assert "down" in kinds
    assert kinds[-1] == "up"
    assert kinds.count("up") == 1
    assert events.seen[0][1] == "redis:events/g"
    assert "lost its connection" in caplog.text
    assert "reconnected after" in caplog.text


async def test_acks_sent_during_an_outage_wait_for_the_new_connection(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every entry is in the sink when Redis dies: all acks happen during the outage."""
    port = own_server.port
    await fill(port, "events", 0, 50)
    seen: list[int] = []
    all_in = trio.Event()
    killed = trio.Event()

    async def save(batch: list[dict[str, str]]) -> None:
        seen.extend(int(f["n"]) for f in batch)
        if len(seen) == 50:
            all_in.set()
        await killed.wait()

    source = RedisStreamSource("events", "g", "w1", port=port, block=0.05)
    pipeline = source | tf.batch(10, 0.05) | tf.sink(save, n=5)
    with caplog.at_level(logging.WARNING, logger="trioflow"), trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(pipeline.serve)
            await all_in.wait()
            await kill(own_server)
            killed.set()  # the sink returns: its acks find Redis gone
            await trio.sleep(1.5)
            await restart(own_server)
            while handle.metrics.acked < 50:  # noqa: ASYNC110 - the acks are polled
                await trio.sleep(0.05)
            handle.stop()
    report = handle.report
    assert report is not None
    assert sorted(seen) == list(range(50))  # each once: none came back, none lost
    assert report.acked == 50
    assert report.ack_errors == 0
    assert await group_state(port, "events", "g") == (0, 0)
    assert "waits for Redis" in caplog.text


async def test_an_outage_past_give_up_after_fails_the_run_and_leaves_entries_pending(
    own_server: RedisServer,
) -> None:
    from trioflow.connectors import Reconnect, SourceUnavailable

    port = own_server.port
    await fill(port, "events", 0, 20)
    all_in = trio.Event()
    killed = trio.Event()
    seen = 0

    async def save(item: dict[str, str]) -> None:
        nonlocal seen
        seen += 1
        if seen == 20:
            all_in.set()
        await killed.wait()

    policy = Reconnect(backoff=tf.Backoff.constant(0.1), give_up_after=1.0)
    source = RedisStreamSource("events", "g", "w1", port=port, block=0.05, reconnect=policy)
    start = 0.0

    async def outage() -> None:
        nonlocal start
        await all_in.wait()
        await kill(own_server)
        start = trio.current_time()
        killed.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outage)
            with pytest.raises(tf.PipelineError) as info:
                await (source | tf.sink(save, n=20)).run()
    assert 1.0 <= trio.current_time() - start < 5.0
    causes = []
    exc: BaseException | None = info.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__
    assert any(isinstance(c, SourceUnavailable) for c in causes)
    assert "redis:events/g: no connection for" in str(info.value.__cause__)
    # the entries handed over before the outage were never acked: still pending, not lost
    await restart(own_server)
    assert await group_state(port, "events", "g") == (20, 0)


async def test_a_drain_during_an_outage_ends_and_leaves_entries_pending(
    own_server: RedisServer,
) -> None:
    port = own_server.port
    await fill(port, "events", 0, 20)
    all_in = trio.Event()
    killed = trio.Event()
    seen = 0

    async def save(item: dict[str, str]) -> None:
        nonlocal seen
        seen += 1
        if seen == 20:
            all_in.set()
        await killed.wait()

    pipeline = RedisStreamSource("events", "g", "w1", port=port, block=0.05) | tf.sink(save, n=20)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(partial(pipeline.serve, drain_timeout=1.0))
            await all_in.wait()
            await kill(own_server)
            killed.set()
            await trio.sleep(0.3)
            stopped_at = trio.current_time()
            handle.stop()
    # the default policy would wait 60 s for Redis: the drain deadline ends the run first
    assert trio.current_time() - stopped_at < 3.0
    report = handle.report
    assert report is not None
    assert report.unsettled == 20
    await restart(own_server)
    assert await group_state(port, "events", "g") == (20, 0)
