"""Sources: where a pipeline's messages come from.

A source is a :class:`Source` whose ``produce(outlet)`` pulls items and hands them to the outlet,
which blocks while the pipeline is full: pulling follows demand, so back-pressure reaches the
source (and, for a broker connector, the broker). On a graceful drain the source's task is
cancelled, once any hand-over in progress is done: whatever it pulled is processed and acked,
nothing more is pulled.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar, Self, final, overload

import attrs
import trio

from ._acking import note_message_types
from ._bulk import Lot, Metadata, check_bulk, wrap_plain
from ._composable import Composable
from ._message import NOOP_ACKNOWLEDGER, Acknowledger, Message
from ._stages import Stage
from ._validate import describe

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from ._acking import Settler
    from ._queue import ChunkQueue
    from ._telemetry import Telemetry

    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    T = TypeVar("T")

__all__ = [
    "AsyncGenSource",
    "FromAiter",
    "FromChannel",
    "FromIterable",
    "Merge",
    "Outlet",
    "Source",
    "as_source",
    "from_aiter",
    "from_channel",
    "from_iterable",
    "merge",
]

logger = logging.getLogger("trioflow")


_data_of = attrgetter("data")
_status_of = attrgetter("status")


@final
class Gate:
    """Pauses a run's sources (``handle.pause()`` / ``resume()``): while it is closed,
    :meth:`Outlet.demand` waits, so sources pull nothing; what is in flight goes on."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: trio.Event | None = None  # None: not paused

    @property
    def paused(self) -> bool:
        """Whether the sources are paused."""
        return self._open is not None

    def pause(self) -> None:
        """Stop the sources pulling (idempotent)."""
        if self._open is None:
            self._open = trio.Event()

    def resume(self) -> None:
        """Let the sources pull again (idempotent)."""
        event, self._open = self._open, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        """Return once the gate is open (at once, without a checkpoint, if it is)."""
        while self._open is not None:
            await self._open.wait()


@final
class Outlet:
    """Where a source hands over what it pulled (one per source task).

    ``send`` and ``send_many`` block (cancellable) while the pipeline's first buffer is full;
    ``demand()`` waits until at least one item fits and says how many do, so a source can pull
    exactly that many from its system.
    """

    __slots__ = (
        "_asked",
        "_events",
        "_gate_scope",
        "_handing",
        "_label",
        "_queue",
        "_settler",
        "_stopping",
        "_tel",
        "gate",
        "scope",
    )

    def __init__(self, queue: ChunkQueue, settler: Settler) -> None:
        self._queue = queue
        self._settler = settler
        #: the source task runs in it; a graceful drain cancels it (see :meth:`stop`)
        self.scope: trio.CancelScope = trio.CancelScope()
        self._handing = False
        self._stopping = False
        #: a source's wait at a paused gate with items in hand (a drain ends it: see ``stop``)
        self._gate_scope: trio.CancelScope | None = None
        #: whether the source asks for demand (then only demand() waits while paused)
        self._asked = False
        #: the run's pause switch (see :class:`Gate`)
        self.gate: Gate | None = None
        self._tel: Telemetry | None = None
        self._events: Telemetry | None = None
        self._label = ""

    def instrument(self, telemetry: Telemetry, label: str) -> None:
        """Emit the events of source ``label`` (buffering: demand, enqueued, buffer_full; and
        the connection events a connector reports, see :meth:`disconnected`)."""
        self._events = telemetry
        self._label = label
        if any(
            getattr(telemetry, f"has_{hook}", False)
            for hook in ("demand", "enqueued", "buffer_full")
        ):
            self._tel = telemetry
            self._label = label

    def _emit_put(self, count: int, room: int) -> None:
        # room: what fitted before this put; the put filled the buffer when it took all of it
        tel = self._tel
        assert tel is not None
        tel.emit("enqueued", self._label, count)
        if count >= room:
            tel.emit("buffer_full", self._label)

    def disconnected(self, exc: BaseException, attempt: int, delay: float) -> None:
        """Report that the source lost its connection (or failed to reopen it) with ``exc``, and
        tries again after ``delay`` seconds (``attempt``: the tries of this outage so far).

        Logged as a warning on the ``"trioflow"`` logger and emitted as the
        ``source_disconnected`` telemetry event. For connector authors (see
        ``trioflow.connectors.Reconnect``).
        """
        logger.warning(
            "trioflow: source %r lost its connection (%s: %s); trying again in %.1f s (attempt %d)",
            self._label,
            type(exc).__name__,
            exc,
            delay,
            attempt,
        )
        if self._events is not None and self._events.has_source_disconnected:
            self._events.emit("source_disconnected", self._label, exc, attempt, delay)

    def reconnected(self, attempts: int, downtime: float) -> None:
        """Report that the source is connected again after ``attempts`` tries and ``downtime``
        seconds (logged, and emitted as the ``source_reconnected`` event)."""
        logger.warning(
            "trioflow: source %r reconnected after %.1f s (%d attempt(s))",
            self._label,
            downtime,
            attempts,
        )
        if self._events is not None and self._events.has_source_reconnected:
            self._events.emit("source_reconnected", self._label, attempts, downtime)

    def stop(self) -> None:
        """Stop the source for a graceful drain: cancel it now, or once its hand-over is done.

        A hand-over waiting for room is not interrupted: what a source pulled is processed and
        acked, never dropped between its system and the pipeline (a hard stop still cancels it).
        Nor is one waiting at a paused gate (``handle.pause()``, an open breaker) with items in
        hand: the wait ends and they are handed over.
        """
        self._stopping = True
        if not self._handing:
            self.scope.cancel()
        elif self._gate_scope is not None:
            self._gate_scope.cancel()

    def _handed_over(self) -> None:
        self._handing = False
        if self._stopping:
            self.scope.cancel()

    async def demand(self) -> int:
        """Wait until the pipeline can take at least one item (and the run is not paused);
        return how many it can take now."""
        self._asked = True
        gate = self.gate
        if gate is not None and gate.paused:
            await gate.wait()
        room = await self._queue.wait_free()
        if self._stopping:
            # stopped while the wait was already ending: the scope is cancelled, so this raises
            # Cancelled here, before the source pulls anything it could not hand over
            await trio.lowlevel.checkpoint()
        if self._tel is not None:
            self._tel.emit("demand", self._label, room)
        return room

    async def send(self, item: Any) -> None:
        """Hand over one item: plain data, or a :class:`~trioflow.Message` with its acknowledger.

        A message already marked failed (``message.fail(reason)``) goes straight to failure
        handling: a source can hand over what it could not even parse.
        """
        await self.send_many([item])

    async def send_many(self, items: list[Any]) -> None:
        """Hand over several items (the list is kept: do not reuse it).

        Blocks (cancellable by a hard stop) while the first buffer is full; a graceful drain
        never drops what is handed over (see :meth:`stop`).
        """
        if not items:
            return
        gate = self.gate
        if gate is not None and gate.paused and not self._asked and not self._stopping:
            # a source that never asks for demand pauses here, items in hand: a drain must not
            # cancel it then (they would be lost), it ends the wait and they are handed over
            self._handing = True
            try:
                with trio.CancelScope() as self._gate_scope:
                    await gate.wait()
            except BaseException:
                self._handed_over()  # a hard stop: it may drop them (see ``stop``)
                raise
            finally:
                self._gate_scope = None
        failed: list[Any] = []
        kinds = set(map(type, items))
        if kinds == {Message} and "failed" not in set(map(_status_of, items)):
            values, origins = list(map(_data_of, items)), items  # messages only: C speed
            if not self._settler.acking:
                self._settler.note_acknowledgers(items)
        elif any(issubclass(k, Message) for k in kinds):
            note_message_types(kinds)  # a subclass of Message is a message too
            if not self._settler.acking:
                self._settler.note_acknowledgers([m for m in items if isinstance(m, Message)])
            failed = [m for m in items if isinstance(m, Message) and m.status == "failed"]
            if failed:
                self._fail_now(failed)
                items = [m for m in items if not (isinstance(m, Message) and m.status == "failed")]
            values = [m.data if isinstance(m, Message) else m for m in items]  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
            origins = wrap_plain(items) if tuple in kinds else items
        elif tuple in kinds:
            values, origins = items, wrap_plain(items)
        else:
            values, origins = items, items.copy()
        await self._hand_over(values, origins)  # pyright: ignore[reportUnknownArgumentType]
        if failed:
            await self._settler.room()

    async def send_bulk(
        self,
        data: list[Any],
        *,
        acknowledger: Acknowledger,
        ids: Sequence[Any] | None = None,
        metadata: Metadata = None,
        failed: Sequence[Message[Any]] = (),
    ) -> None:
        """Hand over a chunk of messages sharing one acknowledger, without a ``Message`` each.

        The fastest way for a connector: ``data`` are the items' data, ``ids`` what the
        acknowledger needs to ack each one (entry ids, delivery tags, offsets; default: the data
        themselves), and ``metadata`` either a list of one dict per item or a function of an id
        that makes it (called at most once per item, and only when a ``messages=True`` stage, a
        failure or an ``ack`` needs the message; default ``{"id": id}``). The lists are kept
        (each item's entries are cleared once it is settled): do not reuse them. Stages see the
        same messages as from :meth:`send_many`. ``failed``: messages of the same pull the source
        already failed (``message.fail(...)``, a poison message), settled in the same hand-over,
        so a drain cannot separate them from the rest.

        Successful messages are acked by ``acknowledger.ack_ids(ids)`` when the acknowledger has
        that method (an ``async def``; see :class:`~trioflow.abc.BulkAcknowledger`), else by
        ``ack`` with built messages; failed ones always by ``ack``.

        Examples:
            >>> entries = await redis.xreadgroup(..., count=await out.demand())
            >>> await out.send_bulk(
            ...     [e.fields for e in entries],
            ...     acknowledger=acker,
            ...     ids=[e.id for e in entries],
            ... )
        """
        check_bulk(data, ids, metadata, acknowledger)
        for m in failed:
            if not isinstance(m, Message) or m.status != "failed":
                raise TypeError(f"send_bulk: failed= takes failed messages, not {m!r}")
        if failed:  # settled at once, with no checkpoint before the rest is in
            if not self._settler.acking:
                self._settler.note_acknowledgers(list(failed))
            self._fail_now(failed)
        if data:
            lot = Lot(data, data if ids is None else ids, metadata, acknowledger)
            if not self._settler.acking and acknowledger is not NOOP_ACKNOWLEDGER:
                self._settler.note_bulk()
            await self._hand_over(data.copy(), self._settler.lots.refs(lot))
        if failed:
            await self._settler.room()

    def _fail_now(self, failed: Sequence[Message[Any]]) -> None:
        """Messages a source handed over already failed go straight to failure handling."""
        settler = self._settler
        settler.received += len(failed)
        for m in failed:
            settler.fail(m, m.reason if m.reason is not None else "failed", m.action)

    async def _hand_over(self, values: list[Any], origins: list[Any]) -> None:
        # Items count as received once they are in: a hard stop cancelling the wait for room
        # must not leave phantom "unsettled" ones. With room, nothing here is a checkpoint, so a
        # drain that stops the source while it holds items it pulled cannot make it drop them;
        # without room after such a stop, they go in over the bound (they were already counted
        # as the source's share of it) rather than be lost.
        queue = self._queue
        start, n = 0, len(values)
        self._handing = True
        try:
            while start < n:
                room = queue.free
                if room <= 0:
                    if self._stopping:
                        rest_v, rest_o = values[start:], origins[start:]
                        queue.force_many(rest_v, rest_o)
                        self._settler.received += n - start
                        if self._tel is not None:
                            self._emit_put(n - start, 0)
                        break
                    room = await queue.wait_free()
                end = min(n, start + room)
                self._settler.received += end - start
                if start == 0 and end == n:
                    await queue.put_many(values, origins)
                else:
                    await queue.put_many(values[start:end], origins[start:end])
                if self._tel is not None:
                    self._emit_put(end - start, room)
                start = end
        finally:
            self._handed_over()
        if self._stopping:
            # everything in hand is in: now the drain stops the source (Cancelled here), even
            # one that never waits on its own (an async generator that does not suspend)
            await trio.lowlevel.checkpoint()


@asynccontextmanager
async def _as_is(source: Source[T]) -> AsyncGenerator[Source[T]]:
    yield source


class Source(Stage[None, T]):
    """Base class of sources. Subclass it and implement :meth:`produce` to write a connector.

    Examples:
        >>> @attrs.frozen
        ... class Countdown(Source[int]):
        ...     start: int
        ...     async def produce(self, out: Outlet) -> None:
        ...         for i in range(self.start, 0, -1):
        ...             await out.send(i)
    """

    __slots__ = ()

    async def produce(self, out: Outlet) -> None:
        """Pull items and hand them to ``out`` until exhausted; cancelled on a drain."""
        raise NotImplementedError

    def parts(self) -> tuple[Source[Any], ...]:
        """The sources that run as tasks (one, or the members of a merge)."""
        return (self,)

    def open(self) -> AbstractAsyncContextManager[Source[T]]:
        """Resources for one run: what ``produce`` and the acknowledger use.

        The runner enters it before any task starts and leaves it after the last ack, so a
        connection opened here outlives a drain (which cancels ``produce``) until every in-flight
        message is acked. It yields the object whose ``produce`` runs; by default the source
        itself. A connector that opens a connection yields a per-run object, so one pipeline can
        run twice at once.
        """
        return _as_is(self)


@final
@attrs.frozen(repr=False)
class FromIterable(Source[T]):
    """Items of a sync iterable, read in chunks as demand allows; see :func:`from_iterable`."""

    iterable: Iterable[T]
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"name"})

    async def produce(self, out: Outlet) -> None:
        it = iter(self.iterable)
        while True:
            room = await out.demand()
            chunk = list(islice(it, room))
            if not chunk:
                return
            await out.send_many(chunk)

    @property
    def label(self) -> str:
        return self.name or "from_iterable"

    def __repr__(self) -> str:
        return f"from_iterable({describe(self.iterable)})"


def from_iterable(iterable: Iterable[T], *, name: str | None = None) -> FromIterable[T]:
    """A source over a sync iterable (which may be endless); it is iterated anew on each run.

    Iterating must be cheap: it runs in the pipeline's thread, a chunk at a time, as demand allows.

    Examples:
        >>> pipeline = from_iterable(range(1000)) | process(double)
    """
    if not isinstance(iterable, Iterable):
        raise TypeError(f"from_iterable: {iterable!r} is not iterable")
    return FromIterable(iterable, name)


async def _drain_aiter(ait: AsyncIterable[Any], out: Outlet) -> None:
    iterator = aiter(ait)
    try:
        async for item in iterator:
            await out.send(item)
    finally:
        # close what iterating made (an async generator), never an object the caller owns and
        # may go on using (a channel is its own iterator)
        aclose = getattr(iterator, "aclose", None) if inspect.isasyncgen(iterator) else None
        if aclose is not None:
            with trio.move_on_after(1.0) as cleanup:
                cleanup.shield = True
                await aclose()


@final
@attrs.frozen(repr=False)
class FromAiter(Source[T]):
    """Items of an async iterable; see :func:`from_aiter`."""

    aiterable: AsyncIterable[T]
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"name"})

    async def produce(self, out: Outlet) -> None:
        await _drain_aiter(self.aiterable, out)

    @property
    def label(self) -> str:
        return self.name or "from_aiter"

    def __repr__(self) -> str:
        return f"from_aiter({describe(self.aiterable)})"


def from_aiter(aiterable: AsyncIterable[T], *, name: str | None = None) -> FromAiter[T]:
    """A source over an async iterable, pulled one item at a time as demand allows.

    Examples:
        >>> pipeline = from_aiter(websocket_messages()) | process(handle)
    """
    if not isinstance(aiterable, AsyncIterable):
        raise TypeError(f"from_aiter: {aiterable!r} is not an async iterable")
    return FromAiter(aiterable, name)


@final
@attrs.frozen(repr=False)
class AsyncGenSource(Source[T]):
    """An async generator function, called anew on each run (``@stage`` on an async generator).

    The generator runs in the source's own task, whose only other action is handing items over,
    so its cancel scopes and nurseries nest correctly (the pattern of ``trio.as_safe_channel``,
    with a buffered, chunked hand-over instead of an unbuffered channel).
    """

    fn: Callable[[], AsyncIterator[T]]
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"name"})

    async def produce(self, out: Outlet) -> None:
        await _drain_aiter(self.fn(), out)

    @overload
    def __call__(self, *, name: str | None) -> Self: ...
    @overload
    def __call__(self) -> AsyncIterator[T]: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """With only option keywords, a configured copy; otherwise call the generator function."""
        return self.configure_or_call(self.fn, args, kwargs)

    @property
    def label(self) -> str:
        return self.name or describe(self.fn)

    def __repr__(self) -> str:
        return describe(self.fn)


@final
@attrs.frozen(repr=False)
class FromChannel(Source[T]):
    """Items received from a trio receive channel until it ends; see :func:`from_channel`."""

    channel: trio.abc.ReceiveChannel[T]
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"name"})

    async def produce(self, out: Outlet) -> None:
        channel = self.channel
        receive_nowait = getattr(channel, "receive_nowait", None)
        while True:
            room = await out.demand()
            try:
                first = await channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            chunk = [first]
            if receive_nowait is not None:
                try:
                    while len(chunk) < room:
                        chunk.append(receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    pass
            await out.send_many(chunk)

    @property
    def label(self) -> str:
        return self.name or "from_channel"

    def __repr__(self) -> str:
        return f"from_channel({describe(self.channel)})"


def from_channel(channel: trio.abc.ReceiveChannel[T], *, name: str | None = None) -> FromChannel[T]:
    """A source reading a trio receive channel until ``EndOfChannel``; the channel stays yours.

    Examples:
        >>> send, receive = trio.open_memory_channel(100)
        >>> pipeline = from_channel(receive) | sink(save)
    """
    if not isinstance(channel, trio.abc.ReceiveChannel):
        raise TypeError(f"from_channel: {channel!r} is not a trio.abc.ReceiveChannel")
    return FromChannel(channel, name)


@final
@attrs.frozen(repr=False)
class Merge(Source[T]):
    """Several sources feeding one pipeline (fan-in); see :func:`merge`."""

    sources: tuple[Source[T], ...]
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"name"})

    def parts(self) -> tuple[Source[Any], ...]:
        return tuple(p for s in self.sources for p in s.parts())

    async def produce(self, out: Outlet) -> None:  # pragma: no cover - the runner runs parts()
        raise RuntimeError("a merge runs its members as tasks of their own")

    @property
    def label(self) -> str:
        return self.name or "merge"

    def __repr__(self) -> str:
        return f"merge({', '.join(repr(s) for s in self.sources)})"


def merge(
    *sources: Source[T] | Iterable[T] | AsyncIterable[T] | Callable[[], AsyncIterator[T]],
    name: str | None = None,
) -> Merge[T]:
    """Fan-in: run several sources at once into one pipeline, interleaved as they produce.

    Each argument may be anything that can stand left of ``|`` (a source, an iterable, an async
    iterable, an async generator function).

    Examples:
        >>> pipeline = merge(orders_stream, refunds_stream) | process(handle)
    """
    if not sources:
        raise TypeError("merge() needs at least one source")
    return Merge(
        tuple(as_source(s, where=f"merge argument {i}") for i, s in enumerate(sources)), name
    )


def as_source(obj: Any, *, where: str = "source") -> Source[Any]:
    """Coerce what may stand left of the first ``|`` into a source, or raise ``TypeError``."""
    # pyright leaves the type arguments of an isinstance of Any unknown: hence the ignores
    if isinstance(obj, Composable):  # a source, or a pipeline of one source
        only = obj.sole_stage()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if isinstance(only, Source):
            return only  # pyright: ignore[reportUnknownVariableType]
    if inspect.isasyncgenfunction(obj):  # pyright: ignore[reportUnknownArgumentType]
        return AsyncGenSource[Any](obj)
    if isinstance(obj, AsyncIterable):
        return FromAiter(obj)  # pyright: ignore[reportUnknownArgumentType]
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, bytearray)):
        return FromIterable(obj)  # pyright: ignore[reportUnknownArgumentType]
    raise TypeError(
        f"{where}: {describe(obj)} cannot be a source; use a source stage, an iterable, an async "
        "iterable or an async generator function"
    )
