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
as before, and records the delivery as finished when it returns. A last stage that cannot be
wrapped (a ``parallel`` one, a ``filter``, a ``batch``) is an error, unless ``observe=False``
drops checks 2 and 3 on purpose.

A failing run is repeated on fresh copies of the broker with fault schedules one fault shorter
while it still fails the same way; the error names the seed and the shortest schedule found.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection, Generator, Iterable, Sequence
from typing import Any, TypeVar, cast

import trio
import trio.testing

from .._validate import describe
from ._service_run import ServiceRun, run_once
from ._service_types import (
    BrokenInvariant,
    Matcher,
    ServiceExpect,
    ServiceResult,
    ServiceViolation,
)
from ._sim_faults import BrokerFault
from ._sim_source import SimulatedSource
from ._simulated import SimulatedBroker

__all__ = [
    "BrokenInvariant",
    "ServiceExpect",
    "ServiceResult",
    "ServiceViolation",
    "check_service",
    "check_service_async",
]

#: most runs one shrink may make (each is a whole run of the service)
SHRINK_ATTEMPTS = 64

T = TypeVar("T")


def _expect_of(expect: Any) -> ServiceExpect:
    if isinstance(expect, ServiceExpect):
        return expect
    if callable(expect) or isinstance(expect, Collection):
        return ServiceExpect(dead_letters=cast(Matcher, expect))
    raise TypeError(
        f"check_service: expect={describe(expect)} must be a ServiceExpect, a collection of "
        "the data (or ids) to dead-letter, or a predicate of the data"
    )


def _trio_rng() -> Any:
    """The ``random.Random`` behind trio's scheduler choices (None if trio moved it)."""
    run_module: Any = getattr(getattr(trio, "_core", None), "_run", None)
    return getattr(run_module, "_r", None)


def _seed_trio(seed: int) -> Any:
    """Seed trio's scheduler choices and the ``random`` module (jittered backoffs) for one
    run; return the state to restore."""
    rng = _trio_rng()
    state = (None if rng is None else rng.getstate(), random.getstate())
    if rng is not None:  # else trio moved it: runs are only less reproducible
        rng.seed(seed)
    random.seed(seed)
    return state


def _restore_trio(state: Any) -> None:
    trio_state, random_state = state
    if trio_state is not None:
        _trio_rng().setstate(trio_state)
    random.setstate(random_state)


def _describe_faults(faults: Sequence[BrokerFault]) -> str:
    return "[" + ", ".join(repr(f) for f in faults) + "]"


def _names(consumers: int | Sequence[str]) -> list[str]:
    if isinstance(consumers, int):
        if consumers < 1:
            raise ValueError(f"consumers={consumers!r} must be a positive integer or names")
        return [f"c{i}" for i in range(consumers)]
    names = list(consumers)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"consumers={consumers!r} must be distinct names, at least one")
    return names


_DEFAULTS: dict[str, Any] = {
    "group": "service",
    "consumers": 1,
    "source_options": None,
    "restart_delay": 1.0,
    "max_time": 3600.0,
    "observe": True,
}

Attempt = tuple[ServiceRun, ServiceResult]


class _Check:
    """One call of check_service: its arguments, and the steps of the check as a generator
    that yields ``(broker, schedule)`` to run and receives each run's outcome, so that the sync
    and async entry points drive the same steps (one attempt in a fresh ``trio.run`` each, or
    awaited in the caller's run)."""

    def __init__(
        self,
        build: Callable[[SimulatedSource], Any],
        broker: SimulatedBroker,
        topic: str,
        expect: Any,
        faults: Iterable[BrokerFault] | None,
        options: dict[str, Any],
        shrink: bool,
    ) -> None:
        self.build = build
        self.broker = broker
        self.topic = topic
        self.expect = _expect_of(expect)
        self.given = list(faults or [])
        self.schedule = broker.resolve(self.given, topic=topic)
        self.options = options
        self.names = _names(options["consumers"])
        self.shrink = shrink
        self.pristine = broker.clone()

    async def attempt(self, broker: SimulatedBroker, schedule: list[BrokerFault]) -> Attempt:
        o = self.options
        return await run_once(
            self.build,
            broker,
            self.topic,
            self.expect,
            schedule,
            group=o["group"],
            consumers=self.names,
            source_options=dict(o["source_options"] or {}),
            restart_delay=o["restart_delay"],
            max_time=o["max_time"],
            observe=o["observe"],
        )

    def steps(
        self,
    ) -> Generator[tuple[SimulatedBroker, list[BrokerFault]], Attempt, ServiceResult]:
        """Run on the broker given; on a violation, shrink on fresh copies, then raise."""
        run, result = yield self.broker, self.schedule
        if not run.violations:
            return result
        kinds = {v.invariant for v in run.violations}
        shortest, found = self.schedule, run
        if self.shrink and self.schedule:
            budget = SHRINK_ATTEMPTS
            current = list(self.schedule)

            def one_fewer() -> list[list[BrokerFault]]:
                return [current[:i] + current[i + 1 :] for i in range(len(current))]

            # the empty schedule first, then one fault fewer at a time while it still fails
            candidates: list[list[BrokerFault]] = [[]]
            probe = True
            while candidates and budget > 0:
                candidate = candidates.pop(0)
                budget -= 1
                tried, _ = yield self.pristine.clone(), candidate
                if {v.invariant for v in tried.violations} & kinds:
                    current, found, shortest = candidate, tried, candidate
                    candidates = one_fewer()
                elif probe:
                    candidates = one_fewer()
                probe = False
        raise self.violation(found.violations, shortest)

    def violation(
        self, violations: Sequence[BrokenInvariant], shortest: Sequence[BrokerFault]
    ) -> ServiceViolation:
        seed = self.broker.seed
        shown = {k: v for k, v in self.options.items() if v != _DEFAULTS.get(k)}
        options = "".join(f", {k}={v!r}" for k, v in shown.items())
        lines = ["check_service: the service broke an invariant"]
        for v in violations[:10]:
            lines.append(f"  [{v.invariant}] {v.detail}")
        if len(violations) > 10:
            lines.append(f"  ... and {len(violations) - 10} more")
        lines.append(f"  seed: {seed}")
        lines.append(
            f"  shortest fault schedule ({len(shortest)} of {len(self.schedule)} fault(s)): "
            f"{_describe_faults(shortest)}"
        )
        lines.append(
            f"  reproduce: check_service(build, <the same broker: SimulatedBroker(seed={seed}) "
            f"with the same messages>, {self.topic!r}, expect=..., "
            f"faults={_describe_faults(shortest)}{options})"
        )
        return ServiceViolation(
            "\n".join(lines),
            violations=violations,
            seed=seed,
            faults=shortest,
            original=self.given,
        )


def _drive(
    steps: Generator[tuple[SimulatedBroker, list[BrokerFault]], Attempt, T],
    run: Callable[[SimulatedBroker, list[BrokerFault]], Attempt],
) -> T:
    try:
        broker, schedule = next(steps)
        while True:
            broker, schedule = steps.send(run(broker, schedule))
    except StopIteration as done:
        value: T = done.value
        return value


async def _drive_async(
    steps: Generator[tuple[SimulatedBroker, list[BrokerFault]], Attempt, T],
    run: Callable[[SimulatedBroker, list[BrokerFault]], Awaitable[Attempt]],
) -> T:
    try:
        broker, schedule = next(steps)
        while True:
            broker, schedule = steps.send(await run(broker, schedule))
    except StopIteration as done:
        value: T = done.value
        return value


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
    observe: bool = True,
) -> ServiceResult:
    """Run the service that ``build`` makes on ``broker``'s ``topic`` through ``faults``, and
    assert that nothing is lost, acked early, duplicated without cause, or dead-lettered wrongly.

    ``build(source)`` returns the pipeline of one consumer (its source is a
    :class:`SimulatedSource` of ``topic`` in ``group``; ``source_options`` are passed to it; a
    real connector on a simulated client, such as ``RedisStreamSource(source.topic,
    source.group, source.consumer, client=SimulatedRedis(source.broker))``, works too).
    ``consumers`` (a number, or names; default one, ``"c0"``) run at once; a crashed one is
    started again after ``restart_delay`` seconds with a fresh pipeline from ``build``. The run
    ends (every pipeline drained gracefully) once every message published before the call is
    settled, or after ``max_time`` virtual seconds. ``faults`` is a fault schedule
    (:class:`CrashConsumer`, :class:`DuplicateDelivery`, :class:`RestartBroker`,
    :class:`DelayAcks`, :class:`SlowPartition`; the strategy :func:`fault_schedules` draws
    them). ``expect`` says which messages must end dead-lettered (see :class:`ServiceExpect`).

    The pipeline's last stage must be one ``check_service`` can observe (a ``process`` or
    ``sink`` that is not ``parallel``, or a route whose branches each end in one): otherwise
    ``ValueError``, unless ``observe=False``, which runs without the checks *processed* and
    *no early ack* (``expect.processed`` is still checked).

    Runs in a fresh ``trio.run`` with ``MockClock(autojump_threshold=0)``, with trio's scheduler
    and the ``random`` module seeded with the broker's seed (and restored after), so a seed and
    a schedule replay the same run. On a broken invariant it runs fresh copies of the broker
    with shorter schedules (at most 64 runs; ``shrink=False``: none), and raises
    :class:`ServiceViolation` naming the invariants, the seed and the shortest schedule that
    still fails. Inside a trio test use :func:`check_service_async`.

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
    options = {
        "group": group,
        "consumers": consumers,
        "source_options": source_options,
        "restart_delay": restart_delay,
        "max_time": max_time,
        "observe": observe,
    }
    check = _Check(build, broker, topic, expect, faults, options, shrink)

    def run(target: SimulatedBroker, schedule: list[BrokerFault]) -> Attempt:
        async def main() -> Attempt:
            return await check.attempt(target, schedule)

        state = _seed_trio(target.seed)
        try:
            return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            _restore_trio(state)

    return _drive(check.steps(), run)


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
    observe: bool = True,
) -> ServiceResult:
    """:func:`check_service` inside a running trio program whose clock is a ``MockClock``
    (pytest-trio's ``autojump_clock``); shorter schedules run one after another in it (trio's
    scheduler is not re-seeded: pytest-trio seeds it per test).

    Example:
        >>> async def test_orders(autojump_clock):
        ...     await check_service_async(build, broker, "orders", expect=[b"bad"])
    """
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        raise RuntimeError(
            "check_service_async needs a trio.testing.MockClock (use the autojump_clock fixture, "
            "or call check_service from a sync test)"
        )
    options = {
        "group": group,
        "consumers": consumers,
        "source_options": source_options,
        "restart_delay": restart_delay,
        "max_time": max_time,
        "observe": observe,
    }
    check = _Check(build, broker, topic, expect, faults, options, shrink)
    return await _drive_async(check.steps(), check.attempt)
