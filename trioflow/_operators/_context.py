"""What a stage's workers share: the settler, their figures, telemetry, and the emit target.

Also how code running inside a stage call (a connector sink's own retry loop) reaches its stage:
every task of a stage binds its :class:`StageContext` in a context variable when it starts
(:func:`bound`), and trio copies it into the tasks and threads a call starts; :func:`note_retry`
reads it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, cast, final

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled

from .._acking import Settler
from .._message import FailureAction, Message
from .._queue import Pending
from .._report import Histogram
from .._telemetry import Telemetry
from .._topology import TERMINAL_DEMAND
from .._validate import excerpt

if TYPE_CHECKING:
    from .._metrics import Meter

__all__ = ["Emitter", "StageContext", "Terminal", "bound", "note_retry"]

#: the stage whose call the current task is making (None outside a stage)
_current: ContextVar[StageContext | None] = ContextVar("trioflow_stage", default=None)


class Emitter(Protocol):
    """Where a stage puts its outputs: the next stage's queue, or the end of the pipeline."""

    waiting: int

    def add_producer(self) -> None: ...
    def hold(self, pending: Pending) -> None: ...
    def wake(self) -> None: ...
    def close_producer(self) -> None: ...
    async def put(self, value: Any, origin: Any) -> None: ...
    async def put_many(self, values: list[Any], origins: list[Any]) -> None: ...
    async def wait_free(self) -> int: ...
    @property
    def free(self) -> int: ...
    def force_many(self, values: list[Any], origins: list[Any]) -> None: ...


@final
class Terminal:
    """The end of the pipeline (or of a sink): settle as successful, and maybe collect.

    Its consumer is the acknowledger task: ``waiting`` is 1 while that task is parked with
    nothing to ack, and it takes what the producers' :class:`Pending` hold before it parks, so a
    sink's finished items are acked right after their call when the acker is idle.
    With ``yields`` (a pipeline of a source alone), every hand-over lets other tasks run.
    """

    capacity = 1 << 30

    def __init__(
        self,
        settler: Settler,
        collect: list[Any] | None,
        meter: Meter | None = None,
        *,
        yields: bool = False,
    ) -> None:
        self._settler = settler
        self._collect = collect
        self._meter = meter
        self._pending: list[Pending] = []
        self._yields = yields
        self.waiting = 0
        settler.terminals.append(self)

    def add_producer(self) -> None:
        pass

    def close_producer(self) -> None:
        pass

    def hold(self, pending: Pending) -> None:
        self._pending.append(pending)

    def wake(self) -> None:
        self._settler.wake_acker()

    def take_pending(self) -> bool:
        """Settle what the producers hold finished (the acker's call); whether there was any."""
        took = False
        for pending in self._pending:
            got = pending.steal()
            if got is not None:
                self._settle(*got)
                took = True
        return took

    def _settle(self, values: list[Any], origins: list[Any]) -> None:
        if self._collect is not None:
            self._collect.extend(values)
        self._settler.ok(origins)
        if self._meter is not None:
            self._meter.progress()

    async def put(self, value: Any, origin: Any) -> None:
        await self.put_many([value], [origin])

    async def put_many(self, values: list[Any], origins: list[Any]) -> None:
        self._settle(values, origins)
        if self._yields:
            await checkpoint()
        await self._settler.room()

    async def wait_free(self) -> int:
        if self._yields:
            await checkpoint()
        else:
            await checkpoint_if_cancelled()
        await self._settler.room()
        return TERMINAL_DEMAND

    @property
    def free(self) -> int:
        settler = self._settler
        return TERMINAL_DEMAND if settler.backlog < settler.ack_buffer else 0

    def force_many(self, values: list[Any], origins: list[Any]) -> None:
        self._settle(values, origins)


@final
class StageContext:
    """Shared by the workers of one stage, with the stage's figures.

    Workers keep the figures per chunk, not per item: ``active`` (items taken and not done),
    ``busy`` (seconds workers held a chunk, summed over workers), ``failed`` (items failed here),
    and the per-item latency ``histogram``.
    """

    __slots__ = (
        "active",
        "busy",
        "control",
        "draining",
        "failed",
        "histogram",
        "hold_sources",
        "label",
        "meter",
        "settler",
        "spawn",
        "telemetry",
        "workers",
    )

    def __init__(
        self,
        label: str,
        settler: Settler,
        histogram: Histogram,
        telemetry: Telemetry,
        meter: Meter | None = None,
    ) -> None:
        self.label = label
        self.settler = settler
        self.histogram = histogram
        self.telemetry = telemetry
        self.meter = meter
        self.active = 0
        self.busy = 0.0
        self.failed = 0
        self.workers = 1
        #: what steers the stage while it runs (a rate limit's ``RateControl``), if anything
        self.control: Any = None
        #: whether a graceful drain is under way (the runner sets it to read the run's state)
        self.draining: Callable[[], bool] = _never
        #: starts one more task of this stage in the run's stage nursery (a resize that grows)
        self.spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None
        #: ``hold_sources(True)`` pauses the run's sources for this stage (an open breaker),
        #: ``hold_sources(False)`` lifts this stage's hold; a user's pause is kept apart
        self.hold_sources: Callable[[bool], None] = _ignore

    def chunk_start(self, items: int) -> None:
        """A worker took ``items`` items (call once per chunk)."""
        self.active += items
        if self.telemetry.has_stage_start:
            self.telemetry.emit("stage_start", self.label, items)

    def chunk_stop(self, items: int, seconds: float) -> None:
        """A worker is done with a chunk of ``items`` that it held for ``seconds``."""
        self.active -= items
        self.busy += seconds
        self.histogram.add(seconds / items, items)
        if self.telemetry.has_stage_stop:
            self.telemetry.emit("stage_stop", self.label, items, seconds)

    def retried(self, data: Any, attempt: int, exc: BaseException, delay: float) -> None:
        """A call of this stage retries by itself: count it in ``report.retried``, tell
        instruments (the ``retry`` event), as a stage's own :class:`~trioflow.Retry` does."""
        self.settler.retried += 1
        if self.telemetry.has_retry:
            self.telemetry.emit("retry", self.label, data, attempt, exc, delay)

    def fail(
        self,
        origin: Any,
        value: Any,
        reason: BaseException | str,
        action: FailureAction | None = None,
    ) -> None:
        """Fail one item: note the stage and item on the exception, and settle as failed.

        ``value`` is what the stage saw (a ``Message`` for a ``messages=True`` stage: its data
        is what the note and the ``failure`` event show).
        """
        if isinstance(value, Message):
            value = cast("Message[object]", value).data
        if isinstance(reason, BaseException):
            note_item(reason, self.label, value)
        self.failed += 1
        if self.telemetry.has_failure:
            self.telemetry.emit("failure", self.label, value, reason)
        self.settler.failure_log.failed(self.label, value, reason)
        self.settler.fail(origin, reason, action)
        if self.meter is not None:
            self.meter.progress()


#: how note_item marks its notes (one per exception instance)
NOTE_PREFIX = "trioflow: in stage "


def _never() -> bool:
    return False


def _ignore(on: bool) -> None:
    pass


def note_item(exc: BaseException, label: str, value: Any) -> None:
    """Add a note naming the stage and an excerpt of the item to ``exc``, once per exception.

    One exception instance raised for many items (a shared constant) keeps its first note only;
    an exception that cannot take notes (a frozen dataclass) is left as it is. The excerpt is
    bounded whatever the item (see :func:`~trioflow._validate.excerpt`).
    """
    try:
        notes = getattr(exc, "__notes__", None)
        if notes and any(isinstance(n, str) and n.startswith(NOTE_PREFIX) for n in notes):
            return
        exc.add_note(f"{NOTE_PREFIX}{label!r}, item {excerpt(value, 200)}")
    except Exception:
        pass


def bound(ctx: StageContext, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """Task ``fn`` of the stage of ``ctx``, which binds ``ctx`` for :func:`note_retry` once as
    it starts (nothing per chunk or per item)."""

    async def task() -> None:
        _current.set(ctx)
        await fn()

    return task


def note_retry(data: Any, attempt: int, exc: BaseException, delay: float) -> bool:
    """Count a retry that a stage's function makes itself, as if the stage's ``retry=`` had.

    For connector code with its own retry loop (a database sink reconnecting): the retry is
    counted in ``report.retried`` (exported to Prometheus as ``trioflow_retried``) and reaches
    instruments as the ``retry`` event of the stage making the call. ``data`` is the item (or
    batch) being retried, ``attempt`` the number of the call about to be made (2 for the first
    retry), ``exc`` what the failed call raised and ``delay`` the seconds waited before it.

    Costs nothing unless called. Returns whether a stage was found: outside a pipeline (a sink
    called directly) nothing is counted. Call it from the stage's task or a task it started; from
    a thread started with ``trio.to_thread`` it is forwarded to the trio thread.

    Examples:
        >>> note_retry(rows, attempt + 1, exc, delay)
        >>> await trio.sleep(delay)
    """
    ctx = _current.get()
    if ctx is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # a worker thread: the figures belong to the trio thread
        trio.from_thread.run_sync(ctx.retried, data, attempt, exc, delay)
    else:
        ctx.retried(data, attempt, exc, delay)
    return True
