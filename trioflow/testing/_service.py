"""``check_service``: run a pipeline against a :class:`SimulatedBroker` through faults, and check.

What it asserts (each broken one is a :class:`ServiceViolation`, an ``AssertionError``):

1. **settled**: every message published before the check is settled in the group (acked,
   dead-lettered or discarded) before ``max_time`` virtual seconds;
2. **processed**: every message that is not to fail finished the pipeline's last stage at least
   once (and ``expect.processed(data)`` holds at the end, if given);
3. **no early ack**: no message is acked before its last stage finished for that delivery (and
   ``expect.processed(data)`` holds when the ack reaches the broker, if given);
4. **duplicates only from faults**: a message finished the last stage more than once only if it
   was in flight at a crash or a broker restart, or a fault delivered it twice;
5. **dead letters** (and discards) are exactly the messages ``expect`` names;
6. the pipeline never fails on its own (``PipelineError``).

The last stage is observed by wrapping it (a ``sink``/``process`` at the end, or at the end of
route branches): the wrapper sees each message's id and delivery count, calls the stage's function
as before, and records the delivery as finished when it returns.

A failing run is repeated on fresh copies of the broker with fault schedules one fault shorter
while it still fails the same way; the error names the seed and the shortest schedule found.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, final

import attrs
import trio
import trio.testing

from .._batches import Batch
from .._exceptions import PipelineError
from .._message import Message
from .._pipeline import Pipeline, compose
from .._report import RunReport
from .._stages import Process, Route, Stage
from .._validate import describe
from ._sim_faults import BrokerFault
from ._sim_source import SimulatedSource
from ._simulated import SimulatedBroker

__all__ = [
    "ServiceExpect",
    "ServiceResult",
    "ServiceViolation",
    "check_service",
    "check_service_async",
]

Matcher = Collection[Any] | Callable[[Any], bool]


def _matches(spec: Matcher, data: Any, mid: str) -> bool:
    if callable(spec) and not isinstance(spec, Collection):
        return bool(spec(data))
    return any(x in (mid, data) for x in spec)


@final
@attrs.frozen
class ServiceExpect:
    """What must become of the published messages.

    ``dead_letters``: the messages that must end in the dead-letter topic, and no others: a
    collection of their data (or ids), or a predicate of the data. ``discarded``: the same for
    messages failed with the ``"discard"`` action. ``processed``: optional, ``processed(data) ->
    bool`` says whether a message's effect is visible (its row in your fake database); it must
    hold when the message's ack reaches the broker, and at the end.

    A plain collection or predicate given as ``expect=`` means ``ServiceExpect(dead_letters=...)``.

    Example:
        >>> ServiceExpect(dead_letters=[b"not json"], processed=lambda data: data in saved)
    """

    dead_letters: Matcher = ()
    discarded: Matcher = ()
    processed: Callable[[Any], bool] | None = None


@final
@attrs.frozen
class BrokenInvariant:
    """One broken invariant: its name and what happened."""

    invariant: str
    detail: str


class ServiceViolation(AssertionError):
    """``check_service`` found a run that breaks an invariant.

    Attributes: ``violations`` (the broken invariants of the shortest failing run), ``seed``,
    ``faults`` (the shortest fault schedule found that still fails) and ``original`` (the
    schedule given).
    """

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[BrokenInvariant],
        seed: int,
        faults: Sequence[BrokerFault],
        original: Sequence[BrokerFault],
    ) -> None:
        super().__init__(message)
        self.violations = list(violations)
        self.seed = seed
        self.faults = list(faults)
        self.original = list(original)


@final
@attrs.frozen
class ServiceResult:
    """What :func:`check_service` observed in a run that passed.

    Example:
        >>> result = check_service(build, broker, "orders", expect=[])
        >>> result.deliveries, result.duplicates
        (12, 2)
    """

    seed: int
    faults: tuple[BrokerFault, ...]
    published: int
    acked: int
    dead_lettered: int
    discarded: int
    deliveries: int
    #: messages whose last stage finished more than once (all explained by a fault)
    duplicates: int
    crashes: int
    elapsed: float
    reports: tuple[RunReport, ...]
    log: tuple[tuple[float, str, str], ...]


# -- observing the last stage ----------------------------------------------------------------

Recorder = Callable[[Message[Any]], None]


def _wrap_process(stage: Process[Any, Any], record: Recorder) -> Process[Any, Any] | None:
    if stage.parallel:
        return None
    fn, own_messages, thread = stage.fn, stage.messages, stage.thread

    async def observed(item: Any) -> Any:
        msgs: list[Message[Any]] = list(item) if isinstance(item, Batch) else [item]
        if own_messages:
            arg = item
        elif isinstance(item, Batch):
            arg = Batch([m.data for m in item], item.info)
        else:
            arg = item.data
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
        if isinstance(result, Message):
            if not result.failed:
                record(result)
        elif isinstance(result, list):
            for m in result:
                if isinstance(m, Message) and not m.failed:
                    record(m)
        return result

    observed.__name__ = getattr(fn, "__name__", "stage")
    observed.__qualname__ = getattr(fn, "__qualname__", observed.__name__)
    return attrs.evolve(stage, fn=observed, messages=True, thread=False, terminal=True)


def _wrap_last(stages: tuple[Stage[Any, Any], ...], record: Recorder) -> tuple[Any, bool]:
    last = stages[-1]
    if isinstance(last, Process):
        wrapped = _wrap_process(last, record)
        if wrapped is None:
            return stages, False
        return (*stages[:-1], wrapped), True
    if isinstance(last, Route):
        branches = []
        ok = True
        for key, branch in last.branches:
            inner, branch_ok = _wrap_last(branch.stages, record)
            ok = ok and branch_ok
            branches.append((key, attrs.evolve(branch, stages=inner)))
        return (*stages[:-1], attrs.evolve(last, branches=dict(branches))), ok
    return stages, False


def observe_last_stage(pipeline: Pipeline, record: Recorder) -> tuple[Pipeline, bool]:
    """``pipeline`` with its last stage wrapped to call ``record(message)`` for each message
    that finished it; and whether that was possible (a last ``process``/``sink``, or a route
    whose branches all end in one)."""
    stages, ok = _wrap_last(pipeline.stages, record)
    if not ok:
        return pipeline, False
    return attrs.evolve(pipeline, stages=stages), True


# -- one run -------------------------------------------------------------------------------------


@final
class _Run:
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
        if meta.get("topic") != self.topic or "id" not in meta:
            return
        key = (meta["id"], meta["delivery_count"])
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


async def _run_once(
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
) -> tuple[_Run, ServiceResult]:
    published = broker.messages(topic)
    start = trio.current_time()
    run = _Run(broker, topic, expect, True)
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
        pipeline = built if isinstance(built, Pipeline) else compose(built, None)
        wrapped, ok = observe_last_stage(pipeline, run.record)
        run.observed = run.observed and ok
        return wrapped

    async def consumer_task(consumer: str) -> None:
        while not stop.is_set():
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
                await trio.sleep(restart_delay)  # a supervisor starting the process again
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


def _finish_counts(run: _Run) -> Counter[str]:
    return Counter(mid for mid, _ in run.finished)


def _final_checks(
    run: _Run, broker: SimulatedBroker, topic: str, group: str, published: Sequence[Any]
) -> None:
    expect = run.expect
    finishes = _finish_counts(run)
    dead_counts = Counter(str(d.headers.get("original_id")) for d in broker.dead_letters(topic))
    for p in published:
        outcome = broker.outcome(topic, group, p.id)
        want_dead = _matches(expect.dead_letters, p.data, p.id)
        want_discard = _matches(expect.discarded, p.data, p.id)
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
            why = (
                f"its lease expired (visibility_timeout={broker.visibility_timeout:g} s) while it "
                "was still in flight"
                if (topic, p.id) in broker.expired
                else "it was not in flight at a crash or a restart"
            )
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


# -- the entry points ----------------------------------------------------------------------------


def _expect_of(expect: Any) -> ServiceExpect:
    if isinstance(expect, ServiceExpect):
        return expect
    if callable(expect) or isinstance(expect, Collection):
        return ServiceExpect(dead_letters=expect)
    raise TypeError(
        f"check_service: expect={describe(expect)} must be a ServiceExpect, a collection of "
        "the data (or ids) to dead-letter, or a predicate of the data"
    )


def _seed_trio(seed: int) -> Any:
    """Seed trio's scheduler choices for one run; return the state to restore."""
    run_module: Any = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(run_module, "_r", None)
    if rng is None:  # pragma: no cover - trio moved it: runs are only less reproducible
        return None
    state = rng.getstate()
    rng.seed(seed)
    return state


def _restore_trio(state: Any) -> None:
    if state is not None:
        trio._core._run._r.setstate(state)


def _describe_faults(faults: Sequence[BrokerFault]) -> str:
    return "[" + ", ".join(repr(f) for f in faults) + "]"


def _format(
    violations: Sequence[BrokenInvariant],
    seed: int,
    topic: str,
    faults: Sequence[BrokerFault],
    original: Sequence[BrokerFault],
    options: str,
) -> str:
    lines = ["check_service: the service broke an invariant"]
    for v in violations[:10]:
        lines.append(f"  [{v.invariant}] {v.detail}")
    if len(violations) > 10:
        lines.append(f"  ... and {len(violations) - 10} more")
    lines.append(f"  seed: {seed}")
    lines.append(
        f"  shortest fault schedule ({len(faults)} of {len(original)} fault(s)): "
        f"{_describe_faults(faults)}"
    )
    lines.append(
        f"  reproduce: check_service(build, <the same broker: SimulatedBroker(seed={seed}) "
        f"with the same messages>, {topic!r}, expect=..., faults={_describe_faults(faults)}"
        f"{options})"
    )
    return "\n".join(lines)


class _Checker:
    """Runs attempts (a fresh copy of the broker each) and shrinks a failing schedule."""

    def __init__(
        self,
        build: Callable[[SimulatedSource], Any],
        pristine: SimulatedBroker,
        topic: str,
        expect: ServiceExpect,
        options: dict[str, Any],
    ) -> None:
        self.build = build
        self.pristine = pristine
        self.topic = topic
        self.expect = expect
        self.options = options

    def kinds(self, run: _Run) -> set[str]:
        return {v.invariant for v in run.violations}

    def shrink(
        self,
        faults: list[BrokerFault],
        kinds: set[str],
        attempt: Callable[[list[BrokerFault]], _Run],
    ) -> tuple[list[BrokerFault], _Run | None]:
        budget = 64

        def fails(candidate: list[BrokerFault]) -> _Run | None:
            nonlocal budget
            if budget <= 0:
                return None
            budget -= 1
            run = attempt(candidate)
            return run if self.kinds(run) & kinds else None

        best: _Run | None = None
        if faults:
            empty = fails([])
            if empty is not None:
                return [], empty
        current = list(faults)
        changed = True
        while changed and budget > 0:
            changed = False
            for i in range(len(current)):
                candidate = current[:i] + current[i + 1 :]
                found = fails(candidate)
                if found is not None:
                    current, best, changed = candidate, found, True
                    break
        return current, best


def _options_text(options: dict[str, Any]) -> str:
    shown = {k: v for k, v in options.items() if v != _DEFAULTS.get(k)}
    return "".join(f", {k}={v!r}" for k, v in shown.items())


_DEFAULTS: dict[str, Any] = {
    "group": "service",
    "consumers": 1,
    "source_options": None,
    "restart_delay": 1.0,
    "max_time": 3600.0,
}


def check_service(
    build: Callable[[SimulatedSource], Any],
    broker: SimulatedBroker,
    topic: str,
    *,
    expect: ServiceExpect | Matcher,
    faults: Iterable[BrokerFault] | None = None,
    group: str = "service",
    consumers: int | Sequence[str] = 1,
    source_options: dict[str, Any] | None = None,
    restart_delay: float = 1.0,
    max_time: float = 3600.0,
    shrink: bool = True,
) -> ServiceResult:
    """Run the service that ``build`` makes on ``broker``'s ``topic`` through ``faults``, and
    assert that nothing is lost, acked early, duplicated without cause, or dead-lettered wrongly.

    ``build(source)`` returns the pipeline of one consumer (its source is a
    :class:`SimulatedSource` of ``topic`` in ``group``; ``source_options`` are passed to it).
    ``consumers`` (a number, or names; default one, ``"c0"``) run at once; a crashed one is
    started again after ``restart_delay`` seconds with a fresh pipeline from ``build``. The run
    ends (every pipeline drained gracefully) once every message published before the call is
    settled, or after ``max_time`` virtual seconds. ``faults`` is a fault schedule
    (:class:`CrashConsumer`, :class:`DuplicateDelivery`, :class:`RestartBroker`,
    :class:`DelayAcks`, :class:`SlowPartition`; the strategy :func:`fault_schedules` draws
    them). ``expect`` says which messages must end dead-lettered (see :class:`ServiceExpect`).

    Runs in a fresh ``trio.run`` with ``MockClock(autojump_threshold=0)`` and trio's scheduler
    seeded with the broker's seed, so a seed and a schedule replay the same run. On a broken
    invariant it runs fresh copies of the broker with shorter schedules (``shrink=False``: not),
    and raises :class:`ServiceViolation` naming the invariants, the seed and the shortest
    schedule that still fails. Inside a trio test use :func:`check_service_async`.

    Example:
        >>> broker = SimulatedBroker(seed=3)
        >>> for i in range(20):
        ...     broker.publish("orders", i)
        >>> check_service(
        ...     lambda src: src | tf.batch(5, 1.0) | tf.sink(save),
        ...     broker,
        ...     "orders",
        ...     expect=[],
        ...     faults=[CrashConsumer("c0", after=7)],
        ... )
    """
    given = list(faults or [])
    schedule = broker.resolve(given, topic=topic)
    exp = _expect_of(expect)
    names = _names(consumers)
    options = {
        "group": group,
        "consumers": consumers,
        "source_options": source_options,
        "restart_delay": restart_delay,
        "max_time": max_time,
    }
    pristine = broker.clone()
    checker = _Checker(build, pristine, topic, exp, options)

    def attempt_on(target: SimulatedBroker, sched: list[BrokerFault]) -> tuple[_Run, ServiceResult]:
        async def main() -> tuple[_Run, ServiceResult]:
            return await _run_once(
                build,
                target,
                topic,
                exp,
                sched,
                group=group,
                consumers=names,
                source_options=dict(source_options or {}),
                restart_delay=restart_delay,
                max_time=max_time,
            )

        state = _seed_trio(target.seed)
        try:
            return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            _restore_trio(state)

    run, result = attempt_on(broker, schedule)
    if not run.violations:
        return result
    shortest, found = schedule, run
    if shrink and schedule:
        smaller, best = checker.shrink(
            schedule, checker.kinds(run), lambda s: attempt_on(pristine.clone(), s)[0]
        )
        if best is not None:
            shortest, found = smaller, best
    raise ServiceViolation(
        _format(found.violations, broker.seed, topic, shortest, schedule, _options_text(options)),
        violations=found.violations,
        seed=broker.seed,
        faults=shortest,
        original=given,
    )


async def check_service_async(
    build: Callable[[SimulatedSource], Any],
    broker: SimulatedBroker,
    topic: str,
    *,
    expect: ServiceExpect | Matcher,
    faults: Iterable[BrokerFault] | None = None,
    group: str = "service",
    consumers: int | Sequence[str] = 1,
    source_options: dict[str, Any] | None = None,
    restart_delay: float = 1.0,
    max_time: float = 3600.0,
    shrink: bool = True,
) -> ServiceResult:
    """:func:`check_service` inside a running trio program whose clock is a ``MockClock``
    (pytest-trio's ``autojump_clock``); shorter schedules run one after another in it.

    Example:
        >>> async def test_orders(autojump_clock):
        ...     await check_service_async(build, broker, "orders", expect=[b"bad"])
    """
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        raise RuntimeError(
            "check_service_async needs a trio.testing.MockClock (use the autojump_clock fixture, "
            "or call check_service from a sync test)"
        )
    given = list(faults or [])
    schedule = broker.resolve(given, topic=topic)
    exp = _expect_of(expect)
    names = _names(consumers)
    options = {
        "group": group,
        "consumers": consumers,
        "source_options": source_options,
        "restart_delay": restart_delay,
        "max_time": max_time,
    }
    pristine = broker.clone()

    async def attempt_on(
        target: SimulatedBroker, sched: list[BrokerFault]
    ) -> tuple[_Run, ServiceResult]:
        return await _run_once(
            build,
            target,
            topic,
            exp,
            sched,
            group=group,
            consumers=names,
            source_options=dict(source_options or {}),
            restart_delay=restart_delay,
            max_time=max_time,
        )

    run, result = await attempt_on(broker, schedule)
    if not run.violations:
        return result
    shortest, found = schedule, run
    if shrink and schedule:
        kinds = {v.invariant for v in run.violations}
        current = list(schedule)
        best: _Run | None = None
        empty, _ = await attempt_on(pristine.clone(), [])
        if {v.invariant for v in empty.violations} & kinds:
            current, best = [], empty
        changed = bool(current)
        while changed:
            changed = False
            for i in range(len(current)):
                candidate = current[:i] + current[i + 1 :]
                tried, _ = await attempt_on(pristine.clone(), candidate)
                if {v.invariant for v in tried.violations} & kinds:
                    current, best, changed = candidate, tried, True
                    break
        if best is not None:
            shortest, found = current, best
    raise ServiceViolation(
        _format(found.violations, broker.seed, topic, shortest, schedule, _options_text(options)),
        violations=found.violations,
        seed=broker.seed,
        faults=shortest,
        original=given,
    )


def _names(consumers: int | Sequence[str]) -> list[str]:
    if isinstance(consumers, int):
        if consumers < 1:
            raise ValueError(f"consumers={consumers!r} must be a positive integer or names")
        return [f"c{i}" for i in range(consumers)]
    names = list(consumers)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"consumers={consumers!r} must be distinct names, at least one")
    return names
