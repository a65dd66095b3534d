"""SimulatedBroker: the semantics of a real broker, and faults, deterministic for a seed."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import (
    ConsumerCrashed,
    CrashConsumer,
    DuplicateDelivery,
    RestartBroker,
    SimulatedBroker,
    SlowPartition,
)


async def run_until_settled(pipeline: tf.Pipeline, broker: SimulatedBroker, topic: str) -> Any:
    """Run ``pipeline`` until every message of ``topic`` is settled in group "g", then drain."""
    stop = trio.Event()
    reports: list[tf.RunReport] = []

    async def runner() -> None:
        reports.append(await pipeline.run(stop=stop))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        while broker.unsettled(topic, "g"):
            await broker._wait(topic, "g")
        stop.set()
    return reports[0]


def test_publish_partitions_by_key_and_ids() -> None:
    broker = SimulatedBroker(seed=1)
    broker.create_topic("t", partitions=4)
    a = broker.publish("t", 1, key="k")
    b = broker.publish("t", 2, key="k")
    assert a.rsplit("/", 2)[1] == b.rsplit("/", 2)[1]  # same key, same partition
    assert [m.offset for m in broker.messages("t") if m.id in (a, b)] == [0, 1]
    with pytest.raises(ValueError, match=r"^topic 't' exists with 4 partitions, not 2$"):
        broker.create_topic("t", partitions=2)


def test_source_options_are_validated() -> None:
    broker = SimulatedBroker()
    with pytest.raises(ValueError, match=r"^on_failure='drop' must be one of"):
        broker.source("t", "g", on_failure="drop")
    with pytest.raises(ValueError, match=r"^max_deliveries=0 must be a positive integer or None$"):
        broker.source("t", "g", max_deliveries=0)


async def test_delivers_everything_once_with_metadata(autojump_clock: Any) -> None:
    broker = SimulatedBroker(seed=2, partitions=3)
    for i in range(25):
        broker.publish("t", i, headers={"n": i})
    seen: list[tf.Message[Any]] = []

    def keep(m: tf.Message[Any]) -> None:
        seen.append(m)

    report = await run_until_settled(
        broker.source("t", "g", "c0") | tf.sink(keep, messages=True), broker, "t"
    )
    assert sorted(m.data for m in seen) == list(range(25))
    assert report.acked == 25
    assert report.unsettled == 0
    m = seen[0]
    assert m.metadata["delivery_count"] == 1
    assert m.metadata["headers"] == {"n": m.data}
    assert m.metadata["id"] == f"t/{m.metadata['partition']}/{m.metadata['offset']}"
    # per partition, in log order
    for p in range(3):
        offsets = [x.metadata["offset"] for x in seen if x.metadata["partition"] == p]
        assert offsets == sorted(offsets)
    assert all(broker.outcome("t", "g", x.id) == "acked" for x in broker.messages("t"))


async def test_failure_actions_and_dead_letter_topic(autojump_clock: Any) -> None:
    broker = SimulatedBroker(seed=3, redeliver_delay=2.0)
    for x in ["ok", "dead", "drop", "again"]:
        broker.publish("t", x)
    calls: list[tuple[str, int]] = []

    def handle(m: tf.Message[Any]) -> Any:
        calls.append((m.data, m.metadata["delivery_count"]))
        if m.data == "dead":
            return m.fail("bad")
        if m.data == "drop":
            return m.fail("ignore", action="discard")
        if m.data == "again" and m.metadata["delivery_count"] < 3:
            return m.fail("later", action="redeliver")
        return None

    await run_until_settled(broker.source("t", "g") | tf.sink(handle, messages=True), broker, "t")
    ids = {m.data: m.id for m in broker.messages("t")}
    assert broker.outcome("t", "g", ids["dead"]) == "dead_letter"
    assert broker.outcome("t", "g", ids["drop"]) == "discard"
    assert broker.outcome("t", "g", ids["again"]) == "acked"
    assert ("again", 3) in calls
    assert broker.delivery_count("t", "g", ids["again"]) == 3
    [dead] = broker.dead_letters("t")
    assert dead.data == "dead"
    assert dead.headers == {"reason": "bad", "original_id": ids["dead"], "delivery_count": 1}
    assert trio.current_time() == 4.0  # two redeliver delays of 2 s


async def test_max_deliveries_dead_letters_without_reaching_stages(autojump_clock: Any) -> None:
    broker = SimulatedBroker(seed=4)
    broker.publish("t", "poison")
    calls = 0

    def always_fail(x: Any) -> None:
        nonlocal calls
        calls += 1
        raise ValueError(x)

    src = broker.source("t", "g", on_failure="redeliver", max_deliveries=2)
    await run_until_settled(src | tf.sink(always_fail), broker, "t")
    assert calls == 2
    [dead] = broker.dead_letters("t")
    assert dead.headers["reason"] == "poison: delivered 3 times (max_deliveries=2)"


async def test_visibility_timeout_redelivers_unacked(autojump_clock: Any) -> None:
    broker = SimulatedBroker(seed=5, visibility_timeout=10.0)
    broker.publish("t", "slow")
    counts: list[int] = []

    async def slow(m: tf.Message[Any]) -> None:
        counts.append(m.metadata["delivery_count"])
        if m.metadata["delivery_count"] == 1:
            await trio.sleep(15.0)  # longer than the lease

    await run_until_settled(
        broker.source("t", "g") | tf.sink(slow, n=2, messages=True), broker, "t"
    )
    assert counts == [1, 2]
    assert ("t", "t/0/0") in broker.expired


async def test_crash_consumer_raises_and_messages_come_back_after_timeout(
    autojump_clock: Any,
) -> None:
    broker = SimulatedBroker(seed=6, visibility_timeout=5.0)
    for i in range(3):
        broker.publish("t", i)
    gate = trio.Event()

    async def stuck(x: Any) -> None:
        await gate.wait()

    async def crash_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        broker.crash_consumer("c0")
        gate.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(crash_soon)
        with pytest.raises(tf.PipelineError) as info:
            await (broker.source("t", "g", "c0") | tf.sink(stuck)).run()
    assert isinstance(info.value.__cause__, ConsumerCrashed)
    assert broker.unsettled("t", "g") == ["t/0/0", "t/0/1", "t/0/2"]
    start = trio.current_time()
    got: list[tf.Message[Any]] = []
    await run_until_settled(
        broker.source("t", "g", "c1") | tf.sink(got.append, messages=True), broker, "t"
    )
    assert trio.current_time() - start == pytest.approx(5.0)  # the visibility timeout
    assert sorted(m.metadata["delivery_count"] for m in got) == [2, 2, 2]


async def test_restart_redelivers_in_flight_at_once(autojump_clock: Any) -> None:
    broker = SimulatedBroker(seed=7)
    for i in range(4):
        broker.publish("t", i)
    seen: list[tuple[int, int]] = []
    restarted = False

    async def handle(m: tf.Message[Any]) -> None:
        nonlocal restarted
        seen.append((m.data, m.metadata["delivery_count"]))
        if not restarted:
            restarted = True
            broker.restart(downtime=3.0)
        await trio.sleep(1.0)

    await run_until_settled(
        broker.source("t", "g", count=4) | tf.sink(handle, n=4, messages=True), broker, "t"
    )
    assert sorted(d for d, c in seen if c == 2) == [0, 1, 2, 3]  # all came back
    assert {("t", f"t/0/{i}") for i in range(4)} <= broker.in_flight_at_fault
    assert trio.current_time() >= 3.0  # nothing during the downtime


async def test_duplicate_and_slow_partition(autojump_clock: Any) -> None:
    broker = SimulatedBroker(seed=8)
    broker.create_topic("t", partitions=2)
    for i in range(6):
        broker.publish("t", i, key=i % 2)
    broker.duplicate("t", 0)
    slow_p = broker.messages("t")[0].partition
    broker.slow_partition("t", slow_p, 5.0)
    seen: list[tuple[Any, int, float]] = []

    def keep(m: tf.Message[Any]) -> None:
        seen.append((m.metadata["id"], m.metadata["delivery_count"], trio.current_time()))

    src = broker.source("t", "g", count=1)
    await run_until_settled(src | tf.sink(keep, messages=True), broker, "t")
    first = broker.messages("t")[0].id
    assert [c for i, c, _ in seen if i == first] == [1, 2]
    slow_times = [t for i, _, t in seen if i.split("/")[1] == str(slow_p)]
    assert slow_times[-1] >= 10.0  # one chunk per 5 s


def log_of_run(seed: int) -> list[tuple[float, str, str]]:
    async def main() -> list[tuple[float, str, str]]:
        broker = SimulatedBroker(seed=seed, partitions=3, visibility_timeout=3.0)
        for i in range(40):
            broker.publish("t", i)
        broker.schedule(
            [CrashConsumer("c0", after=5), DuplicateDelivery(7), RestartBroker(after=20),
             SlowPartition(1, 0.5)],
            topic="t",
        )  # fmt: skip

        async def work(x: int) -> None:
            await trio.sleep(0.1 * (x % 4))

        async def consumer(name: str) -> None:
            while broker.unsettled("t", "g"):
                try:
                    await (broker.source("t", "g", name) | tf.sink(work, n=3)).run(stop=done)
                except tf.PipelineError:
                    await trio.sleep(1.0)

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for name in ["c0", "c1"]:
                nursery.start_soon(consumer, name)
            while broker.unsettled("t", "g"):
                await broker._wait("t", "g")
            done.set()
        return broker.log

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_same_seed_same_run() -> None:
    from trioflow.testing._service import _restore_trio, _seed_trio

    logs = []
    for seed in [11, 11, 12]:
        state = _seed_trio(seed)
        try:
            logs.append(log_of_run(seed))
        finally:
            _restore_trio(state)
    assert logs[0] == logs[1]
    assert any(e[1] == "crash" for e in logs[0])
    assert any(e[1] == "restart" for e in logs[0])
    assert logs[0] != logs[2]
