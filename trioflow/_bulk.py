"""Messages handed over in bulk: a chunk of data sharing one acknowledger.

A connector that pulled a chunk from its system hands it over with
``out.send_bulk(data, acknowledger=acker, ids=ids, metadata=...)`` instead of building a
:class:`~trioflow.Message` per item. Design:

* The chunk becomes one :class:`Lot` (the data, the ids, how to make metadata, the acknowledger),
  registered under a number in the run's :class:`Lots`, and each item gets a *ref*, the plain
  tuple ``(lot number, index)``, as its origin (what the stages carry beside the data and settle,
  as they carry a message for ``send_many``). Plain tuples of ints are built at C speed and are
  untracked by the garbage collector after its first look, where an object per item (a
  ``Message``, a tuple subclass) costs a collector's traversal each: that was most of the cost.
* So that a tuple origin is always a ref, a plain-data tuple's origin is wrapped in a 1-tuple by
  the outlet (:func:`wrap_plain`); a ref has two elements. :func:`plain_data` unwraps.
* A message is built only when something needs one (``Lot.message``): a ``messages=True`` stage,
  a failure, the ``on_failure`` handler, or an acknowledger without ``ack_ids``. Metadata is built
  once per item and cached, so a stage that returns it unchanged keeps the bulk form.
* Settling: successful refs are acked by ``acknowledger.ack_ids(ids)`` when the acknowledger has
  it (one call per acknowledger per acker round), else by ``ack`` with built messages. Failed ones
  and ones whose metadata a stage changed are ordinary messages from then on and go through
  ``ack``. Each message still appears in exactly one call. A lot leaves the registry when its
  last item is settled.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import groupby, repeat
from operator import itemgetter
from typing import Any, Protocol, cast, final, runtime_checkable

from ._message import Acknowledger, Message

__all__ = ["BulkAcknowledger", "Lot", "Lots", "check_bulk", "plain_data", "wrap_plain"]

Metadata = Sequence[dict[str, Any]] | Callable[[Any], dict[str, Any]] | None
#: the origin of a bulk item: (lot number, index)
Ref = tuple[int, int]

lot_number_of = itemgetter(0)
index_of = itemgetter(1)


@runtime_checkable
class BulkAcknowledger(Acknowledger, Protocol):
    """An acknowledger that also takes successful bulk messages by their ids alone.

    For messages handed over with ``Outlet.send_bulk``, trioflow calls ``ack_ids(ids)`` with the
    ids of those that succeeded unchanged, and ``ack(successful, failed)`` for every other one
    (failed, or whose metadata a stage replaced: they carry their metadata). Each message is in
    exactly one call. An error raised by ``ack_ids`` is contained as one raised by ``ack``.

    Examples:
        >>> class StreamAcker:
        ...     async def ack_ids(self, ids: list[str]) -> None:
        ...         await redis.xack("events", "workers", ids)
        ...     async def ack(self, successful, failed) -> None:
        ...         await self.ack_ids([m.metadata["id"] for m in [*successful, *failed]])
    """

    async def ack_ids(self, ids: list[Any]) -> None:
        """Record that the messages with these ids succeeded."""
        ...


@final
class Lot:
    """One bulk hand-over: what its refs point to."""

    __slots__ = ("_metas", "acknowledger", "bulk", "data", "ids", "metadata", "remaining")

    def __init__(
        self, data: list[Any], ids: Sequence[Any], metadata: Metadata, acknowledger: Acknowledger
    ) -> None:
        self.data: list[Any] = data
        self.ids: Sequence[Any] = ids
        self.metadata: Metadata = metadata
        self.acknowledger: Acknowledger = acknowledger
        #: the acknowledger's ``ack_ids``, or None (then successful refs are acked as messages)
        self.bulk: Callable[[list[Any]], Awaitable[None]] | None = getattr(
            acknowledger, "ack_ids", None
        )
        #: items not settled yet (or not turned into ordinary messages)
        self.remaining: int = len(data)
        self._metas: list[dict[str, Any] | None] | None = None

    def meta(self, index: int) -> dict[str, Any]:
        """The metadata of item ``index``: built once, then the same dict."""
        spec = self.metadata
        if spec is not None and not callable(spec):
            return spec[index]
        metas = self._metas
        if metas is None:
            metas = cast("list[dict[str, Any] | None]", [None] * len(self.data))
            self._metas = metas
        meta = metas[index]
        if meta is None:
            ident = self.ids[index]
            meta = {"id": ident} if spec is None else spec(ident)
            metas[index] = meta
        return meta

    def message(self, index: int) -> Message[Any]:
        """The source message of item ``index`` (its original data)."""
        return Message(self.data[index], self.meta(index), self.acknowledger)

    def forget(self, indexes: Iterable[int]) -> None:
        """Drop settled items' data and metadata while the rest of the lot is in flight, so
        that memory stays bounded by what is in flight (a whole lot goes when it is done)."""
        if self.remaining <= 0:
            return
        data, metas, spec = self.data, self._metas, self.metadata
        own = isinstance(spec, list)
        for i in indexes:
            data[i] = None
            if metas is not None:
                metas[i] = None
            if own:
                spec[i] = None  # type: ignore[index]


@final
class ByIds:
    """Successful bulk items of one acknowledger, to ack by id."""

    __slots__ = ("ack_ids", "acknowledger", "ids", "parts")

    def __init__(
        self,
        acknowledger: Any,
        ack_ids: Callable[[list[Any]], Awaitable[None]],
        ids: list[Any],
        parts: list[tuple[Lot, list[Ref]]],
    ) -> None:
        self.acknowledger = acknowledger
        self.ack_ids = ack_ids
        self.ids = ids
        #: the lots and refs the ids come from (to build the messages if ``ack_ids`` raises)
        self.parts = parts

    def messages(self) -> list[Message[Any]]:
        """The messages acked by id (for an error report)."""
        return [lot.message(ref[1]) for lot, run in self.parts for ref in run]

    def forget(self) -> None:
        """The ack call is over: drop the items' data (see :meth:`Lot.forget`)."""
        for lot, run in self.parts:
            lot.forget(map(index_of, run))


@final
class Lots:
    """A run's lots by number (on its settler), each dropped when its last item is settled."""

    __slots__ = ("_next", "by_number")

    def __init__(self) -> None:
        self.by_number: dict[int, Lot] = {}
        self._next = 0

    def refs(self, lot: Lot) -> list[Ref]:
        """Register ``lot`` and return one ref per item, at C speed."""
        number = self._next
        self._next += 1
        self.by_number[number] = lot
        n = len(lot.data)
        return list(zip(repeat(number, n), range(n), strict=True))

    def message(self, ref: Ref) -> Message[Any]:
        """The source message ``ref`` stands for."""
        return self.by_number[ref[0]].message(ref[1])

    def view(self, value: Any, ref: Ref) -> Message[Any]:
        """What a ``messages=True`` stage sees for a bulk item whose current data is ``value``."""
        lot = self.by_number[ref[0]]
        return Message(value, lot.meta(ref[1]), lot.acknowledger)

    def view_metadata(self, ref: Ref) -> dict[str, Any]:
        """The metadata a ``messages=True`` stage sees for ``ref`` (the same dict each time)."""
        return self.by_number[ref[0]].meta(ref[1])

    def release(self, ref: Ref) -> Message[Any]:
        """``ref`` leaves the bulk form (it failed, or a stage changed its metadata): its source
        message, from now on settled as an ordinary one."""
        lot = self.by_number[ref[0]]
        self._settled(ref[0], lot, 1)
        message = lot.message(ref[1])
        lot.forget((ref[1],))
        return message

    def _settled(self, number: int, lot: Lot, count: int) -> None:
        lot.remaining -= count
        if lot.remaining <= 0:
            del self.by_number[number]

    def split(self, refs: list[Ref]) -> tuple[list[ByIds], list[Message[Any]]]:
        """Settle successful ``refs``: per acknowledger with ``ack_ids``, what to ack by id;
        and the messages of the others (acked by ``ack``)."""
        numbers = list(map(lot_number_of, refs))
        by_ack: dict[int, ByIds] = {}
        as_messages: list[Message[Any]] = []
        lots = self.by_number
        if numbers[0] == numbers[-1] and numbers.count(numbers[0]) == len(numbers):
            runs = [(numbers[0], len(numbers))]  # one lot: the usual case
        else:
            runs = [(k, len(list(g))) for k, g in groupby(numbers)]
        start = 0
        for number, count in runs:
            run = refs[start : start + count]
            start += count
            lot = lots[number]
            self._settled(number, lot, count)
            if lot.bulk is None:
                as_messages.extend(map(lot.message, map(index_of, run)))
                lot.forget(map(index_of, run))
                continue
            if count == len(lot.data) and run[0][1] == 0 and run[-1][1] == count - 1:
                ids = list(lot.ids)  # the whole lot, in order
            else:
                ids = list(map(lot.ids.__getitem__, map(index_of, run)))
            entry = by_ack.get(id(lot.acknowledger))
            if entry is None:
                by_ack[id(lot.acknowledger)] = ByIds(lot.acknowledger, lot.bulk, ids, [(lot, run)])
            else:
                entry.ids.extend(ids)
                entry.parts.append((lot, run))
        return list(by_ack.values()), as_messages


def is_ref(origin: Any) -> bool:
    """Whether an origin is a bulk item's ref (a plain-data tuple's origin is a 1-tuple)."""
    return type(origin) is tuple and len(origin) == 2  # pyright: ignore[reportUnknownArgumentType]


def wrap_plain(items: list[Any]) -> list[Any]:
    """The origins of plain data: the data, with tuples wrapped so no origin looks like a ref."""
    return [(x,) if type(x) is tuple else x for x in items]


def plain_data(origin: Any) -> Any:
    """The data of a plain-data origin (see :func:`wrap_plain`)."""
    return origin[0] if type(origin) is tuple else origin  # pyright: ignore[reportUnknownVariableType]


def check_bulk(data: Any, ids: Sequence[Any] | None, metadata: Metadata, acknowledger: Any) -> None:
    """Refuse a bulk hand-over whose parts do not line up, naming what is wrong."""
    if not isinstance(data, list):
        raise TypeError(f"send_bulk: data must be a list, not {type(data).__name__}")
    n = len(data)  # pyright: ignore[reportUnknownArgumentType]
    if ids is not None and len(ids) != n:
        raise ValueError(f"send_bulk: {len(ids)} ids for {n} data items")
    if metadata is not None and not callable(metadata):
        if not isinstance(metadata, (list, tuple)):
            raise TypeError(
                "send_bulk: metadata must be a list of dicts (one per item), a function of an "
                f"id, or None, not {type(metadata).__name__}"
            )
        if len(metadata) != n:
            raise ValueError(f"send_bulk: {len(metadata)} metadata dicts for {n} data items")
    if not callable(getattr(acknowledger, "ack", None)):
        raise TypeError(
            f"send_bulk: acknowledger={acknowledger!r} has no ack(successful, failed) method"
        )
    ack_ids = getattr(acknowledger, "ack_ids", None)
    if ack_ids is not None and not inspect.iscoroutinefunction(ack_ids):
        raise TypeError(
            f"send_bulk: {acknowledger!r}.ack_ids must be an async function (async def ack_ids)"
        )
