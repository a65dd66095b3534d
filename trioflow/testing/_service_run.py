"""One run of ``check_service``: the last stage observed, the consumers run through the faults
and restarted after crashes, and the invariants checked at the end (see :mod:`._service`)."""

from __future__ import annotations

# pyright: reportPrivateUsage=false
# (a collaborator of SimulatedBroker: it reads the broker's private state)
import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast, final

import attrs
import trio

from .._batches import Batch
from .._exceptions import PipelineError
from .._message import Message, is_message
from .._pipeline import Pipeline, compose, is_pipeline
from .._report import RunReport
from .._stages import Process, Route, Stage
from .._validate import describe
from ._service_types import BrokenInvariant, ServiceExpect, ServiceResult, matches
from ._sim_faults import BrokerFault
from ._sim_source import SimulatedSource
from ._simulated import SimulatedBroker

__all__ = ["ServiceRun", "observe_last_stage", "run_once", "unobservable"]

Recorder = Callable[[Message[Any]], None]


def _wrap_process(stage: Process[Any, Any], record: Recorder) -> Process[Any, Any] | None:
    if stage.parallel:
        return None
    fn, own_messages, thread = stage.fn, stage.messages, stage.thread

    async def observed(item: Any) -> Any:
        msgs: list[Message[Any]]
        arg: Any
        if isinstance(item, Batch):
            batch = cast("Batch[Message[Any]]", item)
            msgs = list(batch)
            arg = batch if own_messages else Batch([m.data for m in msgs], batch.info)
        else:
            msgs = [item]
            arg = item if own_messages else item.data
        if thread:
            result = await trio.to_thread.run_sync(fn, arg)
        else:
            result = fn(arg)
            if inspect.isawaitable(result):
                result = await result
        if not own_messages or result is None:
            for m in msgs:
                record(m)
            return None
        _record_outputs(result, record)
        return result

    observed.__name__ = getattr(fn, "__name__", "stage")
    observed.__qualname__ = getattr(fn, "__qualname__", observed.__name__)
    return attrs.evolve(stage, fn=observed, messages=True, thread=False, terminal=True)


def _record_outputs(result: object, record: Recorder) -> None:
    """Record the messages a stage with ``messages=True`` returned, but the failed ones."""
    if is_message(result):
        if not result.failed:
            record(result)
    elif isinstance(result, list):
        for out in cast("list[object]", result):
            if is_message(out) and not out.failed:
                record(out)


def _wrap_last(
    stages: tuple[Stage[Any, Any], ...], record: Recorder
) -> tuple[tuple[Stage[Any, Any], ...], Stage[Any, Any] | None]:
    """The stages with the last one wrapped, and the stage that could not be (None: all
    were)."""
    last = stages[-1]
    if isinstance(last, Process):
        wrapped = _wrap_process(last, record)
        if wrapped is None:
            return stages, last
        return (*stages[:-1], wrapped), None
    if isinstance(last, Route):
        branches: list[tuple[Any, Any]] = []
        for key, branch in last.branches:
            inner, blocked = _wrap_last(branch.stages, record)
            if blocked is not None:
                return stages, blocked
            branches.append((key, attrs.evolve(branch, stages=inner)))
        return (*stages[:-1], attrs.evolve(last, branches=dict(branches))), None
    return stages, last


def observe_last_stage(
    pipeline: Pipeline, record: Recorder
) -> tuple[Pipeline, Stage[Any, Any] | None]:
    """``pipeline`` with its last stage wrapped to call ``record(message)`` for each message
    that finished it, and ``None``; or ``pipeline`` unchanged and the last stage that cannot be
    observed (only a ``process``/``sink`` that is not ``parallel`` can, or a route whose
    branches all end in one)."""
    stages, blocked = _wrap_last(pipeline.stages, record)
    if blocked is not None:
        return pipeline, blocked
    return attrs.evolve(pipeline, stages=stages), None


def unobservable(stage: Stage[Any, Any]) -> ValueError:
    """The error for a pipeline whose last stage ``check_service`` cannot observe."""
    return ValueError(
        f"check_service: the pipeline's last stage, {stage!r}, cannot be observed (only a "
        "process or sink that is not parallel can, or a route whose branches each end in "
        "one), so the checks 'no early ack' and 'processed' would be skipped: end the "
        "pipeline in a sink, or pass observe=False to run without those two checks"
    )


# -- one run -------------------------------------------------------------------------------------


@final
class ServiceRun:
    """The bookkeeping of one run of the service through one fault schedule."""

    def __init__(
        self, broker: SimulatedBroker, topic: str, expect: ServiceExpect, observed: bool
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.expect = expect
        self.observed = observed
        #: (message id, delivery count) -> when its last stage finished
        self.finished: dict[tuple[str, int], float] = {}
        self.violations: list[BrokenInvariant] = []
        self.reports: list[RunReport] = []
        self.crashes = 0

    def violate(self, invariant: str, detail: str) -> None:
        self.violations.append(BrokenInvariant(invariant, detail))

    def record(self, message: Message[Any]) -> None:
        meta = message.metadata
        # a SimulatedSource names the topic; a real connector on a simulated client the stream
        # (Redis) or the queue (RabbitMQ), and the id (``message_id`` for RabbitMQ)
        topic = meta.get("topic", meta.get("stream", meta.get("queue")))
        ident = meta.get("id", meta.get("message_id"))
        if topic != self.topic or ident is None:
            return
        mid: str = self.broker._aliases.get((str(topic), str(ident)), str(ident))
        key = (mid, meta["delivery_count"])
        self.finished.setdefault(key, trio.current_time())

    def on_ack(
        self, topic: str, mid: str, count: int, consumer: str, data: Any, stale: bool
    ) -> None:
        if topic != self.topic:
            return
        now = trio.current_time()
        if self.observed and (mid, count) not in self.finished:
            self.violate(
                "no early ack",
                f"message {mid} ({describe(data)}) delivery {count} was acked by {consumer} at "
                f"t={now:g} before its last stage finished",
            )
        elif self.expect.processed is not None and not self.expect.processed(data):
            self.violate(
                "no early ack",
                f"message {mid} ({describe(data)}) delivery {count} was acked by {consumer} at "
                f"t={now:g} while expect.processed(data) is False",
            )


async def run_once(
    build: Callable[[SimulatedSource], Any],
    broker: SimulatedBroker,
    topic: str,
    expect: ServiceExpect,
    faults: Sequence[BrokerFault],
    *,
    group: str,
    consumers: Sequence[str],
    source_options: dict[str, Any],
    restart_delay: float,
    max_time: float,
    observe: bool,
) -> tuple[ServiceRun, ServiceResult]:
    """Run the service once on ``broker`` through ``faults``; check it (raises ``ValueError``
    if ``observe`` and the last stage cannot be observed)."""
    published = broker.messages(topic)
    start = trio.current_time()
    run = ServiceRun(broker, topic, expect, observe)
    stop = trio.Event()
    scopes: dict[str, trio.CancelScope] = {}
    crashed: set[str] = set()

    def on_crash(gname: str, consumer: str) -> None:
        if gname == group and consumer in scopes:
            crashed.add(consumer)
            run.crashes += 1
            scopes[consumer].cancel()

    def make(consumer: str) -> Pipeline:
        source = broker.source(topic, group, consumer, **source_options)
        built = build(source)
        pipeline: Pipeline = built if is_pipeline(built) else compose(built, None)
        if not observe:
            return pipeline
        wrapped, blocked = observe_last_stage(pipeline, run.record)
        if blocked is not None:
            raise unobservable(blocked)
        return wrapped

    first = {consumer: make(consumer) for consumer in consumers}  # errors before any task

    async def consumer_task(consumer: str) -> None:
        while not stop.is_set():
            pipeline = first.pop(consumer, None)
            if pipeline is None:
                pipeline = make(consumer)
            with trio.CancelScope() as scope:
                scopes[consumer] = scope
                try:
                    run.reports.append(await pipeline.run(stop=stop))
                except PipelineError as exc:
                    if consumer not in crashed:
                        run.violate(
                            "pipeline ran",
                            f"consumer {consumer} failed: {exc!r} ({exc.__cause__!r})",
                        )
                        stop.set()
                        return
            if consumer in crashed:
                crashed.discard(consumer)
                with trio.move_on_after(restart_delay):  # a supervisor starts it again
                    await stop.wait()
            elif not stop.is_set():
                return  # the source ended on its own (it does not, unless crashed)

    broker.ack_observers.append(run.on_ack)
    broker.crash_observers.append(on_crash)
    try:
        with trio.CancelScope() as guard:
            async with trio.open_nursery() as nursery:
                for consumer in consumers:
                    nursery.start_soon(consumer_task, consumer)
                broker.schedule(faults, topic=topic)
                with trio.move_on_after(max_time):
                    while broker.busy(topic, group) and not run.violations:
                        await broker._wait(topic, group)
                left = broker.unsettled(topic, group)
                if left and not run.violations:
                    run.violate(
                        "settled",
                        f"{len(left)} message(s) not settled after {max_time:g} s: "
                        f"{', '.join(left[:8])}",
                    )
                stop.set()  # every consumer drains gracefully, and its task ends
                guard.deadline = trio.current_time() + max_time
        if guard.cancelled_caught:
            run.violate("settled", f"the consumers did not drain within {max_time:g} s")
    finally:
        broker.ack_observers.remove(run.on_ack)
        broker.crash_observers.remove(on_crash)
    _final_checks(run, broker, topic, group, published)
    dead = list(broker.dead_letters(topic))
    outcomes = Counter(broker.outcome(topic, group, p.id) for p in published)
    result = ServiceResult(
        seed=broker.seed,
        faults=tuple(faults),
        published=len(published),
        acked=outcomes["acked"],
        dead_lettered=len(dead),
        discarded=outcomes["discard"],
        deliveries=broker.deliveries,
        duplicates=sum(1 for c in _finish_counts(run).values() if c > 1),
        crashes=run.crashes,
        elapsed=trio.current_time() - start,
        reports=tuple(run.reports),
        log=tuple(broker.log),
    )
    return run, result


def _finish_counts(run: ServiceRun) -> Counter[str]:
    return Counter(mid for mid, _ in run.finished)


def _final_checks(
    run: ServiceRun, broker: SimulatedBroker, topic: str, group: str, published: Sequence[Any]
) -> None:
    expect = run.expect
    finishes = _finish_counts(run)
    dead_counts = Counter(str(d.headers.get("original_id")) for d in broker.dead_letters(topic))
    for p in published:
        outcome = broker.outcome(topic, group, p.id)
        want_dead = matches(expect.dead_letters, p.data, p.id)
        want_discard = matches(expect.discarded, p.data, p.id)
        what = f"message {p.id} ({describe(p.data)})"
        if outcome is None:
            continue  # reported by "settled"
        if want_dead and outcome != "dead_letter":
            run.violate("dead letters", f"{what} must be dead-lettered, but was {outcome}")
        elif want_discard and outcome != "discard":
            run.violate("dead letters", f"{what} must be discarded, but was {outcome}")
        elif not want_dead and outcome == "dead_letter":
            run.violate(
                "dead letters",
                f"{what} was dead-lettered ({_dead_reason(broker, topic, p.id)}) but expect "
                "does not name it",
            )
        elif not want_discard and outcome == "discard":
            run.violate("dead letters", f"{what} was discarded but expect does not name it")
        if outcome == "acked":
            if run.observed and finishes[p.id] == 0:
                run.violate("processed", f"{what} was acked but never finished the last stage")
            elif expect.processed is not None and not expect.processed(p.data):
                run.violate("processed", f"{what} was acked but expect.processed(data) is False")
        explained = (topic, p.id) in broker.in_flight_at_fault or (topic, p.id) in broker.duplicated
        if finishes[p.id] > 1 and not explained:
            if (topic, p.id) in broker.expired:
                why = (
                    f"its lease expired (visibility_timeout={broker.visibility_timeout:g} s) "
                    "while it was still in flight"
                )
            elif (topic, p.id) in broker.claimed_in_flight:
                why = (
                    "another consumer claimed it while it was still in flight (it was idle "
                    "longer than the source's claim_idle)"
                )
            else:
                why = "it was not in flight at a crash or a restart"

            run.violate(
                "duplicates",
                f"{what} finished the last stage {finishes[p.id]} times, but {why}",
            )
        if dead_counts[p.id] > 1 and not explained:
            run.violate("dead letters", f"{what} was dead-lettered {dead_counts[p.id]} times")


def _dead_reason(broker: SimulatedBroker, topic: str, mid: str) -> str:
    for d in broker.dead_letters(topic):
        if d.headers.get("original_id") == mid:
            return f"reason: {d.headers.get('reason')}"
    return "no dead-letter entry"
