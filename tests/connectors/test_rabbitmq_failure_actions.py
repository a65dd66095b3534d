"""Failure actions, delivery counts and max_deliveries of RabbitQueueSource, on a real broker.

Each test uses its own queues on the session's broker (see ``rabbit_server.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import trioflow as tf
from trioflow.connectors.rabbitmq import RabbitQueueSource, connect, open_channel, publish

from .rabbit_server import RabbitServer, shared_broker
from .servers import serve_until

pytestmark = pytest.mark.server

QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture
def rabbit(request: pytest.FixtureRequest) -> RabbitServer:
    return shared_broker(request.config)


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    return f"qa-{request.node.name}"


async def fill(port: int, queue: str, bodies: list[bytes], **options: Any) -> None:
    async with RabbitQueueSource(queue, port=port, **options).open():  # declares the queues
        pass
    async with connect(port=port) as conn, open_channel(conn) as ch:
        await ch.queue_purge(queue)
        await publish(ch, queue, bodies)


async def counts(port: int, *queues: str) -> list[int]:
    async with connect(port=port) as conn, open_channel(conn) as ch:
        return [(await ch.queue_declare(q, passive=True)).message_count for q in queues]


async def dead_bodies(port: int, queue: str) -> list[bytes]:
    bodies = []
    async with connect(port=port) as conn, open_channel(conn) as ch:
        while (got := await ch.basic_get(f"{queue}.dead", no_ack=True)) is not None:
            bodies.append(got.body)
    return sorted(bodies)


Seen = list[tuple[bytes, int, bool]]


def recorder(seen: Seen, fail: Callable[[tf.Message[bytes]], tf.Message[bytes] | None]) -> Any:
    """A ``messages=True`` stage noting (body, delivery_count, redelivered) of each delivery;
    ``fail(message)`` returns a failed copy, or None to let it through."""

    def stage(message: tf.Message[bytes]) -> tf.Message[bytes]:
        meta = message.metadata
        seen.append((message.data, meta["delivery_count"], meta["redelivered"]))
        return fail(message) or message

    return stage


@pytest.mark.parametrize(
    ("on_failure", "action"),
    [
        ("dead_letter", "dead_letter"),
        ("discard", "discard"),
        ("redeliver", "redeliver"),
        ("reject", "dead_letter"),  # the older words are aliases
        ("requeue", "redeliver"),
    ],
)
async def test_each_action_as_the_default(
    rabbit: RabbitServer, queue: str, on_failure: Any, action: str
) -> None:
    await fill(rabbit.port, queue, [b"%d" % i for i in range(10)])
    seen: Seen = []

    def fail(m: tf.Message[bytes]) -> tf.Message[bytes] | None:
        if m.data == b"3" and not m.metadata["redelivered"]:
            raise ValueError("fails on its first delivery")
        return None

    source = RabbitQueueSource(queue, port=rabbit.port, on_failure=on_failure, requeue_delay=0.05)
    assert source.on_failure == action
    report = await serve_until(
        source | tf.process(recorder(seen, fail), messages=True) | tf.sink(lambda x: None),
        lambda m: m.acked >= (10 if action == "redeliver" else 9) and m.failed >= 1,
    )
    assert report.failed_by_reason == {"ValueError": 1}
    assert await counts(rabbit.port, queue) == [0]
    assert await dead_bodies(rabbit.port, queue) == ([b"3"] if action == "dead_letter" else [])
    threes = [s for s in seen if s[0] == b"3"]
    # a classic queue flags a redelivery only: its delivery_count is 2, "at least"
    redelivered = [(b"3", 2, True)] if action == "redeliver" else []
    assert threes == [(b"3", 1, False), *redelivered]
    assert {s for s in seen if s[0] != b"3"} == {(b"%d" % i, 1, False) for i in range(10) if i != 3}


@pytest.mark.parametrize("default", ["dead_letter", "discard"])
async def test_each_action_per_message(rabbit: RabbitServer, queue: str, default: Any) -> None:
    await fill(rabbit.port, queue, [b"%d" % i for i in range(6)])
    actions: dict[bytes, Any] = {
        b"1": "discard",
        b"2": "dead_letter",
        b"3": "redeliver",
        b"4": None,
    }
    seen: Seen = []

    def fail(m: tf.Message[bytes]) -> tf.Message[bytes] | None:
        if m.data in actions and not m.metadata["redelivered"]:
            return m.fail(f"rejected {m.data.decode()}", action=actions[m.data])
        return None

    source = RabbitQueueSource(queue, port=rabbit.port, on_failure=default, requeue_delay=0.05)
    report = await serve_until(
        source | tf.process(recorder(seen, fail), messages=True) | tf.sink(lambda x: None),
        lambda m: m.acked >= 3 and m.failed >= 4,  # 0, 5, and 3 on its redelivery
    )
    assert report.failed == 4
    assert await counts(rabbit.port, queue) == [0]
    # b"2" asked for the dead letter; b"4" had no action of its own, so it got the default
    assert await dead_bodies(rabbit.port, queue) == (
        [b"2", b"4"] if default == "dead_letter" else [b"2"]
    )
    assert [s for s in seen if s[0] == b"3"] == [(b"3", 1, False), (b"3", 2, True)]


async def test_requeue_once_is_redeliver_then_dead_letter(rabbit: RabbitServer, queue: str) -> None:
    await fill(rabbit.port, queue, [b"p"])
    seen: Seen = []

    def fail(m: tf.Message[bytes]) -> tf.Message[bytes] | None:
        raise RuntimeError("always")

    source = RabbitQueueSource(
        queue, port=rabbit.port, on_failure="requeue_once", requeue_delay=0.05
    )
    assert (source.on_failure, source.on_failure_mode) == ("redeliver", "requeue_once")
    await serve_until(
        source | tf.process(recorder(seen, fail), messages=True), lambda m: m.failed >= 2
    )
    assert seen == [(b"p", 1, False), (b"p", 2, True)]
    assert await dead_bodies(rabbit.port, queue) == [b"p"]


async def test_quorum_delivery_count_and_max_deliveries(rabbit: RabbitServer, queue: str) -> None:
    """A quorum queue counts deliveries; the 4th delivery is dead-lettered before any stage."""
    options: dict[str, Any] = {"arguments": QUORUM, "max_deliveries": 3}
    await fill(rabbit.port, queue, [b"p", b"ok"], **options)
    seen: Seen = []

    def fail(m: tf.Message[bytes]) -> tf.Message[bytes] | None:
        if m.data == b"p":
            return m.fail("poison", action="redeliver")
        return None

    source = RabbitQueueSource(
        queue, port=rabbit.port, on_failure="discard", requeue_delay=0.05, **options
    )
    report = await serve_until(
        source | tf.process(recorder(seen, fail), messages=True), lambda m: m.failed >= 4
    )
    assert [s for s in seen if s[0] == b"p"] == [(b"p", 1, False), (b"p", 2, True), (b"p", 3, True)]
    assert report.failed_by_reason == {
        "poison": 3,
        "poison: delivered 4 times (max_deliveries=3)": 1,
    }
    assert await counts(rabbit.port, queue) == [0]
    async with connect(port=rabbit.port) as conn, open_channel(conn) as ch:
        dead = await ch.basic_get(f"{queue}.dead", no_ack=True)
    assert dead is not None
    assert dead.body == b"p"
    assert dead.header.headers["x-death"][0]["reason"] == b"rejected"


async def test_classic_max_deliveries_1_dead_letters_any_redelivery(
    rabbit: RabbitServer, queue: str
) -> None:
    await fill(rabbit.port, queue, [b"p"])
    seen: Seen = []

    def fail(m: tf.Message[bytes]) -> tf.Message[bytes] | None:
        return m.fail("again", action="redeliver")

    source = RabbitQueueSource(queue, port=rabbit.port, max_deliveries=1, requeue_delay=0.05)
    report = await serve_until(
        source | tf.process(recorder(seen, fail), messages=True), lambda m: m.failed >= 2
    )
    assert seen == [(b"p", 1, False)]
    assert report.failed_by_reason == {
        "again": 1,
        "poison: delivered 2 times (max_deliveries=1)": 1,
    }
    assert await dead_bodies(rabbit.port, queue) == [b"p"]


async def test_no_dead_letter_exchange(
    rabbit: RabbitServer, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a dead-letter exchange: a message's own dead_letter is logged once and gets the
    default; a message over max_deliveries is discarded (acked and dropped)."""
    options: dict[str, Any] = {"dead_letter": False, "arguments": QUORUM, "max_deliveries": 1}
    await fill(rabbit.port, queue, [b"a", b"b", b"p"], on_failure="discard", **options)
    seen: Seen = []

    def fail(m: tf.Message[bytes]) -> tf.Message[bytes] | None:
        if m.data == b"p":
            return m.fail("again", action="redeliver")
        return m.fail("bad", action="dead_letter")

    source = RabbitQueueSource(
        queue, port=rabbit.port, on_failure="discard", requeue_delay=0.05, **options
    )
    with caplog.at_level(logging.WARNING, logger="trioflow"):
        report = await serve_until(
            source | tf.process(recorder(seen, fail), messages=True), lambda m: m.failed >= 4
        )
    assert report.failed_by_reason == {
        "bad": 2,
        "again": 1,
        "poison: delivered 2 times (max_deliveries=1)": 1,
    }
    assert await counts(rabbit.port, queue) == [0]
    warnings = [r.getMessage() for r in caplog.records if "cannot honour" in r.getMessage()]
    assert warnings == [
        f"RabbitQueueSource({queue!r}): a message failed with action='dead_letter', which this "
        "source cannot honour (dead_letter=False: its queue has no dead-letter exchange); it gets "
        "on_failure='discard' instead (logged once)"
    ]
    async with connect(port=rabbit.port) as conn, open_channel(conn) as ch:
        with pytest.raises(Exception, match="NOT_FOUND"):
            await ch.queue_declare(f"{queue}.dead", passive=True)


def test_an_action_the_queue_cannot_honour_is_refused_when_built() -> None:
    for mode in ("dead_letter", "reject", "requeue_once"):
        with pytest.raises(
            ValueError,
            match=rf"^RabbitQueueSource\('q'\): on_failure='{mode}' cannot be honoured: with "
            r"dead_letter=False the queue has no dead-letter exchange, so a rejected message "
            r"would be dropped; use on_failure='discard' to drop failed messages or 'redeliver' "
            r"to requeue them, or give the queue a dead-letter exchange$",
        ):
            RabbitQueueSource("q", dead_letter=False, on_failure=mode)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^RabbitQueueSource\('q'\): on_failure='dead_letter'"):
        RabbitQueueSource("q", dead_letter=False)  # the default dead-letters
    with pytest.raises(
        ValueError,
        match=r"^RabbitQueueSource\('q'\): max_deliveries=3 cannot be honoured on a classic "
        r"queue: only quorum queues count deliveries \(x-delivery-count\), a classic one only "
        r"flags a redelivery, so delivery_count never exceeds 2 there; use "
        r"arguments=\{'x-queue-type': 'quorum'\}, or max_deliveries=1 \(dead-letter every "
        r"redelivered message\)$",
    ):
        RabbitQueueSource("q", max_deliveries=3)
    with pytest.raises(ValueError, match=r"^max_deliveries=0 must be a positive integer or None$"):
        RabbitQueueSource("q", max_deliveries=0)
    # what the source can honour is built
    RabbitQueueSource("q", dead_letter=False, on_failure="discard")
    RabbitQueueSource("q", dead_letter=False, on_failure="redeliver", max_deliveries=1)
    RabbitQueueSource("q", arguments=QUORUM, max_deliveries=3)
    RabbitQueueSource("q", declare=False, max_deliveries=3)  # the queue's type is not known
    # a queue given its own dead-letter exchange in arguments can dead-letter
    RabbitQueueSource("q", dead_letter=False, arguments={"x-dead-letter-exchange": "elsewhere"})
