"""Recording sources: every item pulled, and what became of it.

* :class:`RecordingAcknowledger` records outcomes (and, given the message's own acknowledger,
  forwards them to it), and fails loudly on a message acked twice.
* :class:`TestSource` is a source over an iterable whose messages carry such a recorder.
* :func:`record` wraps any source so that its messages are recorded on the way to their own
  acknowledgers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice
from operator import attrgetter, itemgetter
from typing import Any, Generic, TypeVar, cast, final

import trio

from .._bulk import Lot, Metadata, check_bulk
from .._exceptions import Fatal
from .._message import NOOP_ACKNOWLEDGER, Acknowledger, Message
from .._sources import Outlet, Source
from .._validate import describe


class AckedTwice(Fatal, AssertionError):
    """A message reached its acknowledger twice: a bug, so it stops the run (an ``ack`` that
    raises anything else is contained, see the contract on acknowledger errors)."""


__all__ = [
    "SEQ",
    "InFlightMeter",
    "RecordedSource",
    "RecordingAcknowledger",
    "TestSource",
    "record",
]

T = TypeVar("T")

#: metadata key under which recorded messages are numbered (to detect double acks)
SEQ = "test_seq"

Reason = BaseException | str | None


@final
class InFlightMeter:
    """Counts items pulled and settled across the sources that share it, and the peak gap.

    ``peak`` is the largest ``pulled - settled`` seen: it is sampled right after every pull, the
    only moment the gap can grow.

    Example:
        >>> meter = InFlightMeter()
        >>> a, b = TestSource([1, 2]), TestSource([3])
        >>> a.meter = b.meter = meter
    """

    __slots__ = ("peak", "pulled", "settled")

    def __init__(self) -> None:
        self.pulled: int = 0
        self.settled: int = 0
        self.peak: int = 0

    @property
    def in_flight(self) -> int:
        """Items pulled and not settled yet."""
        return self.pulled - self.settled

    def on_pull(self, n: int) -> None:
        """Note ``n`` more items pulled."""
        self.pulled += n
        self.peak = max(self.peak, self.pulled - self.settled)

    def __repr__(self) -> str:
        return f"InFlightMeter(pulled={self.pulled}, settled={self.settled}, peak={self.peak})"


_seq_of = itemgetter(SEQ)
_metadata_of = attrgetter("metadata")
_data_of = attrgetter("data")


@final
class RecordingAcknowledger:
    """Records outcomes: ``acked`` (data, in ack order) and ``failed`` (``(data, reason)``).

    Messages numbered under ``metadata["test_seq"]`` (as :class:`TestSource` and :func:`record`
    number them) are checked: acking one twice raises ``AssertionError``, which stops the pipeline
    with a :class:`~trioflow.PipelineError` so the test notices. With ``forward``, a mapping from
    sequence number to the message the source produced, outcomes are passed on to that message's
    own acknowledger after they are recorded.

    Example:
        >>> recorder = RecordingAcknowledger()
        >>> source = from_iterable([Message(1, acknowledger=recorder)])
        >>> await (source | sink(save)).run()
        >>> recorder.acked
        [1]
    """

    def __init__(self, meter: InFlightMeter | None = None, *, delay: float = 0.0) -> None:
        #: seconds each ``ack`` call takes (a slow broker: settled messages back up behind it)
        self.delay: float = delay
        self.acked: list[Any] = []
        self.failed: list[tuple[Any, Reason]] = []
        self.calls: int = 0
        self.meter: InFlightMeter = meter if meter is not None else InFlightMeter()
        #: sequence number -> the message to forward the outcome to (see :func:`record`)
        self.forward: dict[Any, Message[Any]] = {}
        #: the next sequence number :func:`record` hands out (shared by merged members)
        self.next_seq: int = 0
        #: the data a :class:`TestSource` pulled, by sequence number (for :meth:`ack_ids`)
        self.pulled: list[Any] | None = None
        self._seen: set[Any] = set()

    @property
    def seen(self) -> frozenset[Any]:
        """Sequence numbers of the numbered messages acked so far."""
        return frozenset(self._seen)

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        """Record a group of outcomes (and forward them); :class:`AckedTwice` on a double ack."""
        self.calls += 1
        if self.delay:
            await trio.sleep(self.delay)
        try:  # every message numbered (TestSource, record): at C speed
            numbered = list(map(_seq_of, map(_metadata_of, successful)))
            numbered += map(_seq_of, map(_metadata_of, failed))
        except KeyError:
            seqs = [m.metadata.get(SEQ) for m in (*successful, *failed)]
            numbered = [s for s in seqs if s is not None]
        self._check_once(numbered)
        self.meter.settled += len(successful) + len(failed)
        self.acked.extend(map(_data_of, successful))
        self.failed.extend([(m.data, m.reason) for m in failed])
        if self.forward:
            await self._forward(successful, failed)

    async def ack_ids(self, ids: list[Any]) -> None:
        """Record successful messages handed over in bulk by :class:`TestSource` (their ids are
        their sequence numbers); :class:`AckedTwice` on a double ack."""
        self.calls += 1
        if self.delay:
            await trio.sleep(self.delay)
        self._check_once(ids)
        self.meter.settled += len(ids)
        pulled = self.pulled
        # a recorder of no TestSource (used by hand with send_bulk) records the ids themselves
        self.acked.extend(ids if pulled is None else map(pulled.__getitem__, ids))

    def _check_once(self, numbered: list[Any]) -> None:
        seen = self._seen
        group = set(numbered)
        if len(group) != len(numbered) or not seen.isdisjoint(group):
            counts = Counter(numbered)
            again = sorted({s for s in numbered if counts[s] > 1 or s in seen})
            raise AckedTwice(f"messages acked twice: {SEQ} {again[:10]}")
        seen |= group

    async def _forward(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        groups: dict[int, tuple[Acknowledger, list[Message[Any]], list[Message[Any]]]] = {}
        for ok, batch in ((True, successful), (False, failed)):
            for m in batch:
                original = self.forward.pop(m.metadata.get(SEQ), None)
                if original is None or original.acknowledger is NOOP_ACKNOWLEDGER:
                    continue
                a = original.acknowledger
                entry = groups.setdefault(id(a), (a, [], []))
                if ok:
                    entry[1].append(original)
                else:
                    entry[2].append(original.fail(m.reason if m.reason is not None else "failed"))
        for a, succ, fail in groups.values():
            await a.ack(succ, fail)


class _Recorded:
    """What :class:`TestSource` and :class:`RecordedSource` share: outcomes and pull counts."""

    acknowledger: RecordingAcknowledger
    pulled_data: list[Any]

    @property
    def acked(self) -> list[Any]:
        """Data acked as successful, in ack order."""
        return self.acknowledger.acked

    @property
    def failed(self) -> list[tuple[Any, Reason]]:
        """``(data, reason)`` of every item acked as failed."""
        return self.acknowledger.failed

    @property
    def pulled(self) -> int:
        """Items pulled so far."""
        return len(self.pulled_data)

    @property
    def settled(self) -> int:
        """Items acked either way."""
        return len(self.acknowledger.acked) + len(self.acknowledger.failed)

    @property
    def meter(self) -> InFlightMeter:
        """The in-flight meter this source counts on (share one across merged sources)."""
        return self.acknowledger.meter

    @meter.setter
    def meter(self, meter: InFlightMeter) -> None:
        old = self.acknowledger.meter
        if old is meter:
            return
        meter.pulled += old.pulled
        meter.settled += old.settled
        meter.peak = max(meter.peak, old.peak)
        self.acknowledger.meter = meter

    def unsettled(self) -> list[Any]:
        """Data pulled and not acked either way (empty after a complete run)."""
        seen = self.acknowledger.seen
        return [x for i, x in enumerate(self.pulled_data) if i not in seen]


class TestSource(_Recorded, Source[T], Generic[T]):
    """A source over ``iterable`` (which may be endless) that records every outcome.

    ``src.acked`` lists the data acked as successful, in ack order; ``src.failed`` lists
    ``(data, reason)`` pairs; ``src.pulled`` counts items pulled (``src.pulled_data`` lists them).
    Every item pulled ends in exactly one of the lists, unless the run was hard-cancelled or its
    drain timed out. ``ack_delay`` makes every ``ack`` call take that long (a slow broker).
    Acking an item twice raises ``AssertionError`` in the acknowledger, which
    stops the run with :class:`~trioflow.PipelineError`. A ``TestSource`` records one run; build
    a fresh one per run.

    Example:
        >>> src = TestSource([1, 2, 3])
        >>> await (src | process(double) | sink(save)).run()
        >>> src.acked
        [1, 2, 3]
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, iterable: Iterable[T], *, name: str | None = None, ack_delay: float = 0.0
    ) -> None:
        self.iterable: Iterable[T] = iterable
        self.name: str | None = name
        self.acknowledger: RecordingAcknowledger = RecordingAcknowledger(delay=ack_delay)
        self.pulled_data: list[T] = []
        self.acknowledger.pulled = self.pulled_data
        self._stop_after: tuple[int, trio.Event] | None = None

    def stop_after(self, pulled: int, stop: trio.Event) -> None:
        """Set ``stop`` as soon as at least ``pulled`` items have been pulled (a graceful drain)."""
        self._stop_after = (pulled, stop)

    def split(self, parts: int) -> tuple[TestSource[T], ...]:
        """``parts`` sources over interleaved slices of the items, sharing this one's meter.

        For a ``merge`` under test: ``merge(*TestSource(items).split(2))``.
        """
        items: Sequence[T] = (
            self.iterable if isinstance(self.iterable, Sequence) else list(self.iterable)
        )
        out = tuple(TestSource(items[i::parts], name=f"{self.label}[{i}]") for i in range(parts))
        for s in out:
            s.acknowledger.meter = self.meter
        return out

    async def produce(self, out: Outlet) -> None:
        """Pull chunks as demand allows; each item becomes a message with the recorder (handed
        over in bulk, as connectors do: its id is its sequence number)."""
        it = iter(self.iterable)
        ack = self.acknowledger
        pulled = self.pulled_data
        while True:
            room = await out.demand()
            chunk = list(islice(it, room))
            if not chunk:
                return
            start = len(pulled)
            pulled.extend(chunk)
            ack.meter.on_pull(len(chunk))
            if self._stop_after is not None and len(pulled) >= self._stop_after[0]:
                self._stop_after[1].set()
            seqs = range(start, start + len(chunk))
            await out.send_bulk(chunk, acknowledger=ack, ids=seqs, metadata=_numbered)

    @property
    def label(self) -> str:
        return self.name or "TestSource"

    def __repr__(self) -> str:
        return f"TestSource({describe(self.iterable)})"


def _numbered(seq: int) -> dict[str, Any]:
    return {SEQ: seq}


@final
class _RecordingOutlet:
    """An outlet in front of the real one: numbers and records each item on its way."""

    def __init__(self, out: Outlet, owner: RecordedSource[Any]) -> None:
        self._out = out
        self._owner = owner

    async def demand(self) -> int:
        return await self._out.demand()

    def _wrap(self, item: Any) -> Message[Any]:
        owner = self._owner
        rec = owner.acknowledger
        seq = rec.next_seq
        rec.next_seq += 1
        owner.pulled_seqs.append(seq)
        if type(item) is Message:
            msg = cast("Message[object]", item)
            owner.pulled_data.append(msg.data)
            rec.forward[seq] = msg
            wrapped = Message(msg.data, {**msg.metadata, SEQ: seq}, rec)
        else:
            owner.pulled_data.append(item)
            wrapped = Message(item, {SEQ: seq}, rec)
        rec.meter.on_pull(1)
        return wrapped

    async def send(self, item: Any) -> None:
        await self._out.send(self._wrap(item))

    def disconnected(self, exc: BaseException, attempt: int, delay: float) -> None:
        self._out.disconnected(exc, attempt, delay)

    def reconnected(self, attempts: int, downtime: float) -> None:
        self._out.reconnected(attempts, downtime)

    async def send_many(self, items: list[Any]) -> None:
        await self._out.send_many([self._wrap(x) for x in items])

    async def send_bulk(
        self,
        data: list[Any],
        *,
        acknowledger: Acknowledger,
        ids: Sequence[Any] | None = None,
        metadata: Metadata = None,
        failed: Sequence[Message[Any]] = (),
    ) -> None:
        # recorded as messages: the source's acknowledger then gets them through ``ack``
        check_bulk(data, ids, metadata, acknowledger)
        lot = Lot(data, data if ids is None else ids, metadata, acknowledger)
        await self.send_many([*failed, *(lot.message(i) for i in range(len(data)))])


class RecordedSource(_Recorded, Source[T], Generic[T]):
    """Any source, with every message recorded on its way to its own acknowledger.

    Built by :func:`record`; has the recording attributes of :class:`TestSource`.
    """

    def __init__(self, inner: Source[T], acknowledger: RecordingAcknowledger | None = None) -> None:
        self.inner: Source[T] = inner
        self.acknowledger: RecordingAcknowledger = (
            acknowledger if acknowledger is not None else RecordingAcknowledger()
        )
        self.pulled_data: list[T] = []
        self.pulled_seqs: list[int] = []
        self._parts: tuple[RecordedSource[Any], ...] | None = None

    def parts(self) -> tuple[Source[Any], ...]:
        inner_parts = self.inner.parts()
        if len(inner_parts) == 1 and inner_parts[0] is self.inner:
            return (self,)
        if self._parts is None:
            # a merge: each member runs as its own task; they share this recorder
            self._parts = tuple(RecordedSource(p, self.acknowledger) for p in inner_parts)
        return self._parts

    @property
    def pulled(self) -> int:
        """Items pulled so far (by every member, for a merge)."""
        if self._parts is not None:
            return sum(p.pulled for p in self._parts)
        return len(self.pulled_data)

    def unsettled(self) -> list[Any]:
        """Data pulled and not acked either way (empty after a complete run)."""
        if self._parts is not None:
            return [x for p in self._parts for x in p.unsettled()]
        seen = self.acknowledger.seen
        return [x for i, x in zip(self.pulled_seqs, self.pulled_data, strict=True) if i not in seen]

    async def produce(self, out: Outlet) -> None:
        """Run the wrapped source, recording each item it hands over."""
        await self.inner.produce(cast(Outlet, _RecordingOutlet(out, self)))

    @property
    def label(self) -> str:
        return self.inner.label

    def __repr__(self) -> str:
        return f"record({self.inner!r})"


def record(source: Any) -> RecordedSource[Any]:
    """Wrap ``source`` (anything that can stand left of ``|``) so its outcomes are recorded.

    Messages keep their metadata and still reach their own acknowledger, after the recorder has
    noted them; ``.acked``, ``.failed``, ``.pulled`` and ``.unsettled()`` work as on
    :class:`TestSource`.

    Example:
        >>> src = record(from_channel(receive))
        >>> await (src | sink(save)).run()
        >>> assert not src.unsettled()
    """
    from .._sources import as_source

    return RecordedSource(as_source(source, where="record"))
