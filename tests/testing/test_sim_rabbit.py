"""The real RabbitQueueSource on simulated AMQP connections: its prefetch, grouped acks, requeues,
dead letters and reconnects, checked by check_service through the broker's faults (no RabbitMQ
server: its logic is separated from the network by ``connection=``).

Every check applies: check_service recognises a RabbitMQ delivery at the last stage by the
``queue`` and ``message_id`` of its metadata.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, assume, given, settings

import trioflow as tf
from trioflow.connectors import Reconnect
from trioflow.connectors._rabbit_acker import QueueAcker
from trioflow.connectors.rabbitmq import RabbitQueueSource
from trioflow.testing import (
    CrashConsumer,
    DelayAcks,
    DuplicateDelivery,
    RestartBroker,
    ServiceViolation,
    SimulatedBroker,
    SimulatedRabbit,
    SimulatedSource,
    check_service,
    fault_schedules,
)

pytest.importorskip("serena")

N = 24
POISON = 9  # crashes the process that handles it
BAD = 15  # not valid: fails, and is dead-lettered


def fresh_broker(seed: int = 0, n: int = N) -> SimulatedBroker:
    broker = SimulatedBroker(seed=seed)
    for i in range(n):
        broker.publish("orders", {"id": i, "ok": i != BAD})
    return broker


def rabbit_service(
    saved: list[int],
    *,
    crash_on_poison: bool = False,
    flaky: set[int] | None = None,
    queue_type: str | None = None,
    **options: Any,
) -> Any:
    """A service on the real source; ``flaky`` ids fail their first time through ``handle``."""
    options.setdefault("prefetch", 8)
    options.setdefault("reconnect", Reconnect(give_up_after=None))
    options.setdefault("declare", False)
    failed_once: set[int] = set()

    def build(source: SimulatedSource) -> tf.Pipeline:
        async def handle(body: bytes) -> dict[str, Any]:
            order: dict[str, Any] = json.loads(body)
            await trio.sleep(0.05 * (order["id"] % 3))
            if crash_on_poison and order["id"] == POISON:
                # the process dies while handling it: a segfault, an OOM kill
                source.broker.crash_consumer(source.consumer)
                await trio.lowlevel.checkpoint()
            if flaky and order["id"] in flaky and order["id"] not in failed_once:
                failed_once.add(order["id"])
                raise TimeoutError(f"order {order['id']}: the database is busy")
            if not order["ok"]:
                raise ValueError(f"bad order {order['id']}")
            return order

        async def save(batch: list[dict[str, Any]]) -> None:
            await trio.sleep(0.1)
            saved.extend(o["id"] for o in batch)

        rabbit = RabbitQueueSource(
            source.topic,
            connection=SimulatedRabbit(
                source.broker, consumer=source.consumer, group=source.group, queue_type=queue_type
            ),
            **options,
        )
        return rabbit | tf.process(handle, n=4) | tf.batch(4, 0.5) | tf.sink(save)

    return build


def is_bad(order: dict[str, Any]) -> bool:
    return not order["ok"]


def test_the_rabbit_source_passes_without_faults() -> None:
    saved: list[int] = []
    broker = fresh_broker()
    result = check_service(rabbit_service(saved), broker, "orders", expect=is_bad)
    assert sorted(saved) == [i for i in range(N) if i != BAD]
    assert result.acked == N - 1
    assert result.deliveries == N
    [dead] = broker.dead_letters("orders")
    assert dead.data == {"id": BAD, "ok": False}
    assert dead.headers == {
        "reason": "rejected",
        "original_id": broker.messages("orders")[BAD].id,
        "delivery_count": 1,
    }
    [report] = result.reports
    figures = report.sources["rabbitmq:orders"]
    assert (figures["acked"], figures["dead_lettered"], figures["reconnects"]) == (N - 1, 1, 0)


def test_prefetch_bounds_what_the_broker_pushes() -> None:
    # the broker pushes up to the prefetch window, and more only as deliveries are settled
    broker = fresh_broker()
    check_service(rabbit_service([], prefetch=3), broker, "orders", expect=is_bad)
    chunks = [d.split(": ", 1)[1].split() for _, e, d in broker.log if e == "deliver"]
    assert max(len(c) for c in chunks) == 3
    assert sum(len(c) for c in chunks) == N


def test_a_crashed_consumers_messages_are_requeued_at_once() -> None:
    # RabbitMQ has no visibility timeout: a dead consumer's un-acked deliveries go back to the
    # queue when its connection closes, and the other consumer takes them (redelivered)
    saved: list[int] = []
    broker = SimulatedBroker(seed=0, visibility_timeout=10_000.0)
    for i in range(N):
        broker.publish("orders", {"id": i, "ok": i != BAD})
    result = check_service(
        rabbit_service(saved, prefetch=4),
        broker,
        "orders",
        expect=is_bad,
        consumers=2,
        faults=[CrashConsumer("c1", after=2)],
        restart_delay=1000.0,  # c1 stays down: only a requeue lets c0 settle what c1 held
    )
    crash = next(d for _, e, d in result.log if e == "crash")
    held = crash.split("holding ")[1]
    assert held != "[]"
    assert result.crashes == 1
    assert result.elapsed < 100.0
    assert any(e == "deliver" and "c0" in d and "#2" in d for _, e, d in result.log)
    assert set(saved) == {i for i in range(N) if i != BAD}


def test_redeliver_requeues_a_failed_message_after_requeue_delay() -> None:
    saved: list[int] = []
    broker = fresh_broker()
    result = check_service(
        rabbit_service(
            saved,
            on_failure="redeliver",
            requeue_delay=2.0,
            flaky={3, 4},
            queue_type="quorum",
            max_deliveries=3,
        ),
        broker,
        "orders",
        expect=is_bad,  # it fails each time: redelivered until past max_deliveries
        max_time=120.0,
    )
    requeues = [d for _, e, d in result.log if e == "requeue"]
    assert {d.split("#")[0] for d in requeues} >= {broker.messages("orders")[i].id for i in (3, 4)}
    assert set(saved) == {i for i in range(N) if i != BAD}
    assert result.elapsed >= 2.0


def test_without_requeue_the_kit_reports_good_messages_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a broken variant: the acker rejects a message to be redelivered without requeue, so a
    # message that failed once (a busy database) is dead-lettered; the kit names it
    async def broken(self: QueueAcker, link: Any, tags: list[int]) -> None:
        for tag in tags:
            link.outstanding.discard(tag)
            await link.channel.basic_reject(tag, requeue=False)

    monkeypatch.setattr(QueueAcker, "_requeue", broken)
    with pytest.raises(ServiceViolation) as info:
        check_service(
            rabbit_service([], on_failure="redeliver", dead_letter=None, flaky={3}),
            fresh_broker(),
            "orders",
            expect=lambda o: o["id"] in (BAD,),
            max_time=120.0,
        )
    assert (
        "[dead letters] message orders/0/3 ({'id': 3, 'ok': True}) was dead-lettered (reason: "
        "rejected) but expect does not name it"
    ) in str(info.value)


def test_a_poison_message_is_dead_lettered_on_a_quorum_queue() -> None:
    # a quorum queue counts deliveries (x-delivery-count): the poison, which crashes the
    # consumer each time, reaches max_deliveries and is dead-lettered without reaching a stage
    saved: list[int] = []
    result = check_service(
        rabbit_service(
            saved, crash_on_poison=True, max_deliveries=3, prefetch=1, queue_type="quorum"
        ),
        fresh_broker(),
        "orders",
        expect=lambda o: o["id"] in (POISON, BAD),
    )
    assert result.crashes == 3
    assert set(saved) == {i for i in range(N) if i not in (POISON, BAD)}


@pytest.mark.parametrize("max_deliveries", [3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_poison_isolation_only_the_poison_is_dead_lettered(seed: int, max_deliveries: int) -> None:
    # once a finding (the source had no poison isolation: each crash returned the whole prefetch
    # window, counted on a quorum queue, so good messages reached max_deliveries with the
    # poison). Now what comes back redelivered is handed over isolated (a window of 1, doubling
    # as groups settle; alone near the limit): at full prefetch only the poison is dead-lettered
    saved: list[int] = []
    result = check_service(
        rabbit_service(
            saved, crash_on_poison=True, max_deliveries=max_deliveries, queue_type="quorum"
        ),
        fresh_broker(seed),
        "orders",
        expect=lambda o: o["id"] in (POISON, BAD),
    )
    assert result.crashes == max_deliveries
    assert result.dead_lettered == 2  # the poison and the bad order
    assert set(saved) == {i for i in range(N) if i not in (POISON, BAD)}


def test_a_redelivery_at_full_speed_is_isolated() -> None:
    # a message comes back redelivered while the source runs at full prefetch (here its own
    # requeue, on_failure="redeliver"; another consumer's crash looks the same): the source
    # closes the window, lets what is in flight settle, and hands the redelivered one over
    # isolated (alone, or with one other once a group settled); first deliveries run several
    # at a time
    saved: list[int] = []
    seen: list[tuple[int, bool, int]] = []  # (id, redelivered, others in the stage meanwhile)
    active: set[int] = set()

    def build(source: SimulatedSource) -> tf.Pipeline:
        async def handle(msg: tf.Message[bytes]) -> tf.Message[bytes]:
            order: dict[str, Any] = json.loads(msg.data)
            active.add(order["id"])
            try:
                await trio.sleep(0.02)
                seen.append((order["id"], msg.metadata["redelivered"], len(active) - 1))
            finally:
                active.discard(order["id"])
            if order["id"] == POISON:
                raise RuntimeError("poison")
            return msg

        async def save(batch: list[bytes]) -> None:
            saved.extend(json.loads(body)["id"] for body in batch)

        rabbit = RabbitQueueSource(
            source.topic,
            connection=SimulatedRabbit(
                source.broker, consumer=source.consumer, group=source.group, queue_type="quorum"
            ),
            declare=False,
            prefetch=8,
            on_failure="redeliver",
            requeue_delay=0.05,
            max_deliveries=4,
        )
        return rabbit | tf.process(handle, n=4, messages=True) | tf.batch(4, 0.1) | tf.sink(save)

    broker = SimulatedBroker(seed=0)
    for i in range(40):
        broker.publish("orders", {"id": i, "ok": True})
    result = check_service(build, broker, "orders", expect=lambda o: o["id"] == POISON)
    again = [(i, others) for i, redelivered, others in seen if redelivered]
    assert [i for i, _ in again] == [POISON] * 3  # delivered 4 times, then dead-lettered
    assert again[0] == (POISON, 0)
    assert all(others <= 1 for _, others in again)
    assert max(others for _, redelivered, others in seen if not redelivered) > 0
    assert result.dead_lettered == 1
    assert sorted(saved) == [i for i in range(40) if i != POISON]


def test_a_broker_restart_reconnects_and_drops_the_dead_channels_acks() -> None:
    saved: list[int] = []
    result = check_service(
        rabbit_service(saved),
        fresh_broker(),
        "orders",
        expect=is_bad,
        faults=[RestartBroker(after=8, downtime=3.0)],
    )
    assert any(e == "restart" for _, e, _ in result.log)
    assert result.elapsed >= 3.0
    assert set(saved) == {i for i in range(N) if i != BAD}
    [report] = result.reports
    figures = report.sources["rabbitmq:orders"]
    assert (figures["reconnects"], figures["channel_generation"]) == (1, 2)


def test_a_consumer_restarted_while_the_broker_is_down_fails_to_open() -> None:
    # a finding: the source does not retry its first connection (a wrong address fails at
    # once), so a consumer a supervisor restarts during an outage fails; check_service says so
    with pytest.raises(ServiceViolation) as info:
        check_service(
            rabbit_service([]),
            fresh_broker(),
            "orders",
            expect=is_bad,
            faults=[CrashConsumer("c0", after=4), RestartBroker(after=4, downtime=5.0)],
        )
    text = str(info.value)
    assert "[pipeline ran] consumer c0 failed: PipelineError(" in text
    assert "source \\'rabbitmq:orders\\' could not open" in text
    # the error names the queue and the broker's address (the first connection's error)
    assert "queue \\'orders\\' on guest@127.0.0.1:5672" in text
    assert "ConnectionRefusedError: the simulated broker is restarting" in str(info.value)


def flaky_quorum_service(saved: list[int]) -> Any:
    """Orders 2 and 11 fail once (redelivered after 0.5 s), on a quorum queue."""
    return rabbit_service(
        saved,
        on_failure="redeliver",
        requeue_delay=0.5,
        flaky={2, 11},
        queue_type="quorum",
        max_deliveries=8,
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=fault_schedules(
        ["c0", "c1"],
        messages=N,
        max_faults=3,
        max_delay=3.0,
        # DelayAcks left out here: with a crash it finds the open bug pinned below
        kinds=[CrashConsumer, DuplicateDelivery],
    )
)
def test_the_rabbit_source_survives_crashes_and_duplicates(schedule: list[Any]) -> None:
    saved: list[int] = []
    check_service(
        flaky_quorum_service(saved),
        fresh_broker(),
        "orders",
        expect=lambda o: o["id"] == BAD,
        faults=schedule,
        consumers=2,
    )
    assert set(saved) >= {i for i in range(N) if i != BAD}


@pytest.mark.xfail(
    strict=True,
    reason="open bug: after c0 crashes, c1's careful start (SimulatedRabbit has no basic_get, so "
    "the source changes Basic.Qos on the running consumer) and delayed acks end with an ack of "
    "an unknown delivery tag (PRECONDITION_FAILED) and an early ack; the real broker's path "
    "(Basic.Get) is not affected (tests/connectors/test_rabbitmq_poison.py)",
)
def test_a_crash_then_delayed_acks_on_the_careful_start() -> None:
    saved: list[int] = []
    check_service(
        flaky_quorum_service(saved),
        fresh_broker(),
        "orders",
        expect=lambda o: o["id"] == BAD,
        faults=[CrashConsumer("c0", after=4), DelayAcks(seconds=1.0, after=12, consumer=None)],
        consumers=2,
    )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=fault_schedules(
        ["c0"], messages=N, max_faults=3, max_delay=3.0, kinds=[RestartBroker, DelayAcks]
    )
)
def test_the_rabbit_source_survives_restarts(schedule: list[Any]) -> None:
    # not a restart before the consumer's first connection (it fails at once: see above)
    assume(not any(isinstance(f, RestartBroker) and f.after == 0 for f in schedule))
    saved: list[int] = []
    # a quorum queue: its x-delivery-count tells the source which delivery it holds, so the kit
    # can tell each delivery's ack from an early one. (A classic queue only flags a redelivery:
    # after two restarts the source's delivery_count says 2 where the broker's says 3, and the
    # kit's "no early ack" check cannot pair them; it reported such acks as early.)
    check_service(
        rabbit_service(saved, queue_type="quorum"),
        fresh_broker(),
        "orders",
        expect=is_bad,
        faults=schedule,
    )
    assert set(saved) >= {i for i in range(N) if i != BAD}


# -- the connection's answers, call by call ---------------------------------------------------


async def test_channels_answer_as_rabbitmq_does(autojump_clock: Any) -> None:
    broker = SimulatedBroker()
    for i in range(5):
        broker.publish("q", b"%d" % i)
    rabbit = SimulatedRabbit(broker, queue_type="quorum")
    spec = RabbitQueueSource("q", connection=rabbit)
    async with rabbit(spec) as conn, conn.open_channel() as channel:
        assert conn.open
        assert channel.open
        await channel.basic_qos(prefetch_count=3)
        async with channel.basic_consume("q", auto_ack=False) as deliveries:
            first = await anext(aiter(deliveries))
            assert (first.envelope.delivery_tag, first.envelope.redelivered) == (1, False)
            assert first.body == b"0"
            assert first.header.message_id == "q/0/0"
            assert channel.current_buffer_size == 2  # the window is full: 3 un-acked
            second, third = await anext(deliveries), await anext(deliveries)
            assert channel.current_buffer_size == 0
            await channel.basic_ack(second.envelope.delivery_tag, multiple=True)
            assert [broker.outcome("q", "service", f"q/0/{i}") for i in (0, 1)] == ["acked"] * 2
            assert channel.current_buffer_size == 2  # two more pushed
            await channel.basic_reject(third.envelope.delivery_tag, requeue=True)
            again = [await anext(deliveries) for _ in range(3)]
            redelivered = [d for d in again if d.body == b"2"]
            assert [d.envelope.redelivered for d in redelivered] == [True]
            assert redelivered[0].header.headers == {"x-delivery-count": 1}
            with pytest.raises(
                ValueError, match=r"^PRECONDITION_FAILED - unknown delivery tag 99$"
            ):
                await channel.basic_reject(99, requeue=False)
    # the channel closed holding three deliveries: they are back in the queue, redelivered
    assert broker.unsettled("q", "service") == ["q/0/2", "q/0/3", "q/0/4"]
    async with (
        rabbit(spec) as conn,
        conn.open_channel() as channel,
        channel.basic_consume("q", auto_ack=False) as deliveries,
    ):
        got = [await anext(deliveries) for _ in range(3)]
    assert [(d.body, d.envelope.redelivered) for d in got] == [
        (b"2", True),
        (b"3", True),
        (b"4", True),
    ]
    assert [d.header.headers["x-delivery-count"] for d in got] == [2, 1, 1]


async def test_a_restart_drops_the_connection_and_refuses_new_ones(autojump_clock: Any) -> None:
    broker = SimulatedBroker()
    broker.publish("q", b"x")
    rabbit = SimulatedRabbit(broker)
    spec = RabbitQueueSource("q", connection=rabbit)
    lost: list[bool] = []

    async def hold() -> None:
        async with rabbit(spec) as conn:
            broker.restart(downtime=2.0)
            lost.append(not conn.open)
            await trio.sleep_forever()  # the connection's end cancels this

    with pytest.raises(ExceptionGroup) as info:
        await hold()
    assert lost == [True]
    [leaf] = info.value.exceptions
    assert isinstance(leaf, ConnectionResetError)
    with pytest.raises(ConnectionRefusedError, match="restarting"):
        async with rabbit(spec):
            pass  # pragma: no cover
    await trio.sleep(2.0)
    async with rabbit(spec) as conn:
        assert conn.open
