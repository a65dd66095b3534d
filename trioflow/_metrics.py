"""Built-in metrics: always on, kept per chunk, read as a report or a JSON snapshot.

What each stage keeps is in its :class:`~trioflow._operators._context.StageContext` (counts,
busy time, items in hand, the latency histogram). What no stage sees is kept here, by the
:class:`Meter` of the run:

* end-to-end latency, from a message's hand-over by its source to its settlement (acked, or
  acked as failed). Pipelines reorder items, so a per-message timestamp would cost an object per
  item; instead the meter notes *marks* (the running count of received messages, and when)
  once per hand-over, and when the settled count passes a mark it records the time since. That
  is exact for a pipeline that keeps order and, by Little's law, right on average for one that
  does not (see docs/observability.md);
* dead-letter volume (messages handed to ``on_failure``).

Rates (per second) are windowed: :class:`Rates` keeps a few samples of the counters and
divides by the time between the newest and the oldest within the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import trio

from ._report import Histogram

if TYPE_CHECKING:
    from ._acking import Settler
    from ._operators._context import Emitter

__all__ = ["SNAPSHOT_VERSION", "Meter", "MeteredEntry", "Rates", "source_figures"]

#: bumped when a key of :meth:`PipelineHandle.snapshot` changes meaning or goes away
SNAPSHOT_VERSION = 1


@final
class Meter:
    """End-to-end latency marks and run-wide counters of one run."""

    __slots__ = ("_consumed", "_marks", "dead_lettered", "latency", "settler")

    settler: Settler  # set by the runner once the settler exists (it wraps ``on_failure`` first)

    def __init__(self) -> None:
        self.latency: Histogram = Histogram()
        self.dead_lettered: int = 0
        self._marks: deque[list[float]] = deque()
        self._consumed = 0

    def received(self) -> None:
        """A source handed messages over: mark the running received count, and now."""
        now = trio.current_time()
        marks = self._marks
        if marks and marks[-1][1] == now:
            marks[-1][0] = self.settler.received
        else:
            marks.append([self.settler.received, now])

    def progress(self) -> None:
        """Messages may have settled: record the latency of those past the oldest marks."""
        s = self.settler
        settled = s.acked + s.failed
        consumed = self._consumed
        if settled <= consumed:
            return
        marks = self._marks
        now = trio.current_time()
        while marks:
            head = marks[0]
            upto = min(settled, int(head[0]))
            if upto > consumed:
                self.latency.add(now - head[1], upto - consumed)
                consumed = upto
            if consumed >= head[0]:
                marks.popleft()
            else:
                break
        self._consumed = consumed

    def failure_handler(
        self, handler: Callable[[list[Any]], Any], notify: Callable[[int], None] | None
    ) -> Callable[[list[Any]], Any]:
        """Wrap ``on_failure`` to count the messages it is handed."""

        def counted(messages: list[Any]) -> Awaitable[None] | None:
            self.progress()
            self.dead_lettered += len(messages)
            if notify is not None:
                notify(len(messages))
            result: Awaitable[None] | None = handler(messages)
            return result

        return counted


@final
class MeteredEntry:
    """What a source's outlet puts into: the first queue, noting a latency mark per hand-over."""

    __slots__ = ("_inner", "_meter")

    def __init__(self, inner: Emitter, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    @property
    def waiting(self) -> int:
        return self._inner.waiting

    def add_producer(self) -> None:
        self._inner.add_producer()

    def close_producer(self) -> None:
        self._inner.close_producer()

    async def wait_free(self) -> int:
        return await self._inner.wait_free()

    @property
    def free(self) -> int:
        return self._inner.free

    def force_many(self, values: list[Any], origins: list[Any]) -> None:
        self._meter.progress()
        self._inner.force_many(values, origins)
        self._meter.received()

    async def put(self, value: Any, origin: Any) -> None:
        await self._inner.put(value, origin)
        self._meter.received()

    async def put_many(self, values: list[Any], origins: list[Any]) -> None:
        meter = self._meter
        meter.progress()
        await self._inner.put_many(values, origins)
        meter.received()


@final
class Rates:
    """Per-second rates of counters over a sliding window of samples.

    Examples:
        >>> rates = Rates(window=5.0)
        >>> rates.update(now, (received, acked))  # -> per-second rates over the window
    """

    __slots__ = ("_samples", "every", "window")

    def __init__(self, window: float = 5.0, every: float = 0.2) -> None:
        self.window: float = window
        self.every: float = every
        self._samples: deque[tuple[float, tuple[float, ...]]] = deque()

    def update(self, now: float, counters: tuple[float, ...]) -> tuple[float, ...] | None:
        """Add a sample (at most one per ``every`` seconds); rates since the oldest in the window.

        ``None`` until there is an older sample to compare with.
        """
        samples = self._samples
        if not samples or now - samples[-1][0] >= self.every:
            samples.append((now, counters))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        t0, old = samples[0]
        span = now - t0
        if span <= 0 or len(old) != len(counters):
            return None
        return tuple((new - was) / span for new, was in zip(counters, old, strict=True))


def source_figures(source: Any) -> dict[str, float]:
    """What a source reports about itself: its ``source_metrics()``, if it has one.

    A connector may define ``source_metrics() -> dict[str, float]`` (synchronous and cheap: a
    figure that needs I/O, such as a broker's lag, is refreshed by the source's own task). An
    error there is not the pipeline's problem: it reads as no figures.
    """
    method = getattr(source, "source_metrics", None)
    if method is None:
        return {}
    try:
        figures = method()
        return {str(k): float(v) for k, v in figures.items()}
    except Exception:
        return {}
