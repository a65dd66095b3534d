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

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, final

import trio

from ._acking import Settler
from ._exceptions import PipelineError
from ._graph import Graph, graph_of, stage_kind, stage_order
from ._groups import fatal_of, group_of, strip_cancelled
from ._metrics import SNAPSHOT_VERSION, Meter, MeteredEntry, Rates, source_figures
from ._operators import _batch, _process, _rate_limit, _route, _transform
from ._operators._context import Emitter, StageContext, Terminal, bound
from ._operators._steer import SourceHolds, Steering, describe_control
from ._pipeline import Pipeline
from ._queue import ChunkQueue
from ._report import Histogram, RunReport, StageStats
from ._sources import Gate, Outlet, Source
from ._stages import BatchStage, Filter, FlatMap, Process, RateLimit, Route, Unbatch
from ._telemetry import Instrument, Telemetry
from ._topology import TERMINAL, Node, Topology, compile_pipeline

__all__ = ["ACK_BUFFER", "PipelineHandle", "run_pipeline"]

logger = logging.getLogger("trioflow")

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

    def pause(self) -> None:
        """Stop the sources pulling: what is in flight finishes and is acked, nothing new comes
        in; broker connections stay open (a Kafka source pauses its partitions and keeps its
        group membership). Idempotent; :meth:`resume` undoes it, a drain still works. A stage's
        open breaker pauses the sources too, on its own account: :meth:`resume` does not lift
        a breaker's pause, and a breaker closing does not lift this one.

        Examples:
            >>> handle.pause()   # e.g. while a downstream database is maintained
            >>> handle.resume()
        """
        self._run.holds.hold("user", True)

    def resume(self) -> None:
        """Let the sources pull again after :meth:`pause` (idempotent)."""
        self._run.holds.hold("user", False)

    def resize(self, stage: str, n: int) -> None:
        """Let ``process``/``sink`` stage ``stage`` (its name as in the report) run ``n`` calls
        at once from now on.

        Growing starts more workers at once; shrinking lets the extra workers finish the call
        they are in, then wait, holding no item. A stage of ``n=1`` resized to more no longer
        keeps input order (unless it was built with ``ordered=True``; ``partition_by`` keeps
        per-key order at any size). The stage may then hold up to ``max(buffer, n)`` items in
        its workers, beside its buffer. A stage with ``n=Adaptive(...)`` refuses: its limit
        follows latency (``ValueError``). Raises ``KeyError`` for an unknown name (the message
        lists the stages), ``TypeError`` for a stage that is not ``process``/``sink``,
        ``ValueError`` for an ``n`` that is not a positive integer or is above 4096 (or the
        stage's own ``n``, if larger): each call is a task kept for the rest of the run. Once
        the run has ended (its input done, a drain, a hard stop), a valid resize does nothing.

        Examples:
            >>> handle.resize("save", 16)
        """
        ctx = self._context(stage, "resize")
        control = ctx.control
        if not isinstance(control, Steering):
            raise TypeError(f"resize: stage {stage!r} is not a process or sink stage")
        control.resize(n)

    def _context(self, stage: str, what: str) -> StageContext:
        run = self._run
        contexts = {run.contexts[i].label: run.contexts[i] for i in stage_order(run.topology)}
        ctx = contexts.get(stage)
        if ctx is None:
            raise KeyError(f"{what}: no stage named {stage!r} (stages: {', '.join(contexts)})")
        return ctx

    def set_rate(self, stage: str, count: int, per: float = 1.0) -> None:
        """Let ``rate_limit`` stage ``stage`` (its name as in the report) pass ``count`` items
        per ``per`` seconds from now on.

        Examples:
            >>> handle.set_rate("rate_limit", 50, per=1.0)
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"set_rate: count={count!r} must be a positive integer")
        if not isinstance(per, (int, float)) or not per > 0:
            raise ValueError(f"set_rate: per={per!r} must be a positive number of seconds")
        control = self._context(stage, "set_rate").control
        if not hasattr(control, "per"):
            raise TypeError(f"set_rate: stage {stage!r} is not a rate_limit stage")
        control.set(count, float(per))

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in effect (a breaker's pause aside: see ``snapshot()``)."""
        return self._run.holds.has("user")

    @property
    def metrics(self) -> RunReport:
        """A live snapshot of the run's figures (per stage: ``in_flight``, ``queued``, ...)."""
        return self._run.report()

    @property
    def graph(self) -> Graph:
        """The stage graph being run (ids match :meth:`snapshot`'s ``stages``)."""
        return graph_of(self._run.topology)

    @property
    def state(self) -> str:
        """``"running"``, ``"draining"`` (a graceful stop began) or ``"stopped"``."""
        return self._run.state()

    def snapshot(self) -> dict[str, Any]:
        """The live figures as plain JSON-able data, with rates over the last few seconds.

        See docs/observability.md for the keys. Cheap enough to call a few times a second.

        Examples:
            >>> json.dumps(handle.snapshot())
        """
        return self._run.snapshot()

    @property
    def report(self) -> RunReport | None:
        """The final report once the run has ended, else ``None``."""
        return self._run.final

    async def wait(self) -> RunReport:
        """Wait for the run to end and return its final report.

        Raises the run's :class:`~trioflow.PipelineError` if it crashed, or ``RuntimeError`` if it
        was cancelled (a hard stop) before it could report.
        """
        await self._run.done.wait()
        if self._run.error is not None:
            raise self._run.error
        if self._run.final is None:
            raise RuntimeError("the pipeline was cancelled before it finished: no report")
        return self._run.final


class _Run:
    """The state of one run."""

    def __init__(
        self,
        topology: Topology,
        settler: Settler,
        telemetry: Telemetry,
        stop: trio.Event | None,
        meter: Meter,
    ) -> None:
        self.topology = topology
        self.settler = settler
        self.telemetry = telemetry
        self.stop = stop
        self.histograms: dict[str, Histogram] = {n.label: Histogram() for n in topology.nodes}
        self.meter = meter
        self.contexts: list[StageContext] = [
            StageContext(n.label, settler, self.histograms[n.label], telemetry, self.meter)
            for n in topology.nodes
        ]
        for ctx in self.contexts:
            ctx.draining = self.is_draining
        self.queues: list[ChunkQueue] = []
        self.sources: list[Source[Any]] = []
        self.rates: Rates = Rates()
        self.crash: tuple[str, BaseException] | None = None
        self.started: float = trio.current_time()
        self.ended: float | None = None
        self.final: RunReport | None = None
        self.error: PipelineError | None = None
        self.done: trio.Event = trio.Event()
        self.outer: trio.CancelScope | None = None
        self.outlets: list[Outlet] = []
        self.draining: bool = False
        #: the sources' switch, closed while anyone holds it: handle.pause(), open breakers
        self.gate: Gate = Gate()
        self.holds: SourceHolds = SourceHolds(self.gate)
        for ctx in self.contexts:
            ctx.hold_sources = partial(self.holds.hold, f"breaker:{ctx.label}")

    def stop_sources(self) -> None:
        """Graceful drain: every source stops pulling (after the hand-over it is in, if any)."""
        self.draining = True
        for outlet in self.outlets:
            outlet.stop()

    def is_draining(self) -> bool:
        return self.draining

    def state(self) -> str:
        if self.ended is not None:
            return "stopped"
        return "draining" if self.draining else "running"

    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else trio.current_time()) - self.started

    def stage_stats(self, idx: int) -> StageStats:
        ctx = self.contexts[idx]
        queued = len(self.queues[idx]) if self.queues else 0
        return StageStats.of(
            ctx.histogram,
            busy=ctx.busy,
            workers=ctx.workers,
            failed=ctx.failed,
            in_flight=queued + ctx.active,
            queued=queued,
            capacity=self.topology.nodes[idx].buffer,
            breaker=describe_control(ctx.control),
        )

    def report(self) -> RunReport:
        s = self.settler
        elapsed = self.elapsed()
        self.meter.progress()
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
            stages={
                self.topology.nodes[i].label: self.stage_stats(i)
                for i in stage_order(self.topology)
            },
            dead_lettered=self.meter.dead_lettered,
            end_to_end=StageStats.of(self.meter.latency),
            sources=self.source_figures(),
            ack_errors=s.ack_errors,
            failure_handler_errors=s.failure_handler_errors,
        )

    def source_figures(self) -> dict[str, dict[str, float]]:
        figures: dict[str, dict[str, float]] = {}
        for source in self.sources:
            got = source_figures(source)
            if got:
                figures[source.label] = got
        return figures

    def snapshot(self) -> dict[str, Any]:
        report = self.report()
        order = stage_order(self.topology)
        stats = [report.stages[self.topology.nodes[i].label] for i in order]
        s = self.settler
        counters = (
            float(s.received),
            float(s.acked + s.failed),
            float(s.failed),
            *(float(st.count) for st in stats),
            *(st.busy for st in stats),
        )
        elapsed = report.elapsed
        rates = self.rates.update(trio.current_time(), counters)
        if rates is None:  # the first sample: means over the run so far
            rates = tuple(c / elapsed if elapsed > 0 else 0.0 for c in counters)
        k = len(stats)
        stages: list[dict[str, Any]] = []
        for i, (idx, st) in enumerate(zip(order, stats, strict=True)):
            node = self.topology.nodes[idx]
            stages.append(
                {
                    "id": f"s{i}",
                    "name": node.label,
                    "kind": stage_kind(node.stage),
                    "workers": st.workers,
                    "count": st.count,
                    "rate": rates[3 + i],
                    "busy": min(1.0, rates[3 + k + i] / max(1, st.workers)),
                    "in_flight": st.in_flight,
                    "queued": st.queued,
                    "capacity": st.capacity,
                    "fill": st.queued / st.capacity if st.capacity else 0.0,
                    "failed": st.failed,
                    "p50": st.p50,
                    "p95": st.p95,
                    "p99": st.p99,
                    "breaker": st.breaker,
                }
            )
        e2e = report.end_to_end
        return {
            "version": SNAPSHOT_VERSION,
            "state": self.state(),
            "elapsed": elapsed,
            "totals": {
                "received": report.received,
                "acked": report.acked,
                "failed": report.failed,
                "unsettled": report.unsettled,
                "retried": report.retried,
                "filtered": report.filtered,
                "dead_lettered": report.dead_lettered,
                "ack_errors": report.ack_errors,
                "failure_handler_errors": report.failure_handler_errors,
                "failed_by_reason": report.failed_by_reason,
                "ingest_rate": rates[0],
                "settle_rate": rates[1],
                "failure_rate": rates[2],
                "throughput": report.throughput,
            },
            "end_to_end": {"count": e2e.count, "p50": e2e.p50, "p95": e2e.p95, "p99": e2e.p99},
            "stages": stages,
            "sources": report.sources,
        }

    async def guard(self, label: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run one task; a crash is recorded and cancels the whole run.

        A task being cancelled may end with a group of ``Cancelled`` and the errors its cleanup
        raised (a stage function's nursery): the cancellation goes on up, and the errors are
        recorded like any crash. The first crash is the cause, except that a ``Fatal`` comes
        before anything else; errors raised while the run is already being torn down (by a crash,
        a drain past its deadline or a hard stop) are logged, not reported as the cause.
        """
        try:
            await fn()
        except BaseException as exc:
            error = strip_cancelled(exc)
            if error is None or not isinstance(error, Exception):
                raise
            group = group_of(exc)
            cancelled = group is not None and group.subgroup(trio.Cancelled) is not None
            self.record(label, error, cancelled=cancelled)
            if group is not None:
                _, rest = group.split(Exception)
                if rest is not None:
                    raise rest from None

    def record(self, label: str, error: Exception, *, cancelled: bool = False) -> None:
        """Note a crash of task ``label`` and cancel the run (see :meth:`guard`)."""
        assert self.outer is not None
        fatal = fatal_of(error)
        torn_down = cancelled or self.outer.cancel_called
        if (self.crash is None and not (torn_down and fatal is None)) or (
            fatal is not None and (self.crash is None or fatal_of(self.crash[1]) is None)
        ):
            self.crash = (label, error)
        else:
            logger.warning(
                "trioflow: %r raised while the pipeline was stopping: %r",
                label,
                error,
                exc_info=error,
            )
        self.outer.cancel()


@asynccontextmanager
async def _opened(source: Source[Any]) -> AsyncGenerator[Source[Any], None]:
    """Enter ``source.open()``; whatever it raises (opening, from a background task of its
    connection, or closing) becomes a :class:`PipelineError` naming the source.

    The run inside only ever ends with ``Cancelled`` (every task is guarded), so an error that
    comes out here is the source's own, even when it arrives in an exception group.
    """
    entered = False
    try:
        async with source.open() as opened:
            entered = True
            yield opened
    except BaseException as exc:
        error = strip_cancelled(exc)
        if error is None or not isinstance(error, Exception):
            raise
        if isinstance(error, PipelineError):
            raise error from None
        what = "failed" if entered else "could not open"
        raise PipelineError(source.label, f"source {source.label!r} {what}: {error!r}") from error


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
    tel = Telemetry(_instruments(telemetry))
    meter = Meter()
    handler = pipeline.failure_handler
    if handler is not None:
        handler = meter.failure_handler(handler, _on_dead_letter(tel))
    settler = meter.settler = Settler(handler, ACK_BUFFER)
    if tel.has_ack_error:
        settler.on_ack_error = lambda a, messages, exc: tel.emit("ack_error", a, messages, exc)
    if tel.has_failure_handler_error:
        settler.on_handler_error = lambda messages, exc: tel.emit(
            "failure_handler_error", messages, exc
        )
    run = _Run(topology, settler, tel, stop, meter)
    if tel.has_pipeline_start:
        tel.emit("pipeline_start", pipeline)

    queues = run.queues = [ChunkQueue(node.buffer, node.label) for node in topology.nodes]
    # a source alone hands straight to the end: let other tasks run once per hand-over there
    end = Terminal(settler, collect, run.meter, yields=topology.entry == TERMINAL)
    drop = Terminal(settler, None, run.meter)

    def target(idx: int) -> Emitter:
        return end if idx == TERMINAL else queues[idx]

    watcher = trio.CancelScope()
    sources_scope = trio.CancelScope()
    try:
        async with AsyncExitStack() as stack:
            sources: list[Source[Any]] = []
            for source in topology.sources:
                sources.append(await stack.enter_async_context(_opened(source)))
                run.sources = sources
            async with trio.open_nursery() as outer:
                run.outer = outer.cancel_scope
                outer.start_soon(
                    run.guard, "acknowledger", lambda: _ack_then_release(settler, tel, run, watcher)
                )
                if pipeline.failure_handler is not None:
                    outer.start_soon(run.guard, "on_failure", settler.run_failure_handler)
                if stop is not None:
                    outer.start_soon(
                        run.guard,
                        "drain",
                        lambda: _watch_stop(run, stop, drain_timeout, watcher, sources_scope),
                    )
                async with trio.open_nursery() as inner:
                    for idx, node in enumerate(topology.nodes):
                        ctx = run.contexts[idx]
                        ctx.spawn = partial(_spawn, inner, run, node.label, ctx)
                        for fn in _node_tasks(node, queues[idx], target, drop, ctx):
                            inner.start_soon(run.guard, node.label, bound(ctx, fn))
                    entry = target(topology.entry)
                    for _ in topology.sources:
                        entry.add_producer()
                    inner.start_soon(_run_sources, run, tuple(sources), entry, sources_scope)
                    task_status.started(PipelineHandle(run))
                settler.close()  # the acker ends the drain watch once the last ack is sent
    except PipelineError as error:  # a source's (see _opened)
        if run.crash is None:
            run.error = error
            raise
    finally:
        run.ended = trio.current_time()
        for ctx in run.contexts:  # the stages' nursery is closed: a resize starts no task now
            ctx.spawn = None
            if isinstance(ctx.control, Steering):
                ctx.control.end()
        run.done.set()  # waiters learn the outcome below, or that there is none (cancelled)
    if run.crash is not None:
        label, exc = run.crash
        cause = fatal_of(exc) or exc
        crash = PipelineError(label, f"stage {label!r} stopped the pipeline: {cause!r}")
        crash.__cause__ = cause
        run.error = crash
        raise crash
    run.final = report = run.report()
    if tel.has_pipeline_stop:
        tel.emit("pipeline_stop", report)
    return report


def _spawn(
    nursery: trio.Nursery,
    run: _Run,
    label: str,
    ctx: StageContext,
    fn: Callable[[], Awaitable[None]],
) -> None:
    """One more task of a stage (a resize that grows it), guarded like the others."""
    nursery.start_soon(run.guard, label, bound(ctx, fn))


async def _ack_then_release(
    settler: Settler, tel: Telemetry, run: _Run, watcher: trio.CancelScope
) -> None:
    # The drain deadline covers the final acks too: an acknowledger that hangs after the stages
    # are done is cut off by drain_timeout (its messages stay unsettled), not waited on forever.
    await settler.run_acker(_on_ack(tel, run.meter))
    watcher.cancel()


def _on_ack(tel: Telemetry, meter: Meter) -> Callable[[Any, int, int], None]:
    def on_ack(acknowledger: Any, ok: int, failed: int) -> None:
        meter.progress()
        if tel.has_ack:
            tel.emit("ack", acknowledger, ok, failed)

    return on_ack


def _on_dead_letter(tel: Telemetry) -> Callable[[int], None] | None:
    if not tel.has_dead_letter:
        return None
    return lambda count: tel.emit("dead_letter", count)


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
    if isinstance(stage, BatchStage):
        return _batch.tasks(node, inq, out, ctx)
    if isinstance(stage, Filter):
        return _transform.filter_tasks(node, inq, out, ctx)
    if isinstance(stage, FlatMap):
        return _transform.flat_map_tasks(node, inq, out, ctx)
    if isinstance(stage, RateLimit):
        return _rate_limit.tasks(node, inq, out, ctx)
    if isinstance(stage, Unbatch):
        return _transform.unbatch_tasks(node, inq, out, ctx)
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
                outlet = Outlet(MeteredEntry(entry, run.meter), run.settler)  # type: ignore[arg-type]
                outlet.gate = run.gate
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
        if run.telemetry.has_drain_start:
            run.telemetry.emit("drain_start")
        run.stop_sources()
        await trio.sleep(drain_timeout)
        # past the deadline: stop everything; what is in flight stays un-acked
        if run.telemetry.has_drain_expired:
            s = run.settler
            run.telemetry.emit("drain_expired", s.received - s.acked - s.failed)
        assert run.outer is not None
        run.outer.cancel()
