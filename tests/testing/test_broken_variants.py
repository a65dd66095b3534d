"""The kit catches deliberately broken services, each in its own way, with the shortest schedule.

Each variant breaks one promise a broker consumer makes: a source that acks before the sink, a
sink that drops an item, a connector that commits past unfinished work, and a poison handler that
dead-letters a good message. The correct twin of each passes the same checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.abc import Outlet, Source
from trioflow.connectors._offsets import PartitionOffsets
from trioflow.testing import (
    BrokerFault,
    CrashConsumer,
    DelayAcks,
    DuplicateDelivery,
    RestartBroker,
    ServiceExpect,
    ServiceViolation,
    SimulatedBroker,
    SimulatedSource,
    check_service,
)


def fresh_broker(n: int = 20, seed: int = 0, **options: Any) -> SimulatedBroker:
    broker = SimulatedBroker(seed=seed, **options)
    for i in range(n):
        broker.publish("orders", i)
    return broker


class NoAck:
    async def ack(self, successful: list[Any], failed: list[Any]) -> None:
        pass


class Wrapped(Source[Any]):
    """A source around a SimulatedSource whose hand-over goes through ``outlet(out, acker)``."""

    def __init__(self, inner: SimulatedSource, outlet: Any) -> None:
        self.inner = inner
        self.outlet = outlet

    def open(self) -> AbstractAsyncContextManager[Source[Any]]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Source[Any]]:
        async with self.inner.open() as run:
            yield Running(run, self.outlet)

    @property
    def label(self) -> str:
        return self.inner.label


class Running(Source[Any]):
    def __init__(self, run: Any, outlet: Any) -> None:
        self.run = run
        self.outlet = outlet

    async def produce(self, out: Outlet) -> None:
        await self.run.produce(self.outlet(out))

    @property
    def label(self) -> str:
        return str(self.run.label)


class Proxy:
    """An outlet that passes everything on, for the variants to override ``send_bulk``."""

    def __init__(self, out: Outlet) -> None:
        self.out = out

    async def demand(self) -> int:
        return await self.out.demand()


# -- 1. a source that acks before the sink ---------------------------------------------------


class AckAtPull(Proxy):
    async def send_bulk(self, data: list[Any], *, acknowledger: Any, **kw: Any) -> None:
        await acknowledger.ack_ids(list(kw["ids"]))  # the bug: acked as soon as it is pulled
        await self.out.send_bulk(data, acknowledger=NoAck(), **kw)


async def save(batch: list[Any]) -> None:
    await trio.sleep(0.1)


def test_source_acking_before_the_sink_is_caught() -> None:
    def build(source: SimulatedSource) -> tf.Pipeline:
        return Wrapped(source, AckAtPull) | tf.batch(5, 1.0) | tf.sink(save)

    with pytest.raises(ServiceViolation) as info:
        check_service(build, fresh_broker(), "orders", expect=[])
    assert "[no early ack] message orders/0/0 (0) delivery 1 was acked by c0 at t=0" in str(
        info.value
    )
    assert "before its last stage finished" in str(info.value)
    # the correct source passes
    check_service(
        lambda s: s | tf.batch(5, 1.0) | tf.sink(save), fresh_broker(), "orders", expect=[]
    )


# -- 2. a sink that drops an item --------------------------------------------------------------


def test_sink_dropping_an_item_is_caught() -> None:
    saved: set[int] = set()

    async def save_all_but_last(batch: list[tf.Message[Any]]) -> None:
        saved.update(m.data for m in batch[:-1])  # the bug: the last one is lost, yet acked

    def build(source: SimulatedSource) -> tf.Pipeline:
        return source | tf.batch(4, 1.0) | tf.sink(save_all_but_last, messages=True)

    expect = ServiceExpect(processed=lambda x: x in saved)
    with pytest.raises(ServiceViolation, match=r"while expect.processed\(data\) is False"):
        check_service(build, fresh_broker(), "orders", expect=expect)

    async def save_every_one(batch: list[tf.Message[Any]]) -> None:
        saved.update(m.data for m in batch)

    saved.clear()
    check_service(
        lambda s: s | tf.batch(4, 1.0) | tf.sink(save_every_one, messages=True),
        fresh_broker(),
        "orders",
        expect=expect,
    )


def test_stage_dropping_an_item_before_the_sink_is_caught_without_an_effect_check() -> None:
    def build(source: SimulatedSource) -> tf.Pipeline:
        # the bug: an item lost on the way (a filter acks what it drops) never reaches the sink
        return source | tf.filter(lambda x: x != 7) | tf.sink(save)

    with pytest.raises(ServiceViolation, match=r"message orders/0/7 \(7\) delivery 1 was acked"):
        check_service(build, fresh_broker(), "orders", expect=[])


# -- 3. a connector that commits past unfinished work -----------------------------------------


class Committing(Proxy):
    """A Kafka-style connector: settling moves a commit position per partition, and committing
    acks every delivery below it. ``broken``: the position is one past the highest settled
    offset (past work still in flight); else trioflow's ``PartitionOffsets`` (the lowest
    unsettled offset), what the Kafka source uses."""

    broken = False

    async def send_bulk(self, data: list[Any], *, acknowledger: Any, **kw: Any) -> None:
        acker = CommitAcker(acknowledger, self.broken)
        await self.out.send_bulk(data, acknowledger=acker.track(kw["metadata"]), **kw)


class BrokenCommitting(Committing):
    broken = True


class CommitAcker:
    """Per run, one shared position per partition (kept on the inner acknowledger)."""

    def __init__(self, inner: Any, broken: bool) -> None:
        self.inner = inner
        self.broken = broken
        if not hasattr(inner, "commit_state"):
            inner.commit_state = ({}, {}, {})
        state = inner.commit_state
        #: partition -> PartitionOffsets, partition -> {offset: receipt}, partition -> highest
        self.tracks: dict[int, PartitionOffsets] = state[0]
        self.handed: dict[int, dict[int, Any]] = state[1]
        self.highest: dict[int, int] = state[2]

    def track(self, metas: Sequence[dict[str, Any]]) -> CommitAcker:
        for m in metas:
            p = m["partition"]
            self.tracks.setdefault(p, PartitionOffsets()).handed([m["offset"]])
            self.handed.setdefault(p, {})[m["offset"]] = m["receipt"]
        return self

    async def ack_ids(self, ids: list[Any]) -> None:
        await self._settled(ids)

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        for m in failed:
            self.handed[m.metadata["partition"]].pop(m.metadata["offset"], None)
            self.tracks[m.metadata["partition"]].settle(m.metadata["offset"])
        if failed:
            await self.inner.ack([], failed)
        await self._settled([m.metadata["receipt"] for m in successful])

    async def _settled(self, receipts: list[Any]) -> None:
        touched: set[int] = set()
        for mid, _, _ in receipts:
            _, p, off = mid.rsplit("/", 2)
            part, offset = int(p), int(off)
            self.tracks[part].settle(offset)
            self.highest[part] = max(self.highest.get(part, -1), offset)
            touched.add(part)
        commits: list[Any] = []
        for part in touched:
            position = self.highest[part] + 1 if self.broken else self.tracks[part].commit
            below = [off for off in self.handed[part] if off < position]
            commits += [self.handed[part].pop(off) for off in sorted(below)]
        if commits:
            await self.inner.ack_ids(commits)


async def uneven(x: int) -> int:
    await trio.sleep(0.3 if x % 3 == 0 else 0.01)  # later offsets often finish first
    return x


def committing_service(outlet: type[Committing]) -> Any:
    def build(source: SimulatedSource) -> tf.Pipeline:
        return Wrapped(source, outlet) | tf.process(uneven, n=4) | tf.sink(save)

    return build


def test_connector_committing_past_unfinished_work_is_caught() -> None:
    # the lease (longer than the work) is shorter than the restart delay, so a crashed
    # consumer's messages are back (in log order) before it starts again: a partition's
    # offsets are handed over in order, as Kafka does
    options: dict[str, Any] = {"visibility_timeout": 5.0}
    with pytest.raises(ServiceViolation, match=r"\[no early ack\] message orders/0/0 \(0\)"):
        check_service(
            committing_service(BrokenCommitting), fresh_broker(**options), "orders", expect=[]
        )
    check_service(
        committing_service(Committing),
        fresh_broker(**options),
        "orders",
        expect=[],
        faults=[CrashConsumer("c0", after=5), CrashConsumer("c0", after=12)],
        restart_delay=10.0,
    )


# -- 4. a poison handler that dead-letters a good message --------------------------------------


def suspicious(m: tf.Message[Any]) -> tf.Message[Any]:
    # the bug: "delivered before, so it must be poison"; a crash redelivers good messages too
    if m.metadata["delivery_count"] > 1:
        return m.fail("suspected poison", action="dead_letter")
    return m


def test_poison_handler_dead_lettering_a_good_message_is_caught_and_shrunk() -> None:
    def build(source: SimulatedSource) -> tf.Pipeline:
        return source | tf.process(suspicious, messages=True) | tf.batch(4, 1.0) | tf.sink(save)

    # no fault: nothing is redelivered, the bug hides
    check_service(build, fresh_broker(), "orders", expect=[])
    schedule: list[BrokerFault] = [
        DelayAcks(0.2, after=0),
        DuplicateDelivery(3),
        CrashConsumer("c0", after=6),
        RestartBroker(after=40),  # never reached (a fault past the end changes nothing)
    ]
    with pytest.raises(ServiceViolation) as info:
        check_service(build, fresh_broker(seed=5), "orders", expect=[], faults=schedule)
    text = str(info.value)
    assert "was dead-lettered (reason: suspected poison) but expect does not name it" in text
    assert "seed: 5" in text
    # shrunk to one fault that redelivers a good message
    assert len(info.value.faults) == 1
    assert isinstance(info.value.faults[0], DuplicateDelivery | CrashConsumer)
    assert f"shortest fault schedule (1 of 4 fault(s)): [{info.value.faults[0]!r}]" in text
    assert info.value.seed == 5
    assert info.value.original == schedule


def test_a_failure_replays_from_its_seed_and_schedule() -> None:
    def build(source: SimulatedSource) -> tf.Pipeline:
        return source | tf.process(suspicious, messages=True) | tf.sink(save)

    errors = []
    for _ in range(2):
        with pytest.raises(ServiceViolation) as info:
            check_service(
                build, fresh_broker(seed=9), "orders", expect=[], faults=[CrashConsumer("c0")]
            )
        errors.append(str(info.value))
    assert errors[0] == errors[1]
