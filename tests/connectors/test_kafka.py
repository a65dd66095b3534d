"""The Kafka source and sink against a real Kafka-compatible broker (Tansu) on 127.0.0.1."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.kafka import KafkaSink, KafkaSource, _delivery_count, record_key

from .kafka_server import FAST_GROUP, KafkaServer, kafka_server

pytest.importorskip("confluent_kafka")

__all__ = ["kafka_server"]  # the fixture


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _source(server: KafkaServer, topic: str, group: str, **options: Any) -> KafkaSource:
    return KafkaSource(topic, group, bootstrap=server.bootstrap, **FAST_GROUP, **options)


async def _run_until(pipeline: tf.Pipeline, done: trio.Event, timeout: float = 60.0) -> Any:
    stop = trio.Event()
    report: Any = None

    async def watch() -> None:
        await done.wait()
        stop.set()

    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            report = await pipeline.run(stop=stop, drain_timeout=10)
            nursery.cancel_scope.cancel()
    return report


def test_redeliver_cannot_be_honoured_and_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be honoured: a Kafka partition is one ordered"):
        KafkaSource("t", "g", on_failure="redeliver")


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_max_deliveries_is_checked_as_the_other_broker_sources_check_it(bad: Any) -> None:
    # the shared check: a bool (an int to isinstance) was taken as 1 before
    with pytest.raises(ValueError, match=r"^max_deliveries=.* must be a positive integer or None$"):
        KafkaSource("t", "g", max_deliveries=bad)


def test_the_delivery_count_header_is_read_without_the_metadata() -> None:
    class Record:
        def __init__(self, headers: Any) -> None:
            self._headers = headers

        def headers(self) -> Any:
            return self._headers

    assert _delivery_count(Record(None)) == 1
    assert _delivery_count(Record([("trioflow-delivery-count", b"3")])) == 3
    # repeated: the last one, as the metadata's dict of headers keeps it
    two = [("trioflow-delivery-count", b"2"), ("x", b"y"), ("trioflow-delivery-count", b"4")]
    assert _delivery_count(Record(two)) == 4
    assert _delivery_count(Record([("trioflow-delivery-count", b"junk")])) == 1


async def test_more_calls_than_partitions_in_order_per_key_and_commits_reach_the_end(
    kafka_server: KafkaServer,
) -> None:
    topic = kafka_server.create_topic(_name("orders"), 4)
    n, keys = 2000, 50
    records = [(f"k{i % keys}", f"{i % keys}:{i // keys}") for i in range(n)]
    await trio.to_thread.run_sync(kafka_server.produce, topic, records)
    seen: dict[str, list[int]] = defaultdict(list)
    running = 0
    peak = 0
    done = trio.Event()
    count = 0

    async def handle(m: tf.Message[bytes]) -> tf.Message[bytes]:
        nonlocal running, peak, count
        running += 1
        peak = max(peak, running)
        await trio.sleep(random.random() * 0.005)
        running -= 1
        key, seq = m.data.decode().split(":")
        seen[key].append(int(seq))
        count += 1
        if count >= n:
            done.set()
        return m

    group = _name("g")
    source = _source(kafka_server, topic, group)
    pipeline = source | tf.process(handle, n=64, partition_by=record_key, messages=True)
    report = await _run_until(pipeline | tf.sink(lambda m: None), done)
    assert report.acked == n
    assert peak > 4  # more calls at once than partitions
    for key, seqs in seen.items():
        assert seqs == sorted(seqs), key  # in order per key
        assert len(seqs) == n // keys
    committed = await trio.to_thread.run_sync(kafka_server.committed, topic, group, 4)
    ends = defaultdict(int)
    for m in await trio.to_thread.run_sync(kafka_server.read_all, topic, n):
        ends[m.partition()] = max(ends[m.partition()], m.offset() + 1)
    assert committed == [ends[p] for p in range(4)]


async def test_a_commit_never_passes_a_message_still_in_flight(kafka_server: KafkaServer) -> None:
    topic = kafka_server.create_topic(_name("slow"), 1)
    await trio.to_thread.run_sync(kafka_server.produce, topic, [(None, str(i)) for i in range(50)])
    release = trio.Event()
    later = trio.Event()
    handled = 0

    async def handle(value: bytes) -> None:
        nonlocal handled
        if value == b"10":
            await release.wait()  # offset 10 stays in flight
        handled += 1
        if handled == 49:
            later.set()
        if handled == 50:
            done.set()

    done = trio.Event()
    group = _name("g")
    source = _source(kafka_server, topic, group, commit_every=0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            _run_until, source | tf.process(handle, n=8) | tf.sink(lambda x: None), done
        )
        await later.wait()
        await trio.sleep(1.0)  # several commits happen
        committed = await trio.to_thread.run_sync(kafka_server.committed, topic, group, 1)
        assert committed == [10]  # the lowest unsettled offset, though 49 others are done
        release.set()
    committed = await trio.to_thread.run_sync(kafka_server.committed, topic, group, 1)
    assert committed == [50]


async def test_failed_messages_go_to_the_dead_letter_topic_with_their_origin(
    kafka_server: KafkaServer,
) -> None:
    topic = kafka_server.create_topic(_name("events"), 2)
    dead = kafka_server.create_topic(f"{topic}.dead", 1)
    records = [(f"k{i}", b"bad" if i % 10 == 0 else str(i).encode()) for i in range(40)]
    await trio.to_thread.run_sync(kafka_server.produce, topic, records)
    done = trio.Event()
    count = 0

    async def parse(value: bytes) -> int:
        nonlocal count
        count += 1
        if count == 40:
            done.set()
        return int(value)

    group = _name("g")
    report = await _run_until(
        _source(kafka_server, topic, group) | tf.process(parse) | tf.sink(lambda x: None), done
    )
    assert (report.acked, report.failed) == (36, 4)
    letters = await trio.to_thread.run_sync(kafka_server.read_all, dead, 4)
    assert sorted(m.key() for m in letters) == [b"k0", b"k10", b"k20", b"k30"]
    headers = dict(letters[0].headers())
    assert headers["trioflow-topic"] == topic.encode()
    assert headers["trioflow-reason"].startswith(b"ValueError: invalid literal")
    assert {"trioflow-partition", "trioflow-offset"} <= set(headers)
    committed = await trio.to_thread.run_sync(kafka_server.committed, topic, group, 2)
    assert sum(committed) == 40  # dead letters count as settled


async def test_a_full_pipeline_pauses_and_keeps_its_group_membership(
    kafka_server: KafkaServer,
) -> None:
    topic = kafka_server.create_topic(_name("slowsink"), 2)
    n = 60
    await trio.to_thread.run_sync(kafka_server.produce, topic, [(None, str(i)) for i in range(n)])
    done = trio.Event()
    got: list[bytes] = []

    async def save(value: bytes) -> None:
        await trio.sleep(0.15)  # 60 x 0.15 s = 9 s, longer than max.poll.interval.ms below
        got.append(value)
        if len(got) == n:
            done.set()

    source = KafkaSource(
        topic,
        _name("g"),
        bootstrap=kafka_server.bootstrap,
        **{**FAST_GROUP, "max.poll.interval.ms": 7000},
    )
    report = await _run_until(source | tf.sink(save, buffer=2), done)
    assert report.acked == n
    assert sorted(got, key=int) == [str(i).encode() for i in range(n)]  # none twice: no rebalance


async def test_the_sink_acks_only_what_the_broker_confirmed(kafka_server: KafkaServer) -> None:
    topic = kafka_server.create_topic(_name("out"), 3)
    sink = KafkaSink(topic, key=lambda x: x["user"], bootstrap=kafka_server.bootstrap)
    items = [{"user": f"u{i % 5}", "n": i} for i in range(300)]
    report = await (tf.from_iterable(items) | tf.batch(50, 0.1) | tf.sink(sink)).run()
    sink.close()
    assert report.acked == 300
    back = await trio.to_thread.run_sync(kafka_server.read_all, topic, 300)
    assert sorted(int(m.value().split(b'"n": ')[1].rstrip(b"}")) for m in back) == list(range(300))
    assert {m.key() for m in back} == {f"u{i}".encode() for i in range(5)}


async def test_two_consumers_share_the_partitions_and_lose_nothing(
    kafka_server: KafkaServer,
) -> None:
    topic = kafka_server.create_topic(_name("shared"), 4)
    n = 3000
    await trio.to_thread.run_sync(
        kafka_server.produce, topic, [(f"k{i % 31}", str(i)) for i in range(n)]
    )
    group = _name("g")
    seen: list[int] = []
    done = trio.Event()

    async def handle(value: bytes) -> None:
        await trio.sleep(0.001)
        seen.append(int(value))
        if len(set(seen)) == n:
            done.set()

    async def one(delay: float) -> Any:
        await trio.sleep(delay)
        src = _source(kafka_server, topic, group, commit_every=0.2)
        return await _run_until(src | tf.process(handle, n=16) | tf.sink(lambda x: None), done)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0.0)
        nursery.start_soon(one, 2.0)  # joins while the first is consuming: a rebalance
    assert set(seen) == set(range(n))  # nothing lost (duplicates only from the revoked window)
    committed = await trio.to_thread.run_sync(kafka_server.committed, topic, group, 4)
    assert sum(committed) == n


async def test_metadata_delivery_counts_and_max_deliveries(kafka_server: KafkaServer) -> None:
    topic = kafka_server.create_topic(_name("meta"), 1)
    dead = kafka_server.create_topic(f"{topic}.dead", 1)
    await trio.to_thread.run_sync(kafka_server.produce, topic, [(b"a", b"1"), (b"b", b"2")])
    await trio.to_thread.run_sync(
        lambda: kafka_server.produce(topic, [(b"c", b"3")], **{"trioflow-delivery-count": b"7"})
    )
    seen: list[dict[str, Any]] = []
    done = trio.Event()

    async def look(m: tf.Message[bytes]) -> tf.Message[bytes]:
        seen.append(m.metadata)
        if len(seen) == 2:
            done.set()
        return m

    source = _source(kafka_server, topic, _name("g"), max_deliveries=3)
    report = await _run_until(source | tf.process(look, messages=True), done)
    assert [(m["key"], m["offset"], m["delivery_count"]) for m in seen] == [
        (b"a", 0, 1),
        (b"b", 1, 1),
    ]
    assert {m["topic"] for m in seen} == {topic}
    assert all(isinstance(m["timestamp"], int) and m["headers"] == {} for m in seen)
    assert report.failed == 1  # the record delivered 7 times never reached the stage
    (letter,) = await trio.to_thread.run_sync(kafka_server.read_all, dead, 1)
    assert letter.key() == b"c"
    assert dict(letter.headers())["trioflow-reason"].startswith(b"poison: delivered 7 times")
    figures = report.sources[source.label]
    assert {"in_flight", "abandoned", "commits"} <= set(figures)
