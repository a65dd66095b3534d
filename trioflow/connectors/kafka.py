"""Kafka: a consumer-group source that commits only over settled work, and a producing sink.

Built on confluent-kafka (librdkafka), whose consumer and producer are synchronous: each runs on
a thread of its own (``_thread.DedicatedThread``), bridged to trio. Install with
``pip install 'trioflow[kafka]'``.

Semantics of :class:`KafkaSource` (at-least-once):

* it joins consumer group ``group`` and subscribes to ``topics``; it fetches only what the
  pipeline has room for (``consume(n)`` with ``n`` = demand), and while the pipeline is full it
  pauses its partitions and keeps polling (heartbeats, rebalances), so a slow pipeline never
  exceeds ``max.poll.interval.ms`` nor loses its group membership;
* offsets are committed per partition only up to the lowest offset not yet settled (acked, or
  failed and handled), every ``commit_every`` seconds and when the run ends, never past
  unfinished work: ``process(fn, n=64, partition_by=...)`` may finish calls in any order and run
  far more calls at once than there are partitions. A crash redelivers at most what was in flight;
* on a rebalance, the revoked partitions' in-flight messages get ``revoke_timeout`` seconds to
  settle, then what settled is committed; whatever settles later is not acknowledged by this
  consumer any more (the partition's new owner gets it again). New partitions start from their
  committed offset (``auto.offset.reset``, default ``earliest``, when there is none);
* a failed message gets its own ``message.action`` or the source's ``on_failure``:
  ``"dead_letter"`` produces it (key, value, headers, plus ``trioflow-reason``,
  ``trioflow-topic``, ``trioflow-partition``, ``trioflow-offset`` headers) to
  ``dead_letter_topic`` (default ``<topic>.dead``), and once the broker confirmed it, counts it
  settled; ``"discard"`` counts it settled. ``"redeliver"`` cannot be honoured for one message
  (a partition is one ordered log: redelivering one message means seeking the whole partition
  back, or stopping it): ``on_failure="redeliver"`` is refused when the source is built, and a
  message failed with ``action="redeliver"`` gets the source's default (logged once).
* Kafka does not count deliveries: ``delivery_count`` is read from a ``trioflow-delivery-count``
  header when a producer set one (a message re-published for another try), else 1;
  ``max_deliveries`` applies to that count (the message is dead-lettered before any stage).

Message data is the record's value (``bytes``, or ``None`` for a tombstone); metadata has
``topic``, ``partition``, ``offset``, ``key``, ``timestamp`` (ms, or ``None``), ``headers``
(a dict of bytes), ``delivery_count`` and, when the record has a ``traceparent`` header, the
W3C trace context as text in ``traceparent`` (and ``tracestate``), which ``OpenTelemetry``
continues; :class:`KafkaSink` writes the current span's (or the message's own) as a
``traceparent`` header. To keep order per record key, key the stage by it
(the key function of a ``messages=True`` stage receives the message)::

    source | tf.process(handle, n=64, partition_by=record_key, messages=True)

Examples:
    >>> source = KafkaSource(["orders"], "billing", bootstrap="127.0.0.1:9092")
    >>> pipeline = source | tf.process(bill, n=64, partition_by=record_key, messages=True)
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, ClassVar, final

import trio

from .._message import ACTIONS, FailureAction, Message, check_failure_options
from .._message import reason_text as _reason_text
from .._sources import Outlet, Source
from ._kafka_producer import KafkaDeliveryError as KafkaDeliveryError
from ._kafka_producer import (
    KafkaSink,
    Producer,
    Record,
    common_options,
    value_bytes,
)
from ._lazy import require
from ._offsets import PartitionOffsets
from ._poison import poison
from ._thread import DedicatedThread
from ._trace_context import TRACEPARENT, from_headers

__all__ = ["KafkaSink", "KafkaSource", "record_key"]

logger: logging.Logger = logging.getLogger("trioflow")

#: header a producer sets to tell how often a message was delivered before
DELIVERY_COUNT_HEADER = "trioflow-delivery-count"

#: the longest a consumer call may block the consumer's thread (a cancel waits this long at most)
POLL_TIMEOUT = 0.1


def record_key(message: Message[Any]) -> Any:
    """The record key of a Kafka message: ``partition_by=record_key`` in a ``messages=True``
    stage keeps order per key."""
    return message.metadata["key"]


@final
class KafkaSource(Source[bytes | None]):
    """Records of Kafka ``topics`` consumed in group ``group`` (see the module docs).

    Args:
        topics: the topics to subscribe to.
        group: the consumer group.
        bootstrap: the brokers, ``host:port[,host:port...]``.
        on_failure: ``"dead_letter"`` (default) or ``"discard"`` for a failed message whose
            ``action`` is ``None`` (``"redeliver"`` is refused, see the module docs).
        dead_letter_topic: where dead letters go (default ``<topic>.dead``).
        max_deliveries: dead-letter a message whose ``delivery_count`` exceeds it.
        commit_every: seconds between commits of the settled offsets.
        revoke_timeout: seconds a revoked partition's in-flight messages get to settle.
        name: the stage label.
        client_options: librdkafka settings (``session_timeout_ms=6000`` or
            ``**{"session.timeout.ms": 6000}``), passed to the consumer and the dead-letter
            producer.
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        topics: Sequence[str] | str,
        group: str,
        *,
        bootstrap: str = "127.0.0.1:9092",
        on_failure: FailureAction = "dead_letter",
        dead_letter_topic: str | None = None,
        max_deliveries: int | None = None,
        commit_every: float = 0.2,
        revoke_timeout: float = 5.0,
        name: str | None = None,
        **client_options: Any,
    ) -> None:
        if on_failure == "redeliver":
            raise ValueError(
                "KafkaSource(on_failure='redeliver') cannot be honoured: a Kafka partition is one "
                "ordered log, so one message cannot be delivered again without seeking the whole "
                "partition back; use 'dead_letter' (default) or 'discard'"
            )
        if on_failure not in ACTIONS:
            raise ValueError(f"on_failure={on_failure!r} must be 'dead_letter' or 'discard'")
        check_failure_options(on_failure, max_deliveries)
        if not commit_every > 0 or not revoke_timeout >= 0:
            raise ValueError("commit_every must be > 0 and revoke_timeout >= 0 seconds")
        self.topics: list[str] = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("KafkaSource needs at least one topic")
        self.group = group
        self.bootstrap = bootstrap
        self.on_failure: FailureAction = on_failure
        self.dead_letter_topic = dead_letter_topic
        self.max_deliveries = max_deliveries
        self.commit_every = commit_every
        self.revoke_timeout = revoke_timeout
        self.name = name
        self.client_options = client_options

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka configuration of the consumer."""
        config: dict[str, Any] = {"auto.offset.reset": "earliest"}
        config.update(common_options(self.bootstrap, self.client_options))
        config.update({"group.id": self.group, "enable.auto.commit": False})
        # offsets are stored and committed by the source only (never by librdkafka on its own)
        config["enable.auto.offset.store"] = False
        return config

    def open(self) -> AbstractAsyncContextManager[Source[bytes | None]]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncGenerator[Source[bytes | None], None]:
        run = _KafkaRun(self)
        await run.start()
        try:
            yield run
        finally:
            with trio.CancelScope(shield=True):
                await run.close()

    async def produce(self, out: Outlet) -> None:  # pragma: no cover - open() yields the run
        raise RuntimeError("KafkaSource runs through open()")

    @property
    def label(self) -> str:
        return self.name or f"kafka:{','.join(self.topics)}/{self.group}"

    def __repr__(self) -> str:
        return f"KafkaSource({self.topics!r}, {self.group!r}, bootstrap={self.bootstrap!r})"


@final
class _KafkaRun(Source[bytes | None]):
    """One run of a :class:`KafkaSource`: the consumer, its thread, the offsets, the acker."""

    def __init__(self, spec: KafkaSource) -> None:
        self.spec = spec
        self.thread = DedicatedThread(f"trioflow {spec.label} consumer")
        self.consumer: Any = None
        self.token: trio.lowlevel.TrioToken | None = None
        #: the assigned partitions' offsets, by (topic, partition)
        self.partitions: dict[tuple[str, int], PartitionOffsets] = {}
        #: fetched, not handed over yet (the pipeline had no room)
        self.held: deque[Any] = deque()
        self.paused = False
        self.acker = _KafkaAcker(self)
        self.abandoned = 0
        self.commits = 0
        #: set (and replaced) whenever the acknowledger settled something
        self.settled = trio.Event()
        self._lag: dict[str, float] = {}

    @property
    def label(self) -> str:
        return self.spec.label

    async def start(self) -> None:
        ck = require("confluent_kafka", "kafka")
        self.token = trio.lowlevel.current_trio_token()
        config = self.spec.consumer_config()

        def create() -> Any:
            consumer = ck.Consumer(config, logger=logger)
            consumer.subscribe(
                self.spec.topics, on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            return consumer

        self.consumer = await self.thread.run(create)

    # -- rebalances (called on the consumer's thread, from inside consume) ----------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        assert self.token is not None
        trio.from_thread.run_sync(self._assigned, partitions, trio_token=self.token)

    def _assigned(self, partitions: list[Any]) -> None:
        for tp in partitions:
            self.partitions[(tp.topic, tp.partition)] = PartitionOffsets()
        logger.info("trioflow: %s was assigned %s", self.label, _names(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        assert self.token is not None
        try:
            offsets = trio.from_thread.run(self._revoked, partitions, trio_token=self.token)
        except trio.RunFinishedError:  # pragma: no cover - closed after the run
            return
        if offsets:
            _commit(consumer, offsets)
        if self.paused:
            consumer.resume(partitions)  # a partition paused here must not stay paused elsewhere

    async def _revoked(self, partitions: list[Any]) -> list[Any]:
        """Give the revoked partitions' in-flight messages a while to settle, then stop acking
        them; return the offsets to commit for them."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        states = [self.partitions[k] for k in keys if k in self.partitions]
        with trio.move_on_after(self.spec.revoke_timeout):
            while any(s.in_flight for s in states):
                await self.settled.wait()
        for s in states:
            s.revoked = True
            self.abandoned += s.in_flight
        gone = set(keys)
        kept = [m for m in self.held if (m.topic(), m.partition()) not in gone]
        self.held = deque(kept)
        offsets = self._positions({k: self.partitions.pop(k) for k in keys if k in self.partitions})
        logger.info(
            "trioflow: %s gave up %s (%d in flight left to their next owner)",
            self.label,
            _names(partitions),
            sum(s.in_flight for s in states),
        )
        return offsets

    # -- consuming ------------------------------------------------------------------------------

    async def produce(self, out: Outlet) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit_loop)
            await self._consume(out)
            nursery.cancel_scope.cancel()

    async def _consume(self, out: Outlet) -> None:
        consumer = self.consumer
        while True:
            room = 0
            with trio.move_on_after(1.0):
                room = await out.demand()
            if not room:
                # the pipeline is full: pause, and keep polling (heartbeats, rebalances)
                await self._set_paused(True)
                self.held.extend(await self.thread.run(partial(consumer.consume, 1, POLL_TIMEOUT)))
                continue
            if self.paused:
                await self._set_paused(False)
            if not self.held:
                got = await self.thread.run(partial(consumer.consume, room, POLL_TIMEOUT))
                self.held.extend(got)
                if not self.held:
                    continue
            take = min(room, len(self.held))
            await self._hand_over(out, [self.held.popleft() for _ in range(take)])

    async def _set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        consumer = self.consumer

        def switch() -> None:
            assigned = consumer.assignment()
            if paused:
                consumer.pause(assigned)
            else:
                consumer.resume(assigned)

        await self.thread.run(switch)
        self.paused = paused

    async def _hand_over(self, out: Outlet, records: list[Any]) -> None:
        """Hand records over in bulk ((partition, offset) as ids, metadata made only when a
        message is needed); a poison one goes already failed."""
        spec, acker = self.spec, self.acker
        limit = spec.max_deliveries
        data: list[Any] = []
        ids: list[tuple[PartitionOffsets, int]] = []
        held: dict[tuple[PartitionOffsets, int], Any] = {}
        handed: dict[PartitionOffsets, list[int]] = {}
        failed: list[Message[Any]] = []
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() == -191:  # _PARTITION_EOF: not an error
                    continue
                logger.warning("trioflow: %s: consumer error %s", self.label, error)
                continue
            state = self.partitions.get((record.topic(), record.partition()))
            if state is None or state.revoked:
                continue  # fetched just before its partition was revoked
            offset = record.offset()
            handed.setdefault(state, []).append(offset)
            if limit is not None and (count := _delivery_count(record)) > limit:
                meta = _metadata(record)
                failed.append(poison(record.value(), meta, acker, count, limit))
                continue
            ident = (state, offset)
            data.append(record.value())
            ids.append(ident)
            held[ident] = record
        for state, offsets in handed.items():
            state.handed(offsets)

        def metadata(ident: tuple[PartitionOffsets, int]) -> dict[str, Any]:
            return _metadata(held.pop(ident))

        # one hand-over: a drain cannot separate the poison records from the rest of the pull
        await out.send_bulk(data, acknowledger=acker, ids=ids, metadata=metadata, failed=failed)

    # -- committing -----------------------------------------------------------------------------

    def _positions(self, states: dict[tuple[str, int], PartitionOffsets]) -> list[Any]:
        ck = require("confluent_kafka", "kafka")
        offsets: list[Any] = []
        for (topic, partition), state in states.items():
            position = state.commit
            if position > state.committed:
                offsets.append(ck.TopicPartition(topic, partition, position))
                state.committed = position
        return offsets

    async def commit(self, *, wait: bool = False) -> None:
        """Commit every partition's settled offsets (on the consumer's thread); without
        ``wait``, the commit is sent and not waited for (the next one supersedes it)."""
        offsets = self._positions(self.partitions)
        if offsets:
            consumer = self.consumer
            await self.thread.run(lambda: _commit(consumer, offsets, wait=wait))
            self.commits += 1
        await self._refresh_lag()

    async def _commit_loop(self) -> None:
        while True:
            await trio.sleep(self.spec.commit_every)
            await self.commit()

    async def _refresh_lag(self) -> None:
        consumer, keys = self.consumer, list(self.partitions)

        def read() -> dict[str, float]:
            ck = require("confluent_kafka", "kafka")
            lag: dict[str, float] = {}
            for topic, partition in keys:
                _, high = consumer.get_watermark_offsets(
                    ck.TopicPartition(topic, partition), cached=True
                )
                position = consumer.position([ck.TopicPartition(topic, partition)])[0].offset
                if high >= 0 and position >= 0:
                    lag[f"lag[{topic}/{partition}]"] = float(max(0, high - position))
            return lag

        lag = await self.thread.run(read)
        lag["lag"] = sum(lag.values())
        self._lag = lag

    def source_metrics(self) -> dict[str, float]:
        """Consumer lag (total and per partition, from the high watermarks librdkafka last saw),
        messages ``in_flight``, ``abandoned`` at revokes, ``commits`` made."""
        figures = dict(self._lag)
        figures["in_flight"] = float(sum(s.in_flight for s in self.partitions.values()))
        figures["abandoned"] = float(self.abandoned)
        figures["commits"] = float(self.commits)
        return figures

    async def close(self) -> None:
        """Commit what settled, leave the group (revoking: see ``_revoked``), stop the thread."""
        consumer = self.consumer
        if consumer is not None:
            try:
                with trio.move_on_after(10.0):
                    await self.commit(wait=True)
                    await self.thread.run(consumer.close)
            finally:
                self.thread.stop()
        await self.acker.close()


def _commit(consumer: Any, offsets: list[Any], *, wait: bool = True) -> None:
    ck = require("confluent_kafka", "kafka")
    try:
        consumer.commit(offsets=offsets, asynchronous=not wait)
    except ck.KafkaException as exc:
        # a commit refused during a rebalance (fenced, unknown member): the partitions' new
        # owner starts from the last commit that went through; nothing is lost, some is redone
        logger.warning("trioflow: kafka commit of %s failed: %s", _names(offsets), exc)


def _names(partitions: list[Any]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "nothing"


def _delivery_count(record: Any) -> int:
    """The ``trioflow-delivery-count`` header of a record (1 without one)."""
    found: Any = None
    for name, value in record.headers() or ():
        if name == DELIVERY_COUNT_HEADER:
            found = value  # the last one, as a dict of the headers keeps it
    try:
        return int(found) if found is not None else 1
    except (TypeError, ValueError):
        return 1


def _metadata(record: Any) -> dict[str, Any]:
    headers: dict[str, Any] = dict(record.headers() or ())
    deliveries = _delivery_count(record)
    kind, stamp = record.timestamp()
    meta: dict[str, Any] = {
        "topic": record.topic(),
        "partition": record.partition(),
        "offset": record.offset(),
        "key": record.key(),
        "timestamp": stamp if kind else None,
        "headers": headers,
        "delivery_count": deliveries,
    }
    if headers and TRACEPARENT in headers:
        from_headers(headers, meta)
    return meta


@final
class _KafkaAcker:
    """Settles offsets; produces dead letters first (on a producer of its own)."""

    def __init__(self, run: _KafkaRun) -> None:
        self.run = run
        self.dead_lettered = 0
        self.discarded = 0
        self._producer: Producer | None = None
        self._warned = False

    def __repr__(self) -> str:
        return f"<kafka acker {self.run.label}>"

    def _notify(self) -> None:
        run = self.run
        run.settled.set()
        run.settled = trio.Event()

    async def ack_ids(self, ids: list[tuple[PartitionOffsets, int]]) -> None:
        for state, offset in ids:
            state.settle(offset)
        self._notify()

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        dead: list[Message[Any]] = []
        for m in failed:
            if self._action(m) == "dead_letter":
                dead.append(m)
            else:
                self.discarded += 1
        if dead:
            await self._dead_letter(dead)
        for m in [*successful, *failed]:
            meta = m.metadata
            state = self.run.partitions.get((meta["topic"], meta["partition"]))
            if state is not None:
                state.settle(meta["offset"])
        self._notify()

    def _action(self, m: Message[Any]) -> FailureAction:
        action = m.action
        if action == "redeliver":
            if not self._warned:
                self._warned = True
                logger.warning(
                    "%r: a message failed with action='redeliver', which Kafka cannot honour for "
                    "one message; it gets on_failure=%r instead (logged once)",
                    self.run.spec,
                    self.run.spec.on_failure,
                )
            action = None
        return action or self.run.spec.on_failure

    async def _dead_letter(self, messages: list[Message[Any]]) -> None:
        spec = self.run.spec
        if self._producer is None:
            self._producer = Producer(
                common_options(spec.bootstrap, spec.client_options), f"{spec.label} dead letters"
            )
        records: list[Record] = []
        for m in messages:
            meta = m.metadata
            headers = dict(meta.get("headers") or {})
            headers.update(
                {
                    "trioflow-reason": _reason_text(m.reason).encode(),
                    "trioflow-topic": str(meta["topic"]).encode(),
                    "trioflow-partition": str(meta["partition"]).encode(),
                    "trioflow-offset": str(meta["offset"]).encode(),
                }
            )
            topic = spec.dead_letter_topic or f"{meta['topic']}.dead"
            records.append((topic, meta.get("key"), value_bytes(m.data), list(headers.items())))
        await self._producer.send(records)
        self.dead_lettered += len(records)

    async def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
