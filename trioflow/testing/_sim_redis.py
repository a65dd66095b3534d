"""``SimulatedRedis``: a Redis Streams client backed by a :class:`SimulatedBroker`, for the real
:class:`~trioflow.connectors.redis.RedisStreamSource`.

It answers the coredis commands the source sends (``XGROUP CREATE``, ``XREADGROUP``, ``XACK``,
``XADD``, ``XPENDING``, ``XCLAIM``, ``XAUTOCLAIM``, ``XINFO GROUPS``, and pipelines of them) with
coredis's return shapes and Redis's semantics, over the broker's topics (a topic is a stream; the
ids are ``"<n>-0"`` in publish order):

* a consumer group has a *pending entries list* (PEL): each entry read is owned by a consumer,
  with a delivery count and the time of its last delivery. Nothing comes back on its own (there
  is no visibility timeout in Redis): an entry is read again when its consumer walks its own
  pending list (a restarted consumer of the same name), or claimed by ``XCLAIM``/``XAUTOCLAIM``
  once it has been idle long enough;
* ``XACK`` settles by id; an ``XADD`` to another stream carrying ``trioflow_id`` (what the source
  dead-letters) makes the next ``XACK`` of that id a dead letter, published to the broker's
  dead-letter topic as :class:`SimulatedBroker` does;
* the broker's faults apply: a crashed consumer's client raises
  :class:`~trioflow.testing.ConsumerCrashed` (its entries stay pending, for a claim or its
  restart); a broker restart makes every command raise coredis's ``ConnectionError`` during the
  downtime (the source reconnects, its pending list survives, as with Redis persistence);
  a duplicate makes an entry claimable at once after its delivery (as if its consumer had been
  idle past ``claim_idle``); delayed acks delay each pipeline of ``XADD``/``XACK``. Slow
  partitions do not apply (a stream has no partitions).

A discard is an ``XACK`` in Redis, like a success: the broker cannot tell them apart, so with
this client ``check_service`` counts a discarded message as acked (``on_failure="discard"``
and ``ServiceExpect(discarded=...)`` do not fit it).
"""

from __future__ import annotations

# pyright: reportPrivateUsage=false
# (a collaborator of SimulatedBroker: it reads and books the broker's private state)
import importlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, cast, final

import trio

from ._sim_model import ConsumerCrashed, Published, sim_now
from ._simulated import SimulatedBroker

__all__ = ["SimulatedRedis"]


def _coredis() -> Any:
    try:
        import coredis

        # the submodules the answers use (an import makes them attributes of the package)
        importlib.import_module("coredis.exceptions")
        importlib.import_module("coredis.response.types")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "SimulatedRedis answers as coredis does: pip install 'trioflow[redis]'"
        ) from exc
    return coredis


def _key(rid: str) -> tuple[int, int]:
    ms, _, seq = rid.partition("-")
    return int(ms), int(seq or 0)


def _bound(rid: str) -> tuple[int, int, bool]:
    """A range bound of XPENDING/XAUTOCLAIM: (key, exclusive)."""
    if rid == "-":
        return 0, 0, False
    if rid == "+":
        return 2**62, 0, False
    if rid.startswith("("):
        return (*_key(rid[1:]), True)
    return (*_key(rid), False)


def _in_range(rid: str, start: str, end: str) -> bool:
    k = _key(rid)
    lo_ms, lo_seq, lo_x = _bound(start)
    hi_ms, hi_seq, hi_x = _bound(end)
    lo_t, hi_t = (lo_ms, lo_seq), (hi_ms, hi_seq)
    above = k > lo_t if lo_x else k >= lo_t
    below = k < hi_t if hi_x else k <= hi_t
    return above and below


@final
class _Pending:
    __slots__ = ("consumer", "delivered", "last")

    def __init__(self, consumer: str, now: float) -> None:
        self.consumer = consumer
        self.delivered = 1
        self.last = now


@final
class _StreamGroup:
    __slots__ = ("consumers", "dead", "next", "pel")

    def __init__(self, start: int) -> None:
        #: index (in publish order) of the next entry never delivered to the group
        self.next = start
        #: id -> pending entry, in id order
        self.pel: dict[str, _Pending] = {}
        #: ids dead-lettered (XADD to the dead-letter stream) and not yet acked
        self.dead: set[str] = set()
        self.consumers: set[str] = set()


def _groups(broker: SimulatedBroker) -> dict[tuple[str, str], _StreamGroup]:
    groups: dict[tuple[str, str], _StreamGroup] = broker._extensions.setdefault("redis", {})
    return groups


@final
class SimulatedRedis:
    """A coredis-shaped client of a :class:`SimulatedBroker`, for ``RedisStreamSource(...,
    client=SimulatedRedis(broker))``: the source's own logic (claims, poison isolation,
    dead letters, reconnects) runs against the broker's faults.

    Args:
        broker: the broker whose topics are the streams.
        consumer: the consumer this client reads for (default: the first one named in a
            command); its acks are checked by ``check_service`` against its deliveries.
        lost_replies: when a broker restart fires at a delivery, the reply of the command
            that made it is lost with the connection (the entries are delivered, their count
            raised, but the source never sees them); by default the reply gets through and
            the next command fails.

    Data published to the broker is turned into a stream entry's fields: a mapping as
    ``{str(k): str(v)}``, anything else as ``{"data": str(data)}``.

    Examples:
        >>> def build(source):
        ...     redis = RedisStreamSource(
        ...         source.topic, source.group, source.consumer,
        ...         client=SimulatedRedis(source.broker), claim_idle=5.0,
        ...     )
        ...     return redis | tf.sink(save)
        >>> check_service(build, broker, "orders", expect=[], consumers=2)
    """

    def __init__(
        self, broker: SimulatedBroker, *, consumer: str | None = None, lost_replies: bool = False
    ) -> None:
        self.broker = broker
        self.consumer = consumer
        self.lost_replies = lost_replies
        #: (stream, group) -> (crashes, generation) when this client first served it
        self._bound: dict[tuple[str, str], tuple[int, int]] = {}
        self._coredis = _coredis()

    def __repr__(self) -> str:
        return f"SimulatedRedis({self.broker!r}, consumer={self.consumer!r})"

    # -- connection state --------------------------------------------------------------------

    def _check(self, stream: str, group: str | None, consumer: str | None = None) -> None:
        """Raise as the real client would: ConnectionError while the broker is down or once
        after it restarted; ConsumerCrashed once this client's consumer was crashed."""
        broker = self.broker
        if consumer is not None and self.consumer is None:
            self.consumer = consumer
        if sim_now() < broker._down_until:
            raise self._coredis.exceptions.ConnectionError(
                "the simulated broker is restarting: connection refused"
            )
        name = self.consumer
        if group is None or name is None:
            return
        key = (stream, group)
        crashes = broker._crashes_of(stream, group, name)
        bound = self._bound.get(key)
        if bound is None:
            broker._connect(stream, group, name)
            self._bound[key] = (crashes, broker._generation[(stream, group, name)])
            return
        if crashes != bound[0]:
            raise ConsumerCrashed(f"redis {stream}/{group}/{name}: the consumer was crashed")
        generation = broker._generation.get((stream, group, name), 0)
        if generation != bound[1]:
            self._bound[key] = (crashes, generation)  # the next command is a new connection
            raise self._coredis.exceptions.ConnectionError(
                "the simulated broker restarted: connection reset"
            )

    def _group(self, stream: str, group: str) -> _StreamGroup:
        g = _groups(self.broker).get((stream, group))
        if g is None:
            raise self._coredis.exceptions.ResponseError(
                f"NOGROUP No such key '{stream}' or consumer group '{group}'"
            )
        return g

    def _rid(self, stream: str, index: int) -> str:
        rid = f"{index + 1}-0"
        mid = self.broker._topic(stream).order[index].id
        self.broker._aliases[(stream, rid)] = mid
        return rid

    def _message(self, stream: str, rid: str) -> Published | None:
        order = self.broker._topic(stream).order
        index = _key(rid)[0] - 1
        return order[index] if 0 <= index < len(order) else None

    def _entry(self, stream: str, rid: str) -> Any:
        msg = self._message(stream, rid)
        data: Any = None if msg is None else msg.data
        if isinstance(data, Mapping):
            items = cast("Mapping[object, object]", data)
            fields = OrderedDict((str(k), str(v)) for k, v in items.items())
        else:
            fields = OrderedDict([("data", str(data))])
        return self._coredis.response.types.StreamEntry(rid, fields)

    def _delivered(
        self, stream: str, group: str, consumer: str, rid: str, count: int, now: float
    ) -> None:
        """Book one delivery with the broker (counts, what the consumer holds, faults)."""
        broker = self.broker
        msg = self._message(stream, rid)
        assert msg is not None
        st = broker._group(stream, group).state(msg.id)
        st.deliveries = count
        broker._outstanding.setdefault((stream, group, consumer), {})[msg.id] = count
        broker.deliveries += 1
        if msg.id in broker._dup_ids:
            # as if its consumer had gone idle: the next claim of another consumer takes it
            broker._dup_ids.discard(msg.id)
            broker.duplicated.add((stream, msg.id))
            _groups(broker)[(stream, group)].pel[rid].last = -math.inf
            broker._record(now, "duplicate", msg.id)

    def _after_delivery(self, stream: str, group: str, consumer: str, rids: list[str]) -> None:
        broker = self.broker
        if not rids:
            return
        now = sim_now()
        broker._record(now, "deliver", f"{group}/{consumer}: " + " ".join(rids))
        broker._count_deliveries(stream, group, consumer, len(rids))
        broker._fire(now)
        # crashed by a fault this very delivery fired: the reply is lost with the process (a
        # restart it fired drops the connection after the reply, unless lost_replies)
        if self.lost_replies:
            self._check(stream, group)
            return
        name = self.consumer
        bound = self._bound.get((stream, group))
        if (
            name is not None
            and bound is not None
            and broker._crashes_of(stream, group, name) != bound[0]
        ):
            raise ConsumerCrashed(f"redis {stream}/{group}/{name}: the consumer was crashed")

    def _idle_ms(self, p: _Pending, now: float) -> int:
        return 2**62 if p.last == -math.inf else int((now - p.last) * 1000)

    # -- commands ----------------------------------------------------------------------------

    async def xgroup_create(
        self, key: str, groupname: str, identifier: str = "$", mkstream: bool = False, **_: Any
    ) -> bool:
        """``XGROUP CREATE``: raises ``StreamDuplicateConsumerGroupError`` if it exists."""
        await trio.lowlevel.checkpoint()
        self._check(key, None)
        groups = _groups(self.broker)
        if (key, groupname) in groups:
            raise self._coredis.exceptions.StreamDuplicateConsumerGroupError(
                "BUSYGROUP Consumer Group name already exists"
            )
        order = self.broker._topic(key).order
        start = len(order) if identifier == "$" else min(_key(identifier)[0], len(order))
        groups[(key, groupname)] = _StreamGroup(start)
        self.broker._group(key, groupname)
        return True

    async def xreadgroup(
        self,
        group: str,
        consumer: str,
        streams: Mapping[str, str],
        count: int | None = None,
        block: int | None = None,
        noack: bool | None = None,
        **_: Any,
    ) -> dict[str, tuple[Any, ...]] | None:
        """``XREADGROUP ... >``: new entries, up to ``count``, waiting ``block`` ms for one."""
        [(stream, since)] = streams.items()
        if since != ">":
            raise NotImplementedError("SimulatedRedis reads new entries only ('>')")
        broker = self.broker
        deadline = None if block is None else trio.current_time() + block / 1000
        while True:
            await trio.lowlevel.checkpoint()
            self._check(stream, group, consumer)
            g = self._group(stream, group)
            g.consumers.add(consumer)
            order = broker._topic(stream).order
            now = sim_now()
            rids: list[str] = []
            limit = len(order) if count is None else count
            while g.next < len(order) and len(rids) < limit:
                rid = self._rid(stream, g.next)
                g.next += 1
                g.pel[rid] = _Pending(consumer, now)
                rids.append(rid)
                self._delivered(stream, group, consumer, rid, 1, now)
                if broker._due(stream, group, consumer, len(rids)):
                    break
            if rids:
                self._after_delivery(stream, group, consumer, rids)
                return {stream: tuple(self._entry(stream, r) for r in rids)}
            if deadline is None or trio.current_time() >= deadline:
                return None
            with trio.move_on_at(deadline):
                await broker._wait(stream, group)

    async def xack(self, key: str, group: str, identifiers: Sequence[str]) -> int:
        """``XACK``: settle by id (a dead letter if an ``XADD`` just dead-lettered it)."""
        await trio.lowlevel.checkpoint()
        return self._xack(key, group, list(identifiers))

    def _xack(self, stream: str, group: str, ids: list[str]) -> int:
        self._check(stream, group)
        broker = self.broker
        g = self._group(stream, group)
        consumer = self.consumer or "?"
        held = broker._outstanding.get((stream, group, consumer), {})
        bg = broker._group(stream, group)
        now = sim_now()
        acked = 0
        for rid in ids:
            msg = self._message(stream, rid)
            pending = g.pel.pop(rid, None)
            if msg is None:
                continue
            mine = held.pop(msg.id, None)
            if pending is None and mine is None:
                continue  # not delivered to this consumer, and not pending: Redis ignores it
            acked += pending is not None
            count = mine if mine is not None else (pending.delivered if pending else 0)
            st = bg.state(msg.id)
            if rid in g.dead:
                g.dead.discard(rid)
                if st.outcome is None:
                    st.outcome = "dead_letter"
                    broker._record(now, "dead_letter", f"{msg.id}#{count}")
                continue
            for observer in list(broker.ack_observers):
                observer(stream, msg.id, count, consumer, msg.data, False)
            if st.outcome is None:
                st.outcome = "acked"
                broker._record(now, "ack", f"{msg.id}#{count} by {consumer}")
        broker._notify()
        return acked

    async def xadd(self, key: str, field_values: Mapping[str, Any], **_: Any) -> str:
        """``XADD``: publish to the broker; a dead letter (``trioflow_id`` among the fields)
        marks its original for the ``XACK`` that follows."""
        await trio.lowlevel.checkpoint()
        return self._xadd(key, field_values)

    def _xadd(self, stream: str, fields: Mapping[str, Any]) -> str:
        self._check(stream, None)
        broker = self.broker
        original = fields.get("trioflow_id")
        source = fields.get("trioflow_stream")
        if original is not None and source is not None:
            msg = self._message(str(source), str(original))
            if msg is not None:
                count = 0
                for (s, _), g in _groups(broker).items():
                    pending = g.pel.get(str(original))
                    if s == str(source) and pending is not None:
                        g.dead.add(str(original))
                        count = pending.delivered
                broker.publish(
                    stream,
                    msg.data,
                    headers={
                        "reason": fields.get("trioflow_reason"),
                        "original_id": msg.id,
                        "delivery_count": count,
                    },
                )
                return f"{len(broker._topic(stream).order)}-0"
        broker.publish(stream, dict(fields))
        return f"{len(broker._topic(stream).order)}-0"

    async def xpending(
        self,
        key: str,
        group: str,
        start: str | None = None,
        end: str | None = None,
        count: int | None = None,
        idle: int | None = None,
        consumer: str | None = None,
    ) -> Any:
        """``XPENDING``: the summary, or the extended form over ``[start, end]``."""
        await trio.lowlevel.checkpoint()
        self._check(key, group, consumer)
        g = self._group(key, group)
        types = self._coredis.response.types
        now = sim_now()
        if start is None or end is None or count is None:
            ids = sorted(g.pel, key=_key)
            owners: dict[str, int] = {}
            for p in g.pel.values():
                owners[p.consumer] = owners.get(p.consumer, 0) + 1
            return types.StreamPending(
                len(ids), ids[0] if ids else None, ids[-1] if ids else None, OrderedDict(owners)
            )
        found: list[Any] = []
        for rid in sorted(g.pel, key=_key):
            p = g.pel[rid]
            if consumer is not None and p.consumer != consumer:
                continue
            if not _in_range(rid, start, end):
                continue
            ms = self._idle_ms(p, now)
            if idle is not None and ms < idle:
                continue
            found.append(types.StreamPendingExt(rid, p.consumer, ms, p.delivered))
            if len(found) >= count:
                break
        return tuple(found)

    def _claim(
        self,
        stream: str,
        group: str,
        consumer: str,
        min_idle_time: int,
        ids: list[str],
        justid: bool,
    ) -> list[str]:
        g = self._group(stream, group)
        g.consumers.add(consumer)
        now = sim_now()
        claimed: list[str] = []
        for rid in ids:
            p = g.pel.get(rid)
            if p is None or self._idle_ms(p, now) < min_idle_time:
                continue
            if p.consumer != consumer:
                msg = self._message(stream, rid)
                assert msg is not None
                self.broker._record(now, "claim", f"{msg.id} from {p.consumer} by {consumer}")
                if msg.id in self.broker._outstanding.get((stream, group, p.consumer), {}):
                    self.broker.claimed_in_flight.add((stream, msg.id))
            p.consumer = consumer
            p.last = now
            if not justid:
                p.delivered += 1
                self._delivered(stream, group, consumer, rid, p.delivered, now)
            claimed.append(rid)
        return claimed

    async def xclaim(
        self,
        key: str,
        group: str,
        consumer: str,
        min_idle_time: int,
        identifiers: Sequence[str],
        justid: bool | None = None,
        **_: Any,
    ) -> tuple[Any, ...]:
        """``XCLAIM``: take over the entries idle at least ``min_idle_time`` ms."""
        await trio.lowlevel.checkpoint()
        self._check(key, group, consumer)
        rids = self._claim(key, group, consumer, min_idle_time, list(identifiers), bool(justid))
        if justid:
            return tuple(rids)
        self._after_delivery(key, group, consumer, rids)
        return tuple(self._entry(key, r) for r in rids)

    async def xautoclaim(
        self,
        key: str,
        group: str,
        consumer: str,
        min_idle_time: int,
        start: str,
        count: int | None = None,
        justid: bool | None = None,
    ) -> Any:
        """``XAUTOCLAIM``: scan the pending list from ``start``, take over what is idle."""
        await trio.lowlevel.checkpoint()
        self._check(key, group, consumer)
        g = self._group(key, group)
        limit = 100 if count is None else count
        scan = [r for r in sorted(g.pel, key=_key) if _key(r) >= _key(start)]
        batch, rest = scan[:limit], scan[limit:]
        rids = self._claim(key, group, consumer, min_idle_time, batch, bool(justid))
        cursor = rest[0] if rest else "0-0"
        if justid:
            return cursor, tuple(rids)
        self._after_delivery(key, group, consumer, rids)
        return cursor, tuple(self._entry(key, r) for r in rids), ()

    async def xinfo_groups(self, key: str) -> tuple[dict[str, Any], ...]:
        """``XINFO GROUPS``: name, consumers, pending, last-delivered-id and lag per group."""
        await trio.lowlevel.checkpoint()
        self._check(key, None)
        order = self.broker._topic(key).order
        return tuple(
            {
                "name": group,
                "consumers": len(g.consumers),
                "pending": len(g.pel),
                "last-delivered-id": f"{g.next}-0",
                "lag": len(order) - g.next,
            }
            for (stream, group), g in _groups(self.broker).items()
            if stream == key
        )

    def pipeline(self, transaction: bool = False) -> _SimPipeline:
        """A pipeline of ``XADD``/``XACK``, sent (after the broker's ack delay) on exit."""
        return _SimPipeline(self)


@final
class _SimPipeline:
    """Commands queued and sent together when the ``async with`` block ends."""

    def __init__(self, client: SimulatedRedis) -> None:
        self.client = client
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def xadd(self, key: str, field_values: Mapping[str, Any], **_: Any) -> None:
        self.commands.append(("xadd", (key, field_values)))

    def xack(self, key: str, group: str, identifiers: Sequence[str]) -> None:
        self.commands.append(("xack", (key, group, list(identifiers))))

    async def __aenter__(self) -> _SimPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        client = self.client
        delay = client.broker._delay_for(client.consumer or "")
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        # the connection is checked once: the commands go together, or none does
        for name, args in self.commands:
            client._check(args[0], args[1] if name == "xack" else None)
        for name, args in self.commands:
            if name == "xadd":
                client._xadd(*args)
            else:
                client._xack(*args)
