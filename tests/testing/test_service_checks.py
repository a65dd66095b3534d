"""Each check of check_service, and each piece of its machinery, has a test that fails when it is
broken (each was tried by hand: the mutation named in the test's docstring makes it fail)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import (
    BrokerFault,
    ConsumerCrashed,
    CrashConsumer,
    DelayAcks,
    DuplicateDelivery,
    RestartBroker,
    ServiceExpect,
    ServiceViolation,
    SimulatedBroker,
    SimulatedSource,
    check_service,
    check_service_async,
)
from trioflow.testing._service import SHRINK_ATTEMPTS, _restore_trio, _seed_trio


def fresh_broker(n: int = 10, seed: int = 0, **options: Any) -> SimulatedBroker:
    broker = SimulatedBroker(seed=seed, **options)
    for i in range(n):
        broker.publish("orders", i)
    return broker


def double(x: int) -> int:
    return 2 * x


async def save(x: Any) -> None:
    await trio.sleep(0.1)


# -- observing the last stage ------------------------------------------------------------------


def test_route_branches_are_each_observed() -> None:
    """Mutation: the route case of ``_wrap_last`` reports success without wrapping the
    branches (or reports failure): the correct route fails, or the lossy branch passes."""
    saved: list[int] = []

    def build(lossy: bool) -> Any:
        def make(source: SimulatedSource) -> tf.Pipeline:
            odd: tf.Pipeline = (
                tf.filter(lambda x: x != 7) | tf.sink(saved.append)
                if lossy
                else (tf.batch(3, 0.5) | tf.sink(saved.extend))
            )
            return source | tf.route(lambda x: x % 2, {0: tf.sink(saved.append), 1: odd})

        return make

    result = check_service(build(False), fresh_broker(), "orders", expect=[])
    assert result.acked == 10
    assert sorted(saved) == list(range(10))
    with pytest.raises(ServiceViolation, match=r"message orders/0/7 \(7\) delivery 1 was acked"):
        check_service(build(True), fresh_broker(), "orders", expect=[])


def test_a_last_stage_that_cannot_be_observed_is_an_error() -> None:
    """Mutation: an unobservable last stage silently drops the early-ack check (the first
    error is not raised)."""
    with pytest.raises(
        ValueError,
        match=r"^check_service: the pipeline's last stage, batch\(5, 1\.0\), cannot be observed",
    ):
        check_service(lambda s: s | tf.batch(5, 1.0), fresh_broker(), "orders", expect=[])
    with pytest.raises(ValueError, match=r"pass observe=False to run without those two checks$"):
        check_service(
            lambda s: s | tf.process(double, parallel=True), fresh_broker(), "orders", expect=[]
        )
    # with observe=False the run goes on without the two checks, explicitly: a filter that
    # drops an item at the end is fine then
    result = check_service(
        lambda s: s | tf.filter(lambda x: x != 3),
        fresh_broker(),
        "orders",
        expect=[],
        observe=False,
    )
    assert result.acked == 10


# -- the end-of-run checks -----------------------------------------------------------------------


def test_an_effect_undone_after_the_ack_is_caught_at_the_end() -> None:
    """Mutation: the end-of-run ``processed`` check is removed (the effect holds when each
    ack reaches the broker, so only the end sees it)."""
    db: set[int] = set()

    async def save_batch(batch: list[int]) -> None:
        if 9 in batch:
            await trio.sleep(10.0)  # long after every earlier ack
            db.clear()  # the bug: the last batch truncates the table
        db.update(batch)

    with pytest.raises(ServiceViolation) as info:
        check_service(
            lambda s: s | tf.batch(3, 0.5) | tf.sink(save_batch),
            fresh_broker(),
            "orders",
            expect=ServiceExpect(processed=lambda x: x in db),
        )
    text = str(info.value)
    assert (
        "[processed] message orders/0/0 (0) was acked but expect.processed(data) is False" in text
    )
    assert "[no early ack]" not in text


def test_discarded_is_checked_both_ways() -> None:
    """Mutations: either ``discarded`` branch of the final checks is removed."""

    def build(source: SimulatedSource) -> tf.Pipeline:
        def handle(m: tf.Message[Any]) -> Any:
            if m.data == 4:
                return m.fail("duplicate order", action="discard")
            return None

        return source | tf.sink(handle, messages=True)

    check_service(build, fresh_broker(), "orders", expect=ServiceExpect(discarded=[4]))
    with pytest.raises(
        ServiceViolation,
        match=r"\[dead letters\] message orders/0/4 \(4\) was discarded but expect does not name",
    ):
        check_service(build, fresh_broker(), "orders", expect=[])
    with pytest.raises(
        ServiceViolation,
        match=r"\[dead letters\] message orders/0/5 \(5\) must be discarded, but was acked",
    ):
        check_service(build, fresh_broker(), "orders", expect=ServiceExpect(discarded=[4, 5]))


def test_a_message_dead_lettered_twice_is_caught() -> None:
    """Mutation: the count of dead letters per message is not checked."""

    def build(source: SimulatedSource) -> tf.Pipeline:
        broker = source.broker

        def handle(m: tf.Message[Any]) -> Any:
            if m.data == 6:
                # the bug: the handler writes to the dead-letter topic itself, then fails the
                # message, which the source dead-letters again
                broker.publish("orders:dead", m.data, headers={"original_id": m.metadata["id"]})
                return m.fail("bad", action="dead_letter")
            return None

        return source | tf.sink(handle, messages=True)

    with pytest.raises(
        ServiceViolation,
        match=r"\[dead letters\] message orders/0/6 \(6\) was dead-lettered 2 times",
    ):
        check_service(build, fresh_broker(), "orders", expect=[6])


# -- faults --------------------------------------------------------------------------------------


def test_delay_acks_delays_every_ack() -> None:
    """Mutation: the ``DelayAcks`` fault is not applied when it fires."""

    def ack_times(faults: list[Any]) -> list[float]:
        result = check_service(
            lambda s: s | tf.sink(lambda x: None),
            fresh_broker(n=3),
            "orders",
            expect=[],
            faults=faults,
        )
        return [t for t, e, _ in result.log if e == "ack"]

    assert ack_times([]) == [0.0, 0.0, 0.0]
    assert ack_times([DelayAcks(5.0, after=0)]) == [5.0, 5.0, 5.0]
    assert ack_times([DelayAcks(5.0, after=0, consumer="other")]) == [0.0, 0.0, 0.0]


async def test_a_crash_fired_by_a_delivery_stops_the_source_before_the_hand_over(
    autojump_clock: Any,
) -> None:
    """Mutation: ``_SimRun.produce`` does not check for a crash right after taking: the
    messages of the crashing delivery reach the stages."""
    broker = fresh_broker(n=6)
    broker.schedule([CrashConsumer("c0", after=2)], topic="orders")
    seen: list[int] = []
    with pytest.raises(tf.PipelineError) as info:
        await (broker.source("orders", "g", "c0", count=2) | tf.sink(seen.append)).run()
    assert isinstance(info.value.__cause__, ConsumerCrashed)
    assert seen == []
    assert broker.unsettled("orders", "g") == [m.id for m in broker.messages("orders")]
    assert {mid for _, mid in broker.in_flight_at_fault} == {"orders/0/0", "orders/0/1"}


# -- shrinking -----------------------------------------------------------------------------------


def suspicious(m: tf.Message[Any]) -> tf.Message[Any]:
    # a poison handler that dead-letters any redelivered message
    if m.metadata["delivery_count"] > 1:
        return m.fail("suspected poison", action="dead_letter")
    return m


def suspicious_service(source: SimulatedSource) -> tf.Pipeline:
    return source | tf.process(suspicious, messages=True) | tf.batch(4, 1.0) | tf.sink(save)


SCHEDULE: list[BrokerFault] = [
    DelayAcks(0.2, after=0),
    DuplicateDelivery(3),
    RestartBroker(after=40),  # never reached
    DelayAcks(0.1, after=1),
]


async def test_check_service_async_shrinks(autojump_clock: Any) -> None:
    """Mutation: the async entry point does not shrink (or shrinks differently)."""
    with pytest.raises(ServiceViolation) as info:
        await check_service_async(
            suspicious_service, fresh_broker(n=20, seed=5), "orders", expect=[], faults=SCHEDULE
        )
    assert info.value.faults == [DuplicateDelivery(3)]
    assert "shortest fault schedule (1 of 4 fault(s)): [DuplicateDelivery(message=3)]" in str(
        info.value
    )


def all_duplicated_fails(n: int, runs: list[int]) -> Any:
    """A service that breaks only when every one of its ``n`` messages was duplicated, so no
    shorter schedule fails: the shrinker tries them all, up to its budget."""

    def build(source: SimulatedSource) -> tf.Pipeline:
        runs.append(1)
        twice: set[int] = set()

        def handle(m: tf.Message[Any]) -> None:
            if m.metadata["delivery_count"] > 1:
                twice.add(m.data)
            if len(twice) == n:
                raise tf.Fatal("every message came twice")

        return source | tf.sink(handle, messages=True)

    return build


def test_the_shrink_budget_is_64_runs() -> None:
    """Mutation: the budget is not applied (one-fewer schedules of 70 faults are 70 runs)."""
    runs: list[int] = []
    with pytest.raises(ServiceViolation) as info:
        check_service(
            all_duplicated_fails(70, runs),
            fresh_broker(n=70),
            "orders",
            expect=[],
            faults=[DuplicateDelivery(i) for i in range(70)],
        )
    assert len(info.value.faults) == 70  # nothing shorter fails
    assert len(runs) == 1 + SHRINK_ATTEMPTS == 65


async def test_the_async_shrink_budget_is_the_same(autojump_clock: Any) -> None:
    """Mutation: the async shrink has no cap (its own loop)."""
    runs: list[int] = []
    with pytest.raises(ServiceViolation):
        await check_service_async(
            all_duplicated_fails(70, runs),
            fresh_broker(n=70),
            "orders",
            expect=[],
            faults=[DuplicateDelivery(i) for i in range(70)],
        )
    assert len(runs) == 65


# -- determinism ---------------------------------------------------------------------------------


def scheduling_order(seed: int) -> tuple[list[int], float]:
    """The order in which 12 tasks ready at once run (trio's scheduler picks it), and a draw
    of the ``random`` module (a jittered backoff's), under ``_seed_trio(seed)``."""

    async def main() -> list[int]:
        order: list[int] = []

        async def task(i: int) -> None:
            await trio.lowlevel.checkpoint()
            order.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(task, i)
        return order

    state = _seed_trio(seed)
    try:
        order = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        return order, random.random()
    finally:
        _restore_trio(state)


def test_trio_and_random_are_seeded_per_run_and_restored() -> None:
    """Mutation: ``_seed_trio`` leaves trio's scheduler (or ``random``) unseeded: the same
    seed gives different orders; or it does not restore them."""
    before = random.getstate()
    runs = {seed: [scheduling_order(seed) for _ in range(2)] for seed in range(6)}
    for seed, (first, second) in runs.items():
        assert first == second
        assert first[1] == random.Random(seed).random()  # the module was seeded with it
    assert len({tuple(order) for (order, _), _ in runs.values()}) > 1  # the seed matters
    assert random.getstate() == before
