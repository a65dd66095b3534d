"""Settling messages: the bookkeeping that acks each source message exactly once.

Every item in flight carries an *origin* next to its value (see ``_queue``). An origin is one of:

* a :class:`~trioflow.Message` yielded by a source (it has its own acknowledger);
* the raw datum itself, for plain data (its acknowledger does nothing, so nothing per item is
  allocated for it: settling it only counts);
* a :class:`Group`: the origins of the items of a batch;
* a :class:`Fanout`: a ``flat_map`` parent, shared by its children, settled once all are.

Stages settle origins as successful (filtered, or out of the last stage) or as failed (an
exception, ``message.fail``). The :class:`Settler` resolves them down to source messages, runs the
failure handler on failed ones, and hands them to the acknowledger task, which calls each source's
``ack(successful, failed)`` in groups. Settled-but-unacked messages are bounded
(``ack_buffer``): while the acknowledgers lag, stages block, so back-pressure reaches the source.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import Any, final

from trio.lowlevel import ParkingLot

from ._bulk import Lots, Ref, plain_data
from ._failure_log import FailureLog
from ._groups import is_fatal
from ._message import NOOP_ACKNOWLEDGER, FailureAction, Message, reason_key

__all__ = ["FailureHandler", "Fanout", "Group", "Settler"]

FailureHandler = Callable[[list[Message[Any]]], Awaitable[None] | None]


_acknowledger_of = attrgetter("acknowledger")

logger = logging.getLogger("trioflow")

#: ``on_error(messages, exc)`` / ``on_error(acknowledger, messages, exc)``: instruments' hooks
HandlerErrorHook = Callable[[list[Message[Any]], BaseException], None]
AckErrorHook = Callable[[Any, list[Message[Any]], BaseException], None]


@final
class Group:
    """The origins of the items gathered in one batch."""

    __slots__ = ("members",)

    def __init__(self, members: list[Any]) -> None:
        self.members = members


@final
class Fanout:
    """A ``flat_map`` parent: settled when its last child is, failed if any child failed."""

    __slots__ = ("action", "origin", "reason", "remaining")

    def __init__(self, origin: Any) -> None:
        self.origin: Any = origin
        self.remaining: int = 0
        self.reason: BaseException | str | None = None
        self.action: FailureAction | None = None


#: the types of origins that are not plain data; message subclasses a source yields join them
#: (a tuple origin is a bulk item's ref, or a plain-data tuple wrapped in a 1-tuple: ``_bulk``)
_TICKETS: set[type] = {Message, Group, Fanout, tuple}
#: ``Message`` and the subclasses of it seen so far (see :func:`note_message_types`)
MESSAGE_TYPES: set[type] = {Message}


def note_message_types(kinds: set[type[Any]]) -> None:
    """Make the ``Message`` subclasses among ``kinds`` (a source's item types) count as messages:
    settled through their acknowledger, never as plain data."""
    for kind in kinds:
        if kind not in _TICKETS and issubclass(kind, Message):
            _TICKETS.add(kind)  # pyright: ignore[reportUnknownArgumentType]
            MESSAGE_TYPES.add(kind)  # pyright: ignore[reportUnknownArgumentType]


@final
class Settler:
    """Counts outcomes and feeds the failure handler and the acknowledger task.

    Stage workers call :meth:`ok` and :meth:`fail` (synchronous, cheap), then ``await room()``
    which blocks only while too many settled messages wait for their ``ack``.
    """

    def __init__(self, on_failure: FailureHandler | None, ack_buffer: int) -> None:
        self.on_failure = on_failure
        self.ack_buffer = ack_buffer
        self.received: int = 0
        self.acked: int = 0
        self.failed: int = 0
        self.filtered: int = 0
        self.retried: int = 0
        self.failed_by_reason: Counter[str] = Counter()
        #: messages left un-acked because their ``ack`` call raised
        self.ack_errors: int = 0
        #: failed messages left un-acked because the ``on_failure`` call for them raised
        self.failure_handler_errors: int = 0
        self.on_ack_error: AckErrorHook | None = None
        self.on_handler_error: HandlerErrorHook | None = None
        self._ok: list[Message[Any]] = []
        self._failed: list[Message[Any]] = []
        #: the run's bulk hand-overs (see ``_bulk``)
        self.lots: Lots = Lots()
        #: log records of failed items (the first ones in full, then counts)
        self.failure_log: FailureLog = FailureLog()
        #: settled successful bulk items, acked by their ids where possible
        self._refs: list[Ref] = []
        self._to_handle: list[Message[Any]] = []
        self._ack_lot = ParkingLot()
        self._handler_lot = ParkingLot()
        self._room_lot = ParkingLot()
        self._closed = False
        self._handler_done = on_failure is None
        #: the pipeline's ends (see ``Terminal``): the acker takes their pending items
        self.terminals: list[Any] = []
        #: filters' dropped items not settled yet (``Pending`` of origins), taken likewise
        self._dropped: list[Any] = []
        #: 1 while the acker is parked with nothing to do
        self.idle: int = 0
        #: whether any message with an acknowledger was received: until then (plain data) the
        #: acker has nothing to do for a sink's results, and is not woken for them
        self.acking: bool = False

    # -- called by stage workers ---------------------------------------------------------------

    def ok(self, origins: list[Any]) -> None:
        """Settle ``origins`` as successful."""
        # Fast paths, at C speed: a chunk of plain data (only counted), or of messages that
        # all have real acknowledgers (queued for the acker) or none (counted).
        kinds = set(map(type, origins))
        if not kinds & _TICKETS:
            self.acked += len(origins)
            return
        ok = self._ok
        if len(kinds) == 1 and kinds <= MESSAGE_TYPES:
            noop = list(map(_acknowledger_of, origins)).count(NOOP_ACKNOWLEDGER)
            if noop == 0:
                ok.extend(origins)
                if self._ack_lot:
                    self._ack_lot.unpark()
                return
            if noop == len(origins):
                self.acked += noop
                return
        elif kinds == _TUPLE_KIND:
            sizes = set(map(len, origins))
            if sizes == _REF_SIZE:
                self._refs.extend(origins)
                if self._ack_lot:
                    self._ack_lot.unpark()
                return
            if sizes == _WRAPPED_SIZE:  # plain-data tuples
                self.acked += len(origins)
                return
        raw = 0
        before = len(ok) + len(self._refs)
        for o in origins:
            t = type(o)  # pyright: ignore[reportUnknownVariableType]  (type() of Any)
            if t is tuple:
                if len(o) == 2:
                    self._refs.append(o)
                else:
                    raw += 1
            elif t in MESSAGE_TYPES:
                if o.acknowledger is NOOP_ACKNOWLEDGER:
                    raw += 1
                else:
                    ok.append(o)
            elif t is Group:
                self.ok(o.members)
            elif t is Fanout:
                o.remaining -= 1
                if o.remaining == 0:
                    self._settle_fanout(o)
            else:
                raw += 1
        self.acked += raw
        if len(ok) + len(self._refs) != before and self._ack_lot:
            self._ack_lot.unpark()

    def fail(
        self, origin: Any, reason: BaseException | str, action: FailureAction | None = None
    ) -> None:
        """Settle ``origin`` as failed with ``reason`` (every member, for a batch), and the
        ``action`` its broker source is to take (None: the source's default)."""
        t = type(origin)  # pyright: ignore[reportUnknownVariableType]  (type() of Any)
        if t is Group:
            for member in origin.members:
                self.fail(member, reason, action)
            return
        if t is Fanout:
            if origin.reason is None:
                origin.reason = reason
                origin.action = action
            origin.remaining -= 1
            if origin.remaining == 0:
                self._settle_fanout(origin)
            return
        if t in MESSAGE_TYPES:
            msg = origin.fail(reason, action=action)
        elif t is tuple and len(origin) == 2:
            msg = self.lots.release(origin).fail(reason, action=action)
        else:
            msg = Message(plain_data(origin), status="failed", reason=reason, action=action)
        if self.on_failure is not None:
            self._to_handle.append(msg)
            if self._handler_lot:
                self._handler_lot.unpark()
        else:
            self._failed_to_ack(msg)

    def filtered_out(self, origins: list[Any]) -> None:
        """Settle dropped items: successful, and counted as filtered."""
        self.filtered += _count_sources(origins)
        self.ok(origins)

    def new_fanout(self, origin: Any) -> Fanout:
        """A parent for the children of a ``flat_map`` call."""
        return Fanout(origin)

    @property
    def backlog(self) -> int:
        """Settled messages not acked yet."""
        return len(self._ok) + len(self._refs) + len(self._failed) + len(self._to_handle)

    async def room(self) -> None:
        """Block (cancellable) while the backlog is full; no checkpoint otherwise."""
        while self.backlog >= self.ack_buffer:
            await self._room_lot.park()

    # -- internal ------------------------------------------------------------------------------

    def _settle_fanout(self, fanout: Fanout) -> None:
        if fanout.reason is None:
            self.ok([fanout.origin])
        else:
            self.fail(fanout.origin, fanout.reason, fanout.action)

    def _failed_to_ack(self, msg: Message[Any]) -> None:
        if msg.acknowledger is NOOP_ACKNOWLEDGER:
            self.failed += 1
            self.failed_by_reason[reason_key(msg.reason)] += 1
        else:
            self._failed.append(msg)
            if self._ack_lot:
                self._ack_lot.unpark()

    def close(self) -> None:
        """No more settlements: the failure task and then the acker finish what is queued."""
        self.failure_log.flush()
        self._closed = True
        self._handler_lot.unpark_all()
        self._ack_lot.unpark_all()

    # -- tasks ---------------------------------------------------------------------------------

    async def run_failure_handler(self) -> None:
        """Feed failed messages to ``on_failure`` in groups, then to the acknowledgers."""
        handler = self.on_failure
        assert handler is not None
        try:
            while True:
                if not self._to_handle:
                    if self._closed:
                        return
                    await self._handler_lot.park()
                    continue
                group, self._to_handle = self._to_handle, []
                try:
                    result = handler(group)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    if is_fatal(exc):
                        raise
                    # contained: the messages are not acked at all (a broker delivers them
                    # again), and handling goes on with the next group
                    self._handler_failed(group, exc)
                else:
                    for msg in group:
                        self._failed_to_ack(msg)
                if self._room_lot:
                    self._room_lot.unpark_all()
        finally:
            self._handler_done = True
            self._ack_lot.unpark_all()

    def _handler_failed(self, group: list[Message[Any]], exc: Exception) -> None:
        self.failure_handler_errors += len(group)
        logger.error(
            "trioflow: the on_failure handler raised %r for %d message(s); they are left "
            "un-acked (a broker delivers them again)",
            exc,
            len(group),
            exc_info=exc,
        )
        if self.on_handler_error is not None:
            self.on_handler_error(group, exc)

    def _ack_failed(
        self, acknowledger: Any, ok: list[Message[Any]], failed: list[Message[Any]], exc: Exception
    ) -> None:
        self.ack_errors += len(ok) + len(failed)
        logger.error(
            "trioflow: %r.ack() raised %r for %d message(s); they are left un-acked",
            acknowledger,
            exc,
            len(ok) + len(failed),
            exc_info=exc,
        )
        if self.on_ack_error is not None:
            self.on_ack_error(acknowledger, [*ok, *failed], exc)

    def wake_acker(self) -> None:
        """Let a parked acker run (it takes what the terminals and filters hold)."""
        self._set_idle(0)
        self._ack_lot.unpark()

    def hold_dropped(self, pending: Any) -> None:
        """Register a filter's :class:`~trioflow._queue.Pending` of dropped origins."""
        self._dropped.append(pending)

    def note_acknowledgers(self, messages: list[Any]) -> None:
        """A source handed ``messages`` over: note whether any has an acknowledger."""
        if not self.acking and any(
            a is not NOOP_ACKNOWLEDGER for a in map(_acknowledger_of, messages)
        ):
            self.acking = True
            if self.idle:
                self._set_idle(1)

    def note_bulk(self) -> None:
        """A source handed over a bulk chunk with a real acknowledger (see ``_bulk``)."""
        self.acking = True
        if self.idle:
            self._set_idle(1)

    def _set_idle(self, idle: int) -> None:
        self.idle = idle
        waiting = idle if self.acking else 0
        for terminal in self.terminals:
            terminal.waiting = waiting

    def _take_pending(self) -> bool:
        took = False
        for terminal in self.terminals:
            if terminal.take_pending():
                took = True
        for pending in self._dropped:
            got = pending.steal()
            if got is not None:
                self.filtered_out(got[1])
                took = True
        return took

    async def run_acker(self, on_ack: Callable[[Any, int, int], None] | None = None) -> None:
        """Call each source's acknowledger in groups until everything settled is acked."""
        while True:
            if not self._ok and not self._failed and not self._refs:
                if self._take_pending():
                    continue
                if self._closed and self._handler_done:
                    return
                self._set_idle(1)
                try:
                    await self._ack_lot.park()
                finally:
                    self._set_idle(0)
                continue
            ok, self._ok = self._ok, []
            failed, self._failed = self._failed, []
            if self._refs:
                refs, self._refs = self._refs, []
                by_ids, as_messages = self.lots.split(refs)
                for entry in by_ids:
                    try:
                        await entry.ack_ids(entry.ids)
                    except Exception as exc:
                        if is_fatal(exc):
                            raise
                        self._ack_failed(entry.acknowledger, entry.messages(), [], exc)
                        entry.forget()
                        continue
                    entry.forget()
                    self.acked += len(entry.ids)
                    if on_ack is not None:
                        on_ack(entry.acknowledger, len(entry.ids), 0)
                if as_messages:
                    ok = as_messages + ok
            for acknowledger, succ, fail in _by_acknowledger(ok, failed):
                try:
                    await acknowledger.ack(succ, fail)
                except Exception as exc:
                    if is_fatal(exc):
                        raise
                    # contained: this call's messages stay un-acked; others are unaffected
                    self._ack_failed(acknowledger, succ, fail, exc)
                    continue
                self.acked += len(succ)
                self.failed += len(fail)
                for m in fail:
                    self.failed_by_reason[reason_key(m.reason)] += 1
                if on_ack is not None:
                    on_ack(acknowledger, len(succ), len(fail))
            if self._room_lot:
                self._room_lot.unpark_all()


_TUPLE_KIND = {tuple}
_REF_SIZE = {2}
_WRAPPED_SIZE = {1}


def _by_acknowledger(
    ok: list[Message[Any]], failed: list[Message[Any]]
) -> list[tuple[Any, list[Message[Any]], list[Message[Any]]]]:
    if not failed and ok:
        first = ok[0].acknowledger
        if len(set(map(id, map(_acknowledger_of, ok)))) == 1:  # one source: the usual case
            return [(first, ok, [])]
    # keyed by identity: an acknowledger need not be hashable
    groups: dict[int, tuple[Any, list[Message[Any]], list[Message[Any]]]] = {}
    last: Any = None
    bucket: list[Message[Any]] = []
    for m in ok:
        a = m.acknowledger
        if a is not last:
            entry = groups.get(id(a))
            if entry is None:
                entry = groups[id(a)] = (a, [], [])
            bucket = entry[1]
            last = a
        bucket.append(m)
    for m in failed:
        a = m.acknowledger
        entry = groups.get(id(a))
        if entry is None:
            entry = groups[id(a)] = (a, [], [])
        entry[2].append(m)
    return list(groups.values())


def _count_sources(origins: list[Any]) -> int:
    n = 0
    for o in origins:
        t = type(o)  # pyright: ignore[reportUnknownVariableType]  (type() of Any)
        if t is Group:
            n += _count_sources(o.members)
        elif t is not Fanout:
            n += 1
    return n
