"""The bounded queue that joins stages: capacity counted in items, read in chunks.

A trio memory channel costs a checkpoint and a task switch per item (about 7 us here), which caps a
pipeline of single-item hops near 30k items/s. This queue keeps the trio semantics that matter
(bounded, blocking when full, closing by the last producer ends the stream, cancellable waits)
and pays scheduling per *chunk of what is already there*:

* a producer appends items without a checkpoint while there is room, and parks only when full;
* a consumer takes everything available (up to a limit) at once, and parks only when empty;
  it never waits for a chunk to fill, so at low load a chunk is one item and latency is that of
  a plain channel.

Items travel as two parallel lists: ``values`` (what the next stage sees) and ``origins`` (what
settles the source message, see ``_acking``). At most ``capacity`` items are ever queued.

Early hand-over without a cost per item: a producer working through a chunk keeps its finished
outputs in a :class:`Pending` registered on the queue. When a consumer is parked, the producer
only wakes it (once, no put); the consumer, finding the queue empty, takes what is pending. So a
producer whose calls suspend hands each result on as soon as it is done (the consumer runs while
the producer waits), and one whose calls never suspend still hands over whole chunks (the woken
consumer runs only after the chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

from trio.lowlevel import ParkingLot, checkpoint_if_cancelled

__all__ = ["FAILED", "Chunk", "ChunkQueue", "Pending"]

Chunk = tuple[list[Any], list[Any]]

#: stands in a :class:`Pending` result list for an item that failed (and was settled already)
FAILED: Any = type("Failed", (), {"__repr__": lambda self: "FAILED", "__slots__": ()})()  # pyright: ignore[reportUnknownLambdaType]

#: ``unwrap(values, origins) -> (values, origins)``: turns results into what goes on
Unwrap = Callable[[list[Any], list[Any]], Chunk]


@final
class Pending:
    """A producer's finished outputs not yet put: ``results[lo:]`` with ``origins[lo:]``.

    The producer appends to ``results`` (``origins`` may be the whole chunk's, appended to ahead
    of the results); :meth:`take` hands over what is done, to the producer itself or to a
    consumer that found its queue empty. While ``busy`` (the producer is putting what it took),
    nobody else takes, so the order of one producer's outputs is kept.
    """

    __slots__ = ("busy", "holes", "lo", "on_steal", "origins", "results", "unwrap")

    def __init__(
        self, unwrap: Unwrap | None = None, on_steal: Callable[[int], None] | None = None
    ) -> None:
        self.results: list[Any] = []
        self.origins: list[Any] = []
        self.lo: int = 0
        self.busy: bool = False
        #: whether ``results`` may hold :data:`FAILED` (then they are filtered out)
        self.holes: bool = False
        self.unwrap: Unwrap | None = unwrap
        #: told how many results a consumer took (a pool counts what its workers hold)
        self.on_steal: Callable[[int], None] | None = on_steal

    def start(self, results: list[Any], origins: list[Any]) -> None:
        """Follow a new chunk: ``origins`` for it, ``results`` appended to as items finish."""
        self.results = results
        self.origins = origins
        self.lo = 0
        self.holes = False

    def __len__(self) -> int:
        return len(self.results) - self.lo

    def take(self, limit: int | None = None) -> Chunk | None:
        """What is done and not handed over yet, at most ``limit`` results (``None``: nothing),
        now owned by the caller."""
        results = self.results
        lo, hi = self.lo, len(results)
        if limit is not None and hi - lo > limit:
            hi = lo + limit
        if hi <= lo:
            return None
        self.lo = hi
        if lo == 0 and hi == len(self.origins):
            vals, origs = results, self.origins
            self.results, self.origins, self.lo = [], [], 0
        else:
            vals, origs = results[lo:hi], self.origins[lo:hi]
        if self.holes:
            keep = [i for i, r in enumerate(vals) if r is not FAILED]
            vals = [vals[i] for i in keep]
            origs = [origs[i] for i in keep]
        if self.unwrap is not None:
            vals, origs = self.unwrap(vals, origs)
        return (vals, origs) if vals else None

    async def flush(self, out: Any) -> None:
        """Put what is done into ``out`` (an emitter); no one else takes meanwhile (order kept)."""
        self.busy = True
        try:
            while (got := self.take()) is not None:
                await out.put_many(*got)
        finally:
            self.busy = False

    def steal(self, limit: int | None = None) -> Chunk | None:
        """:meth:`take` by someone else (a consumer), unless the producer is putting."""
        if self.busy:
            return None
        count = len(self)
        got = self.take(limit)
        if self.on_steal is not None and count:
            self.on_steal(count - len(self))
        return got


@final
class ChunkQueue:
    """Bounded multi-producer multi-consumer FIFO of ``(value, origin)`` pairs.

    Producers register with :meth:`add_producer` before they start and call
    :meth:`close_producer` when done (a clone per worker, as with trio channels): when the last one
    closes, consumers drain what is left and then get ``None``.
    """

    __slots__ = (
        "_getters",
        "_head",
        "_origins",
        "_pending",
        "_producers",
        "_putters",
        "_values",
        "_want",
        "capacity",
        "name",
        "waiting",
    )

    def __init__(self, capacity: int, name: str = "") -> None:
        self.capacity: int = capacity
        self.name: str = name
        self._values: list[Any] = []
        self._origins: list[Any] = []
        #: items before this index were popped one by one (:meth:`pop`): dropped lazily
        self._head = 0
        #: a lazy consumer (``get(want=...)``) is parked until this many items are queued
        self._want = 0
        self._getters = ParkingLot()
        self._putters = ParkingLot()
        self._producers = 0
        self._pending: list[Pending] = []
        #: consumers parked on an empty queue: a producer holding output wakes one when > 0
        self.waiting: int = 0

    def __len__(self) -> int:
        return len(self._values) - self._head

    def __repr__(self) -> str:
        return f"<ChunkQueue {self.name} {len(self)}/{self.capacity}>"

    def _compact(self) -> None:
        # one memmove for a run of pops, not one per pop
        head = self._head
        del self._values[:head]
        del self._origins[:head]
        self._head = 0

    # -- producers ---------------------------------------------------------------------------

    def add_producer(self) -> None:
        """Register one more producer; the stream ends when every producer has closed."""
        self._producers += 1

    def close_producer(self) -> None:
        """Close one producer's handle (idempotence is the caller's: call once per add)."""
        self._producers -= 1
        if self._producers <= 0:
            self._getters.unpark_all()
            self.waiting = 0

    def hold(self, pending: Pending) -> None:
        """Register a producer's :class:`Pending`: a consumer finding the queue empty takes it."""
        self._pending.append(pending)

    def _steal(self, limit: int) -> Chunk | None:
        """Take what a producer holds finished (the queue is empty), at most ``limit`` items."""
        for pending in self._pending:
            # a take may come back empty (the items it covered had failed): try the rest
            while len(pending) and not pending.busy:
                got = pending.steal(limit)
                if got is not None:
                    return got
        return None

    def wake(self) -> None:
        """Wake one parked consumer (it takes from the pendings when it runs); no checkpoint."""
        self._getters.unpark()
        self.waiting = len(self._getters)

    def pop(self) -> tuple[Any, Any] | None:
        """Take one queued item without waiting (``None`` if there is none): for worker pools."""
        values = self._values
        head = self._head
        if head >= len(values):
            return None
        value, origin = values[head], self._origins[head]
        head += 1
        if head == len(values):
            self._values = []
            self._origins = []
            head = 0
        self._head = head
        if self._putters:
            self._putters.unpark_all()
        return value, origin

    def unget(self, value: Any, origin: Any) -> None:
        """Put back an item just taken (at the head), for a worker that may not hold it now."""
        if self._head:
            self._head -= 1
            self._values[self._head] = value
            self._origins[self._head] = origin
        else:
            self._values.insert(0, value)
            self._origins.insert(0, origin)

    @property
    def free(self) -> int:
        """Items that can be put now without blocking."""
        return self.capacity - len(self._values) + self._head

    async def wait_free(self) -> int:
        """Wait until at least one item fits, and return how many do.

        A checkpoint for cancellation; parks (cancellable) while the queue is full.
        """
        await checkpoint_if_cancelled()
        while len(self) >= self.capacity:
            await self._putters.park()
        return self.capacity - len(self)

    async def put(self, value: Any, origin: Any) -> None:
        """Put one item, blocking while the queue is full (cancellable then, else no checkpoint).

        If cancelled while blocked, the item was not put.
        """
        while len(self) >= self.capacity:
            await self._putters.park()
        if self._head:
            self._compact()
        self._values.append(value)
        self._origins.append(origin)
        if self.waiting:
            self.wake()
        elif self._want and len(self._values) >= self._want:
            self._getters.unpark()

    async def put_many(self, values: list[Any], origins: list[Any]) -> None:
        """Put a chunk (the queue may keep the lists: the caller must not reuse them).

        Puts what fits and blocks for the rest. If cancelled while blocked, a prefix of the
        chunk may have been put; the caller settles nothing in that case (a hard stop).
        """
        start = 0
        n = len(values)
        while start < n:
            if self._head:
                self._compact()
            free = self.capacity - len(self._values)
            if free <= 0:
                await self._putters.park()
                continue
            if start == 0 and n <= free and not self._values:
                self._values = values
                self._origins = origins
                start = n
            else:
                end = min(n, start + free)
                self._values.extend(values[start:end])
                self._origins.extend(origins[start:end])
                start = end
            if self.waiting:
                self.wake()
            elif self._want and len(self._values) >= self._want:
                self._getters.unpark()

    def force_many(self, values: list[Any], origins: list[Any]) -> None:
        """Append a chunk whatever the room: for items a stopped source already holds.

        The queue may then exceed ``capacity`` by that chunk (the in-flight bound counts what a
        source holds); no checkpoint, so a source being stopped cannot lose them here.
        """
        if self._head:
            self._compact()
        self._values.extend(values)
        self._origins.extend(origins)
        if self.waiting:
            self.wake()
        elif self._want:
            self._getters.unpark()

    # -- consumers ---------------------------------------------------------------------------

    async def get(self, limit: int, want: int = 1) -> Chunk | None:
        """Take up to ``limit`` items, or ``None`` once the stream ended and is drained.

        Waits (cancellable) while the queue is empty, and takes from the producers'
        :class:`Pending` before it parks; never waits for more items. With ``want`` > 1 (a batch
        that needs that many to fill up), it parks until that many are queued or the stream ends
        (or the wait is cancelled: a batch's timer), and producers do not wake it item by item.
        """
        await checkpoint_if_cancelled()
        if self._head:
            self._compact()
        values = self._values
        while len(values) < want or not values:
            if not values and want <= 1 and self._pending:
                got = self._steal(limit)
                if got is not None:
                    return got
            if self._producers <= 0:
                if values:
                    break
                return None
            if want <= 1:
                self.waiting += 1
                try:
                    await self._getters.park()
                finally:
                    self.waiting = len(self._getters)
            else:
                self._want = want
                try:
                    await self._getters.park()
                finally:
                    self._want = 0
            if self._head:
                self._compact()
            values = self._values
        return self._take(limit)

    def get_nowait(self, limit: int) -> Chunk | None:
        """Take up to ``limit`` queued (or pending) items without waiting; ``None`` if none."""
        if self._head:
            self._compact()
        if not self._values:
            return self._steal(limit) if self._pending else None
        return self._take(limit)

    def _take(self, limit: int) -> Chunk:
        values = self._values
        n = len(values)
        if n <= limit:
            origins = self._origins
            self._values = []
            self._origins = []
        else:
            origins = self._origins[:limit]
            del self._origins[:limit]
            values = values[:limit]
            del self._values[:limit]
        if self._putters:
            self._putters.unpark_all()
        if self._values and self.waiting:
            # more left: let another parked consumer have a go
            self.wake()
        return values, origins
