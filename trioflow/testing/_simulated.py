"""``SimulatedBroker``: an in-memory broker with the semantics of a real one, and faults.

Model (what a Redis Streams consumer group, an SQS queue or RabbitMQ give, in one shape):

* a *topic* has partitions, each an append-only log; :meth:`SimulatedBroker.publish` appends to
  the partition of ``key`` (a stable hash), or to one drawn from the seed when there is no key;
* a *consumer group* reads a topic from its start; its consumers share the partitions (each
  delivery goes to one consumer), in log order per partition, redeliveries first;
* a delivery is a *lease*: at-least-once. Unacked after ``visibility_timeout`` seconds, the
  message is delivered again, with ``delivery_count`` one higher. An ack settles the message for
  the group whichever of its deliveries sends it (as Redis ``XACK`` by id);
* a failed message is settled by its action: ``"dead_letter"`` (published to the dead-letter
  topic, ``<topic>:dead``, then settled), ``"discard"`` (settled), ``"redeliver"`` (visible
  again after ``redeliver_delay`` seconds);
* each consumer connection has a *generation*: a crash or a broker restart starts a new one, and
  acks that carry an older generation are dropped (that connection is gone).

Everything runs on trio's clock, and every choice the broker makes comes from ``random.Random
(seed)``, so under ``trio.testing.MockClock`` a seed replays the same run.

The source (:meth:`SimulatedBroker.source`) hands over with ``out.send_bulk`` and acks by
receipt with ``ack_ids``, as the Redis Streams and RabbitMQ sources do.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from .._message import FailureAction, reason_text
from ._sim_faults import (
    BrokerFault,
    CrashConsumer,
    DelayAcks,
    DuplicateDelivery,
    RestartBroker,
    SlowPartition,
)
from ._sim_model import (
    AckObserver,
    Consumer,
    ConsumerCrashed,
    GroupState,
    Published,
    Receipt,
    TopicLog,
    sim_now,
)

if TYPE_CHECKING:
    from ._sim_source import SimulatedSource

__all__ = ["ConsumerCrashed", "Published", "Receipt", "SimulatedBroker"]


@final
class SimulatedBroker:
    """An in-memory broker for tests: partitions, consumer groups, leases, dead letters, faults.

    Args:
        seed: every choice the broker makes (keyless partitions, which partition a poll starts
            at, a fault point left to chance) is drawn from ``random.Random(seed)``.
        visibility_timeout: seconds an unacked delivery stays leased before the message is
            delivered again.
        partitions: partitions of a topic created implicitly (by ``publish`` or ``source``).
        redeliver_delay: seconds before a message failed with ``action="redeliver"`` is
            visible again (so a message that fails at once cannot spin).

    Under ``trio.testing.MockClock`` the same seed and the same calls give the same deliveries;
    :attr:`log` lists what happened, with the time.

    Examples:
        >>> broker = SimulatedBroker(seed=7)
        >>> broker.create_topic("orders", partitions=3)
        >>> broker.publish("orders", b'{"id": 1}', key="customer-9")
        'orders/2/0'
        >>> pipeline = broker.source("orders", "billing", "c0") | tf.sink(save)
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        visibility_timeout: float = 30.0,
        partitions: int = 1,
        redeliver_delay: float = 1.0,
    ) -> None:
        if not visibility_timeout > 0:
            raise ValueError(f"visibility_timeout={visibility_timeout!r} must be positive")
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions={partitions!r} must be a positive integer")
        if not redeliver_delay >= 0:
            raise ValueError(f"redeliver_delay={redeliver_delay!r} must be non-negative")
        self.seed: int = seed
        self.visibility_timeout: float = visibility_timeout
        self.default_partitions: int = partitions
        self.redeliver_delay: float = redeliver_delay
        self._rng = random.Random(seed)
        self._topics: dict[str, TopicLog] = {}
        self._groups: dict[tuple[str, str], GroupState] = {}
        #: (topic, group, consumer) -> connection generation
        self._generation: dict[Consumer, int] = {}
        #: (topic, group, consumer) -> {message id: delivery count} handed out, not settled
        self._outstanding: dict[Consumer, dict[str, int]] = {}
        #: (topic, message id) of messages in flight at a crash or a restart
        self.in_flight_at_fault: set[tuple[str, str]] = set()
        #: (topic, message id) of messages a fault delivered twice
        self.duplicated: set[tuple[str, str]] = set()
        #: (topic, message id) of messages delivered again because a lease expired
        self.expired: set[tuple[str, str]] = set()
        #: (topic, message id) of messages a consumer claimed from another that still held
        #: them (a simulated client's XCLAIM after ``claim_idle``)
        self.claimed_in_flight: set[tuple[str, str]] = set()
        #: what happened: (time, event, detail)
        self.log: list[tuple[float, str, str]] = []
        self.deliveries: int = 0
        self.stale_acks: int = 0
        self._down_until = -math.inf
        self._ack_delay: dict[str | None, float] = {}
        self._slow: dict[tuple[str, int], float] = {}
        self._dup_ids: set[str] = set()
        self._crashes: dict[Consumer, int] = {}
        self._armed: list[tuple[int, BrokerFault, str]] = []
        self._crash_after: list[tuple[str, str | None, int]] = []
        self._changed: trio.Event | None = None
        #: called on every ack of a successful delivery: (topic, id, delivery count, consumer,
        #: data, stale)
        self.ack_observers: list[AckObserver] = []
        #: state of simulated clients kept with the broker (e.g. the Redis consumer groups)
        self._extensions: dict[str, Any] = {}
        #: (topic, id a client gave a message) -> the message's broker id
        self._aliases: dict[tuple[str, str], str] = {}
        #: called when a consumer crashes: (group, consumer)
        self.crash_observers: list[Callable[[str, str], None]] = []

    def __repr__(self) -> str:
        return f"SimulatedBroker(seed={self.seed!r})"

    # -- topics and publishing -----------------------------------------------------------------

    def create_topic(self, name: str, *, partitions: int | None = None) -> None:
        """Create topic ``name`` with ``partitions`` partitions (default: the broker's).

        Raises ``ValueError`` if it exists with another number of partitions.
        """
        count = self.default_partitions if partitions is None else partitions
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"partitions={partitions!r} must be a positive integer")
        topic = self._topics.get(name)
        if topic is not None:
            if len(topic.logs) != count:
                raise ValueError(
                    f"topic {name!r} exists with {len(topic.logs)} partitions, not {count}"
                )
            return
        self._topics[name] = TopicLog(name, count)

    def _topic(self, name: str) -> TopicLog:
        if name not in self._topics:
            self.create_topic(name)
        return self._topics[name]

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        key: Any = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Append ``data`` to ``topic`` (created if missing) and return the message id,
        ``"<topic>/<partition>/<offset>"``. A ``key`` picks the partition by a stable hash;
        without one the partition is drawn from the seed. Plain method: callable outside trio.

        Example:
            >>> broker.publish("orders", {"id": 1}, key="customer-9", headers={"trace": "x"})
        """
        t = self._topic(topic)
        n = len(t.logs)
        partition = self._rng.randrange(n) if key is None else zlib.crc32(repr(key).encode()) % n
        log = t.logs[partition]
        offset = len(log)
        mid = f"{topic}/{partition}/{offset}"
        message = Published(mid, topic, partition, offset, data, key, dict(headers or {}))
        log.append(message)
        t.order.append(message)
        self._notify()
        return mid

    def messages(self, topic: str) -> list[Published]:
        """Every message of ``topic``, in publish order per partition, partitions in order."""
        t = self._topics.get(topic)
        return [] if t is None else [p for log in t.logs for p in log]

    def dead_letters(self, topic: str) -> list[Published]:
        """The dead-letter topic of ``topic`` (``<topic>:dead``): each entry's ``data`` is the
        original data; its headers hold ``reason``, ``original_id`` and ``delivery_count``."""
        return self.messages(f"{topic}:dead")

    def outcome(self, topic: str, group: str, message_id: str) -> str | None:
        """How ``message_id`` was settled in ``group``: ``"acked"``, ``"dead_letter"``,
        ``"discard"``, or ``None`` (not yet)."""
        g = self._groups.get((topic, group))
        st = None if g is None else g.states.get(message_id)
        return None if st is None else st.outcome

    def delivery_count(self, topic: str, group: str, message_id: str) -> int:
        """How often ``message_id`` was delivered to ``group``."""
        g = self._groups.get((topic, group))
        st = None if g is None else g.states.get(message_id)
        return 0 if st is None else st.deliveries

    def unsettled(self, topic: str, group: str) -> list[str]:
        """Ids of messages of ``topic`` not yet settled in ``group``."""
        g = self._group(topic, group)
        return [
            p.id
            for p in self.messages(topic)
            if (st := g.states.get(p.id)) is None or st.outcome is None
        ]

    def busy(self, topic: str, group: str) -> bool:
        """Whether ``group`` still has work on ``topic``: a message not settled, or a duplicate
        delivery a fault asked for and not yet made."""
        g = self._group(topic, group)
        return bool(self.unsettled(topic, group)) or any(g.forced)

    def clone(self) -> SimulatedBroker:
        """A broker with the same settings, seed state, topics and messages, and no consumer
        state (no group has read anything): to run the same scenario again."""
        other = SimulatedBroker(
            self.seed,
            visibility_timeout=self.visibility_timeout,
            partitions=self.default_partitions,
            redeliver_delay=self.redeliver_delay,
        )
        other._rng.setstate(self._rng.getstate())
        for name, t in self._topics.items():
            copy = TopicLog(name, len(t.logs))
            copy.logs = [list(log) for log in t.logs]
            copy.order = list(t.order)
            other._topics[name] = copy
        return other

    # -- faults ----------------------------------------------------------------------------------

    def crash_consumer(
        self, consumer: str, *, group: str | None = None, after: int | None = None
    ) -> None:
        """Crash ``consumer`` (of ``group``, or of every group): now, or once ``after`` more
        deliveries have been made to it.

        Its connection is gone: its source raises :class:`ConsumerCrashed`, acks it sends are
        dropped, and the messages it held are delivered again after the visibility timeout.
        A source of the same name opened later is a new connection.

        Example:
            >>> broker.crash_consumer("c0", after=5)
        """
        if after:
            self._crash_after.append((consumer, group, after))
            return
        now = sim_now()
        for key, gen in list(self._generation.items()):
            topic, gname, cname = key
            if cname != consumer or (group is not None and gname != group):
                continue
            self._generation[key] = gen + 1
            self._crashes[key] = self._crashes.get(key, 0) + 1
            held = self._outstanding.pop(key, {})
            for mid in held:
                self.in_flight_at_fault.add((topic, mid))
            self._record(now, "crash", f"{gname}/{cname} holding {sorted(held)}")
            for observer in list(self.crash_observers):
                observer(gname, cname)
        self._notify()

    def duplicate(self, topic: str, message: int | str) -> None:
        """Deliver a message of ``topic`` twice: on its next delivery it is made visible again
        at once. ``message`` is its id, or its number in the topic's publish order.

        Example:
            >>> broker.duplicate("orders", 3)
        """
        mid = message if isinstance(message, str) else self.messages(topic)[message].id
        self._dup_ids.add(mid)

    def restart(self, *, downtime: float = 0.0) -> None:
        """Restart the broker: every connection drops (acks sent on it are lost), what was in
        flight is visible again at once, and for ``downtime`` seconds nothing is delivered or
        acked. Sources reconnect on their own.

        Example:
            >>> broker.restart(downtime=2.0)
        """
        now = sim_now()
        for key in list(self._generation):
            self._generation[key] += 1
        for (topic, _, _), held in self._outstanding.items():
            for mid in held:
                self.in_flight_at_fault.add((topic, mid))
        self._outstanding.clear()
        for g in self._groups.values():
            for mid, st in list(g.leased.items()):
                del g.leased[mid]
                st.owner = None
                st.lease_until = math.inf
                _, partition, offset = mid.rsplit("/", 2)
                g.returned[int(partition)].add(int(offset))
        self._down_until = now + downtime
        self._record(now, "restart", f"downtime={downtime}")
        self._notify()

    def delay_acks(self, seconds: float, *, consumer: str | None = None) -> None:
        """From now on, acks of ``consumer`` (``None``: of every consumer) take ``seconds`` to
        reach the broker (the acknowledger waits that long)."""
        self._ack_delay[consumer] = seconds

    def slow_partition(self, topic: str, partition: int, seconds: float) -> None:
        """From now on, partition ``partition`` of ``topic`` hands out one chunk per
        ``seconds``."""
        self._slow[(topic, partition)] = seconds

    def resolve(self, faults: Iterable[BrokerFault], *, topic: str) -> list[BrokerFault]:
        """The schedule with every ``after=None`` replaced by the point the seed draws for it
        (between 1 and the number of messages of ``topic``): what :meth:`schedule` arms.

        Example:
            >>> SimulatedBroker(seed=1).resolve([CrashConsumer("c0")], topic="orders")
            [CrashConsumer(consumer='c0', after=17)]
        """
        rng = random.Random(self.seed)  # its own draws: the broker's stay as they were
        total = max(1, len(self.messages(topic)))
        resolved: list[BrokerFault] = []
        for fault in faults:
            point = rng.randint(1, total)
            if not isinstance(fault, DuplicateDelivery) and fault.after is None:
                fault = attrs.evolve(fault, after=point)
            resolved.append(fault)
        return resolved

    def schedule(self, faults: Iterable[BrokerFault], *, topic: str) -> None:
        """Arm a fault schedule for ``topic``: each fault fires once the broker has made its
        ``after``-th delivery (counted from now; ``after=None``: see :meth:`resolve`)."""
        for fault in self.resolve(faults, topic=topic):
            if isinstance(fault, DuplicateDelivery):
                msgs = self.messages(topic)
                if fault.message < len(msgs):
                    self.duplicate(topic, msgs[fault.message].id)
                continue
            after = fault.after or 0
            self._armed.append((self.deliveries + after, fault, topic))
        self._armed.sort(key=lambda a: a[0])
        self._fire(sim_now())

    def _fire(self, now: float) -> None:
        while self._armed and self._armed[0][0] <= self.deliveries:
            _, fault, topic = self._armed.pop(0)
            self._record(now, "fault", repr(fault))
            if isinstance(fault, CrashConsumer):
                self.crash_consumer(fault.consumer)
            elif isinstance(fault, RestartBroker):
                self.restart(downtime=fault.downtime)
            elif isinstance(fault, DelayAcks):
                self.delay_acks(fault.seconds, consumer=fault.consumer)
            elif isinstance(fault, SlowPartition):
                self.slow_partition(topic, fault.partition, fault.seconds)

    # -- consuming -------------------------------------------------------------------------------

    def source(
        self,
        topic: str,
        group: str,
        consumer: str = "c0",
        **options: Any,
    ) -> SimulatedSource:
        """A trioflow source reading ``topic`` in consumer group ``group`` as ``consumer``.

        Options (as for the real broker sources): ``on_failure`` (``"dead_letter"`` default,
        ``"discard"``, ``"redeliver"``), ``max_deliveries`` (default 5; ``None``: no limit),
        ``count`` (most messages handed over at once, default 10), ``partitions`` (the
        partitions this consumer reads; default all), ``name``. See :class:`SimulatedSource`.

        Example:
            >>> report = await (broker.source("orders", "g", "c0") | tf.sink(save)).run(stop=stop)
        """
        from ._sim_source import SimulatedSource

        return SimulatedSource(self, topic, group, consumer, **options)

    def _group(self, topic: str, group: str) -> GroupState:
        g = self._groups.get((topic, group))
        if g is None:
            g = self._groups[(topic, group)] = GroupState(self._topic(topic), group)
        return g

    def _connect(self, topic: str, group: str, consumer: str) -> None:
        self._group(topic, group)
        key = (topic, group, consumer)
        self._generation[key] = self._generation.get(key, 0) + 1
        self._record(sim_now(), "connect", f"{group}/{consumer} gen={self._generation[key]}")

    def _crashes_of(self, topic: str, group: str, consumer: str) -> int:
        return self._crashes.get((topic, group, consumer), 0)

    def _expire(self, g: GroupState, now: float) -> None:
        for mid, st in list(g.leased.items()):
            if st.lease_until <= now:
                del g.leased[mid]
                if st.owner is not None:
                    self.expired.add((g.topic.name, mid))
                    self._record(now, "expired", f"{mid} held by {st.owner}")
                st.owner = None
                st.lease_until = math.inf
                _, partition, offset = mid.rsplit("/", 2)
                g.returned[int(partition)].add(int(offset))

    def _take(
        self,
        topic: str,
        group: str,
        consumer: str,
        count: int,
        partitions: Sequence[int] | None,
    ) -> list[tuple[Published, int, Receipt]]:
        from ._sim_take import take

        return take(self, topic, group, consumer, count, partitions)

    def _due(self, topic: str, group: str, consumer: str, taken: int) -> bool:
        if self._armed and self._armed[0][0] <= self.deliveries:
            return True
        return any(
            name == consumer and (gname is None or gname == group) and left <= taken
            for name, gname, left in self._crash_after
        )

    def _count_deliveries(self, topic: str, group: str, consumer: str, n: int) -> None:
        keep: list[tuple[str, str | None, int]] = []
        crash = False
        for name, gname, left in self._crash_after:
            if name == consumer and (gname is None or gname == group):
                left -= n
                if left <= 0:
                    crash = True
                    continue
            keep.append((name, gname, left))
        self._crash_after = keep
        if crash:
            self.crash_consumer(consumer, group=group)

    def _next_event(self, topic: str, group: str) -> float:
        """When something may become visible without a call (a lease expiring, a slow partition
        ready, the broker back up)."""
        g = self._group(topic, group)
        now = sim_now()
        if any(st.lease_until <= now for st in g.leased.values()):
            self._expire(g, now)
            self._notify()
        times = [st.lease_until for st in g.leased.values()]
        times += [t for t in g.ready_at if t > now]
        if self._down_until > now:
            times.append(self._down_until)
        return min(times, default=math.inf)

    async def _wait(self, topic: str, group: str) -> None:
        """Wait until something changed or may have (cancellable)."""
        if self._changed is None:
            self._changed = trio.Event()
        event = self._changed
        with trio.move_on_at(self._next_event(topic, group)):
            await event.wait()

    def _notify(self) -> None:
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    def _record(self, now: float, event: str, detail: str) -> None:
        self.log.append((now, event, detail))

    # -- settling (called by the source's acknowledger) ----------------------------------------

    def _live(self, topic: str, group: str, consumer: str, receipt: Receipt) -> bool:
        if sim_now() < self._down_until:
            return False
        return receipt[2] == self._generation.get((topic, group, consumer))

    def _ack(self, topic: str, group: str, consumer: str, receipt: Receipt) -> None:
        mid, count, _ = receipt
        g = self._group(topic, group)
        live = self._live(topic, group, consumer, receipt)
        for observer in list(self.ack_observers):
            observer(topic, mid, count, consumer, self._data(g, mid), not live)
        if not live:
            self.stale_acks += 1
            self._record(sim_now(), "stale ack", f"{mid}#{count} from {consumer}")
            return
        self._outstanding.get((topic, group, consumer), {}).pop(mid, None)
        st = g.state(mid)
        if st.outcome is None:
            st.outcome = "acked"
            g.leased.pop(mid, None)
            self._record(sim_now(), "ack", f"{mid}#{count} by {consumer}")
            self._notify()

    def _fail(
        self,
        topic: str,
        group: str,
        consumer: str,
        receipt: Receipt,
        action: FailureAction,
        reason: Any,
        dead_letter: str,
    ) -> None:
        mid, count, _ = receipt
        if not self._live(topic, group, consumer, receipt):
            self.stale_acks += 1
            self._record(sim_now(), "stale fail", f"{mid}#{count} from {consumer}")
            return
        self._outstanding.get((topic, group, consumer), {}).pop(mid, None)
        g = self._group(topic, group)
        st = g.state(mid)
        if st.outcome is not None:
            return
        now = sim_now()
        if action == "redeliver":
            st.owner = None
            st.lease_until = now + self.redeliver_delay
            g.leased[mid] = st
            self._record(now, "redeliver", f"{mid}#{count}")
        else:
            st.outcome = action
            g.leased.pop(mid, None)
            if action == "dead_letter":
                text = reason_text(reason)
                self.publish(
                    dead_letter,
                    self._data(g, mid),
                    headers={"reason": text, "original_id": mid, "delivery_count": count},
                )
            self._record(now, action, f"{mid}#{count}")
        self._notify()

    def _data(self, g: GroupState, mid: str) -> Any:
        _, partition, offset = mid.rsplit("/", 2)
        return g.topic.logs[int(partition)][int(offset)].data

    def _delay_for(self, consumer: str) -> float:
        return self._ack_delay.get(consumer, self._ack_delay.get(None, 0.0))
