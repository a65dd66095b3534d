"""The consumer manager: start in one nursery, status, restart with backoff, ordered drain."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.abc import Outlet, Source


class Dropping(Source[int]):
    """Endless numbers; its first ``drops`` runs lose their "connection" after ``after`` items."""

    def __init__(self, drops: int, after: int = 3) -> None:
        self.drops = drops
        self.after = after
        self.runs = 0

    async def produce(self, out: Outlet) -> None:
        self.runs += 1
        i = 0
        while True:
            if self.runs <= self.drops and i == self.after:
                raise ConnectionResetError("broker went away")
            await out.send(i)
            i += 1
            await trio.sleep(0.1)

    @property
    def label(self) -> str:
        return "dropping"


def consumer(topic_name: str, log: list[Any], name: str | None = None) -> tf.Consumer:
    class C(tf.Consumer):
        topic = topic_name

        async def handle(self, data: int, ctx: tf.ConsumerContext) -> None:
            log.append((ctx.consumer, data))

    c = C()
    c.name = name or topic_name
    return c


async def test_restart_with_backoff_without_touching_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sources = {"flaky": Dropping(drops=2), "steady": Dropping(drops=0)}
    log: list[Any] = []
    manager = tf.ConsumerManager(
        [consumer("steady", log), consumer("flaky", log)],
        source_factory=lambda topic: sources[topic],
        restart_backoff=tf.Backoff.exponential(1.0),
    )
    async with trio.open_nursery() as nursery:
        assert await nursery.start(manager.serve) is manager
        first = manager.status()["steady"].metrics
        assert first is not None
        await trio.sleep(0.35)  # flaky dropped after 3 items (0.3 s): waiting 1 s
        st = manager.status()
        assert st["flaky"].state == "restarting"
        assert not st["flaky"].ready
        assert st["flaky"].healthy
        assert st["flaky"].last_error == (
            "PipelineError: stage 'dropping' stopped the pipeline: "
            "ConnectionResetError('broker went away') (from ConnectionResetError: broker went away)"
        )
        assert st["steady"].ready
        assert not manager.ready
        assert manager.healthy
        # second drop after 1 s of backoff + 0.3 s; then a 2 s backoff; then it stays up
        await trio.sleep(1.0 + 0.3 + 2.0 + 0.2)
        st = manager.status()
        assert st["flaky"].state == "running"
        assert st["flaky"].restarts == 2
        assert st["steady"].restarts == 0
        assert sources["steady"].runs == 1  # never restarted
        assert manager.ready
        manager.stop()
    assert {s.state for s in manager.status().values()} == {"stopped"}


async def test_drain_in_reverse_registration_order(autojump_clock: trio.testing.MockClock) -> None:
    events: list[tuple[str, str, float]] = []

    class Recording(Source[int]):
        def __init__(self, topic: str) -> None:
            self.topic = topic

        async def produce(self, out: Outlet) -> None:
            try:
                for i in range(1000):
                    await out.send(i)
                    await trio.sleep(0.1)
            finally:
                events.append(("source stopped", self.topic, trio.current_time()))

    class Slow(tf.Consumer):
        topic = "?"

        async def handle(self, data: int, ctx: tf.ConsumerContext) -> None:
            await trio.sleep(0.09)  # each drain waits for the item in flight

    consumers = []
    for name in "abc":
        c = Slow()
        c.name = name
        c.topic = name  # type: ignore[misc]
        consumers.append(c)
    manager = tf.ConsumerManager(consumers, source_factory=Recording)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.serve)
        await trio.sleep(1.02)
        manager.stop()
    assert [topic for _, topic, _ in events] == ["c", "b", "a"]
    times = [t for _, _, t in events]
    assert times[0] < times[1] <= times[2], events  # b stopped only once c had drained
    assert [s.state for s in manager.status().values()] == ["stopped"] * 3
    assert all(
        s.metrics is not None and s.metrics.unsettled == 0 for s in manager.status().values()
    )


async def test_gives_up_after_max_restarts(autojump_clock: trio.testing.MockClock) -> None:
    class Broken(Source[int]):
        async def produce(self, out: Outlet) -> None:
            raise OSError("connection refused")

    log: list[Any] = []
    manager = tf.ConsumerManager(
        [consumer("x", log)],
        source_factory=lambda topic: Broken(),
        restart_backoff=tf.Backoff.constant(1.0),
        max_restarts=2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.serve)
        await trio.sleep(10)
        st = manager.status()["x"]
        assert st.state == "failed"
        assert not st.healthy
        assert st.restarts == 2
        assert not manager.healthy
        manager.stop()


def test_registration_errors() -> None:
    log: list[Any] = []
    manager = tf.ConsumerManager(source_factory=lambda topic: [])
    manager.add(consumer("x", log))
    with pytest.raises(ValueError, match=r"^a consumer named 'x' is already registered$"):
        manager.add(consumer("x", log))
    with pytest.raises(TypeError, match=r"is not a trioflow.Consumer$"):
        manager.add(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"no source factory for topic 'y'"):
        tf.ConsumerManager([consumer("y", log)])
