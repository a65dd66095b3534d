"""Running a pipeline: the only place that opens nurseries and queues.

Task layout of one run::

    outer nursery ── acknowledger task, failure-handler task, drain watcher
      └─ inner nursery ── every stage's workers
           └─ sources scope ── one task per source (cancelled by a graceful drain)

The end of input is a cascade of closes: each source closes its handle on the first queue, each
stage's workers close theirs on the next when their input has ended and they are done, and when
the inner nursery is done the settler closes, so the failure handler and then the acknowledger
finish what is queued. A crash (a bug, or ``Fatal``) is recorded and cancels the outer scope; the
run then raises ``PipelineError`` naming the stage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, final

import trio

from ._acking import Settler
from ._exceptions import PipelineError
from ._operators import _batch, _process, _rate_limit, _route, _transform
from ._operators._context import Emitter, StageContext, Terminal
from ._pipeline import Pipeline
from ._queue import ChunkQueue
from ._report import Histogram, RunReport, StageStats
from ._sources import Outlet, Source
from ._stages import Batch, Filter, FlatMap, Process, RateLimit, Route
from ._telemetry import Instrument, Telemetry
from ._topology import TERMINAL, Node, Topology, compile_pipeline

__all__ = ["ACK_BUFFER", "PipelineHandle", "run_pipeline"]

#: Settled messages that may wait for their acknowledger before stages block.
ACK_BUFFER = 4096


@final
class PipelineHandle:
    """Returned by ``await nursery.start(pipeline.serve)``: stop the service, read its figures."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    def stop(self) -> None:
        """Start a graceful drain and return at once (idempotent)."""
        assert self._run.stop is not None
        self._run.stop.set()

    @property
    def metrics(self) -> RunReport:
        """A live snapshot of the run's figures."""
        return self._run.report()

    @property
    def report(self) -> RunReport | None:
        """The final report once the run has ended, else ``None``."""
        return self._run.final

    async def wait(self) -> RunReport:
        """Wait for the run to end and return its final report."""
        await self._run.done.wait()
        assert self._run.final is not None
        return self._run.final


class _Run:
    """The state of one run."""

    def __init__(
        self, topology: Topology, settler: Settler, telemetry: Telemetry, stop: trio.Event | None
    ) -> None:
        self.topology = topology
        self.settler = settler
        self.telemetry = telemetry
        self.stop = stop
        self.histograms: dict[str, Histogram] = {n.label: Histogram() for n in topology.nodes}
        self.crash: tuple[str, BaseException] | None = None
        self.started = trio.current_time()
        self.ended: float | None = None
        self.final: RunReport | None = None
        self.done = trio.Event()
        self.outer: trio.CancelScope | None = None
        self.outlets: list[Outlet] = []
        self.draining = False

    def stop_sources(self) -> None:
        """Graceful drain: every source stops pulling (after the hand-over it is in, if any)."""
        self.draining = True
        for outlet in self.outlets:
            outlet.stop()

    def report(self) -> RunReport:
        s = self.settler
        elapsed = (self.ended if self.ended is not None else trio.current_time()) - self.started
        return RunReport(
            received=s.received,
            acked=s.acked,
            failed=s.failed,
            failed_by_reason=dict(s.failed_by_reason),
            retried=s.retried,
            filtered=s.filtered,
            unsettled=s.received - s.acked - s.failed,
            elapsed=elapsed,
            throughput=s.received / elapsed if elapsed > 0 else 0.0,
            stages={label: StageStats.of(h) for label, h in self.histograms.items()},
        )

    async def guard(self, label: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run one task; a crash is recorded (first wins) and cancels the whole run."""
        try:
            await fn()
        except Exception as exc:
            if self.crash is None:
                self.crash = (label, exc)
            assert self.outer is not None
            self.outer.cancel()


def _instruments(telemetry: Instrument | list[Instrument] | None) -> list[Instrument]:
    if telemetry is None:
        return []
    items = telemetry if isinstance(telemetry, list) else [telemetry]
    for item in items:
        if not isinstance(item, Instrument):
            raise TypeError(f"telemetry={item!r} must be a trioflow.abc.Instrument")
    return items


async def run_pipeline(
    pipeline: Pipeline,
    *,
    stop: trio.Event | None,
    drain_timeout: float,
    telemetry: Instrument | list[Instrument] | None,
    collect: list[Any] | None = None,
    task_status: trio.TaskStatus[PipelineHandle] = trio.TASK_STATUS_IGNORED,
) -> RunReport:
    """Run ``pipeline`` to completion (see :meth:`Pipeline.run`)."""
    if not isinstance(drain_timeout, (int, float)) or not drain_timeout >= 0:
        raise ValueError(f"drain_timeout={drain_timeout!r} must be a non-negative number")
    topology = compile_pipeline(pipeline, ack_buffer=ACK_BUFFER)
    settler = Settler(pipeline.failure_handler, ACK_BUFFER)
    tel = Telemetry(_instruments(telemetry))
    run = _Run(topology, settler, tel, stop)
    if tel.has_pipeline_start:  # type: ignore[attr-defined]
        tel.emit("pipeline_start", pipeline)

    queues = [ChunkQueue(node.buffer, node.label) for node in topology.nodes]
    end = Terminal(settler, collect)
    drop = Terminal(settler, None)

    def target(idx: int) -> Emitter:
        return end if idx == TERMINAL else queues[idx]

    watcher = trio.CancelScope()
    sources_scope = trio.CancelScope()
    try:
        async with AsyncExitStack() as stack:
            sources: list[Source[Any]] = []
            for source in topology.sources:
                try:
                    sources.append(await stack.enter_async_context(source.open()))
                except Exception as error:
                    raise PipelineError(
                        source.label, f"source {source.label!r} could not open: {error!r}"
                    ) from error
            async with trio.open_nursery() as outer:
                run.outer = outer.cancel_scope
                outer.start_soon(run.guard, "acknowledger", lambda: settler.run_acker(_on_ack(tel)))
                if pipeline.failure_handler is not None:
                    outer.start_soon(run.guard, "on_failure", settler.run_failure_handler)
                if stop is not None:
                    outer.start_soon(_watch_stop, run, stop, drain_timeout, watcher, sources_scope)
                async with trio.open_nursery() as inner:
                    for idx, node in enumerate(topology.nodes):
                        ctx = StageContext(node.label, settler, run.histograms[node.label], tel)
                        for fn in _node_tasks(node, queues[idx], target, drop, ctx):
                            inner.start_soon(run.guard, node.label, fn)
                    entry = target(topology.entry)
                    for _ in topology.sources:
                        entry.add_producer()
                    inner.start_soon(_run_sources, run, tuple(sources), entry, sources_scope)
                    task_status.started(PipelineHandle(run))
                settler.close()
                watcher.cancel()
    finally:
        run.ended = trio.current_time()
    if run.crash is not None:
        label, exc = run.crash
        raise PipelineError(label, f"stage {label!r} stopped the pipeline: {exc!r}") from exc
    run.final = report = run.report()
    run.done.set()
    if tel.has_pipeline_stop:  # type: ignore[attr-defined]
        tel.emit("pipeline_stop", report)
    return report


def _on_ack(tel: Telemetry) -> Callable[[Any, int, int], None] | None:
    if not tel.has_ack:  # type: ignore[attr-defined]
        return None
    return lambda acknowledger, ok, failed: tel.emit("ack", acknowledger, ok, failed)


def _node_tasks(
    node: Node,
    inq: ChunkQueue,
    target: Callable[[int], Emitter],
    drop: Terminal,
    ctx: StageContext,
) -> list[Callable[[], Awaitable[None]]]:
    stage = node.stage
    if isinstance(stage, Route):
        entries = {key: target(entry) for key, entry in node.branches}
        return _route.tasks(node, inq, entries, ctx)
    out = target(node.next)
    if isinstance(stage, Process):
        return _process.tasks(node, inq, drop if stage.terminal else out, ctx)
    if isinstance(stage, Batch):
        return _batch.tasks(node, inq, out, ctx)
    if isinstance(stage, Filter):
        return _transform.filter_tasks(node, inq, out, ctx)
    if isinstance(stage, FlatMap):
        return _transform.flat_map_tasks(node, inq, out, ctx)
    if isinstance(stage, RateLimit):
        return _rate_limit.tasks(node, inq, out, ctx)
    raise TypeError(f"{stage!r} is not a stage trioflow can run")  # pragma: no cover


async def _run_sources(
    run: _Run, sources: tuple[Source[Any], ...], entry: Emitter, scope: trio.CancelScope
) -> None:
    async def one(source: Source[Any], outlet: Outlet) -> None:
        try:
            with outlet.scope:
                await source.produce(outlet)
        finally:
            entry.close_producer()

    with scope:
        async with trio.open_nursery() as nursery:
            for source in sources:
                outlet = Outlet(entry, run.settler)  # type: ignore[arg-type]
                run.outlets.append(outlet)
                outlet.instrument(run.telemetry, source.label)
                if run.draining:
                    outlet.stop()
                nursery.start_soon(run.guard, source.label, lambda s=source, o=outlet: one(s, o))


async def _watch_stop(
    run: _Run,
    stop: trio.Event,
    drain_timeout: float,
    watcher: trio.CancelScope,
    sources_scope: trio.CancelScope,
) -> None:
    with watcher:
        await stop.wait()
        if run.telemetry.has_drain_start:  # type: ignore[attr-defined]
            run.telemetry.emit("drain_start")
        run.stop_sources()
        await trio.sleep(drain_timeout)
        # past the deadline: stop everything; what is in flight stays un-acked
        assert run.outer is not None
        run.outer.cancel()
