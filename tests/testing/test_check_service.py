"""check_service: a correct service passes through any fault schedule; each invariant fires."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings

import trioflow as tf
from trioflow.testing import (
    CrashConsumer,
    DelayAcks,
    DuplicateDelivery,
    RestartBroker,
    ServiceExpect,
    ServiceViolation,
    SimulatedBroker,
    SlowPartition,
    check_service,
    check_service_async,
    fault_schedules,
)

N = 30


def fresh_broker(seed: int = 0, n: int = N, **options: Any) -> SimulatedBroker:
    broker = SimulatedBroker(seed=seed, **options)
    broker.create_topic("orders", partitions=3)
    for i in range(n):
        broker.publish("orders", {"id": i, "poison": i == 13}, key=i % 5)
    return broker


def correct_service(saved: list[Any]) -> Any:
    async def decode(order: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(0.01 * (order["id"] % 4))
        if order["poison"]:
            raise ValueError("poison")
        return order

    async def save(batch: list[dict[str, Any]]) -> None:
        await trio.sleep(0.05)
        saved.extend(o["id"] for o in batch)

    def build(source: tf.abc.Source[Any]) -> tf.Pipeline:
        return source | tf.process(decode, n=4) | tf.batch(5, 0.5) | tf.sink(save)

    return build


def is_poison(order: dict[str, Any]) -> bool:
    return bool(order["poison"])


def test_a_correct_service_passes_every_fault_kind() -> None:
    saved: list[int] = []
    broker = fresh_broker()
    result = check_service(
        correct_service(saved),
        broker,
        "orders",
        expect=is_poison,
        consumers=2,
        faults=[
            CrashConsumer("c0", after=4),
            DuplicateDelivery(7),
            RestartBroker(after=12, downtime=1.0),
            DelayAcks(0.5, after=3),
            SlowPartition(1, 2.0),
        ],
    )
    assert result.published == N
    assert result.acked == N - 1
    assert result.dead_lettered == 1
    assert result.crashes == 1
    assert set(saved) == set(range(N)) - {13}
    assert result.duplicates >= 1  # the duplicate, and what was in flight at the crash
    assert any(e[1] == "restart" for e in result.log)
    # the broker given is the one that ran
    assert broker.outcome("orders", "service", broker.messages("orders")[0].id) == "acked"


def test_processed_effect_is_checked() -> None:
    saved: list[int] = []
    check_service(
        correct_service(saved),
        fresh_broker(),
        "orders",
        expect=ServiceExpect(dead_letters=is_poison, processed=lambda o: o["id"] in saved),
        faults=[CrashConsumer("c0", after=10)],
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=fault_schedules(["c0", "c1"], messages=N, partitions=3, max_faults=3))
def test_a_correct_service_passes_any_schedule(schedule: list[Any]) -> None:
    saved: list[int] = []
    check_service(
        correct_service(saved),
        fresh_broker(n=N),
        "orders",
        expect=is_poison,
        faults=schedule,
        consumers=2,
    )
    assert set(saved) >= set(range(N)) - {13}


def test_unexpected_and_missing_dead_letters() -> None:
    with pytest.raises(ServiceViolation) as info:
        check_service(correct_service([]), fresh_broker(), "orders", expect=[])
    assert "[dead letters]" in str(info.value)
    assert "'poison': True" in str(info.value)  # names the message
    assert "ValueError: poison" in str(info.value)  # and why it was dead-lettered
    with pytest.raises(ServiceViolation, match=r"must be dead-lettered, but was acked"):
        check_service(
            correct_service([]),
            fresh_broker(),
            "orders",
            expect=lambda o: o["id"] in (13, 14),
        )


def test_never_settled_is_reported() -> None:
    def build(source: Any) -> tf.Pipeline:
        return source | tf.sink(lambda o: 1 / 0)

    with pytest.raises(
        ServiceViolation, match=r"\[settled\] 2 message\(s\) not settled after 50 s"
    ):
        check_service(
            build,
            fresh_broker(n=2),
            "orders",
            expect=[],
            source_options={"on_failure": "redeliver", "max_deliveries": None},
            max_time=50.0,
        )


def test_a_lease_shorter_than_the_work_is_a_duplicate_without_cause() -> None:
    async def slow(order: Any) -> None:
        await trio.sleep(20.0)

    with pytest.raises(ServiceViolation, match=r"its lease expired \(visibility_timeout=5 s\)"):
        check_service(
            lambda src: src | tf.sink(slow, n=10),
            fresh_broker(n=3, visibility_timeout=5.0),
            "orders",
            expect=[],
        )


def test_a_pipeline_error_is_reported() -> None:
    def build(source: Any) -> tf.Pipeline:
        def fatal(o: Any) -> None:
            raise tf.Fatal("boom")

        return source | tf.sink(fatal)

    with pytest.raises(ServiceViolation, match=r"\[pipeline ran\] consumer c0 failed"):
        check_service(build, fresh_broker(n=2), "orders", expect=[])


def test_expect_is_checked() -> None:
    with pytest.raises(TypeError, match=r"^check_service: expect=3 must be a ServiceExpect"):
        check_service(correct_service([]), fresh_broker(), "orders", expect=3)  # type: ignore[arg-type]


def test_route_branches_are_observed() -> None:
    saved: list[Any] = []

    def build(source: Any) -> tf.Pipeline:
        return source | tf.route(
            lambda o: o["id"] % 2,
            {0: tf.sink(saved.append), 1: tf.batch(3) | tf.sink(saved.extend)},
        )

    result = check_service(build, fresh_broker(n=10), "orders", expect=[])
    assert result.acked == 10


async def test_check_service_async(autojump_clock: Any) -> None:
    saved: list[int] = []
    result = await check_service_async(
        correct_service(saved),
        fresh_broker(),
        "orders",
        expect=is_poison,
        faults=[CrashConsumer("c0", after=6)],
    )
    assert result.crashes == 1


async def test_check_service_async_needs_a_mock_clock() -> None:
    with pytest.raises(RuntimeError, match=r"^check_service_async needs a trio.testing.MockClock"):
        await check_service_async(correct_service([]), fresh_broker(), "orders", expect=[])
