"""``check_pipeline``: run a pipeline on recorded sources under a MockClock and check invariants.

The invariants (see docs/testing.md):

1. every item pulled is acked exactly once, successful or failed; nothing disappears;
2. outputs equal the model's (as a multiset, or as a sequence when the model says so);
3. the items that fail are those the model says, with the reasons it says;
4. at any moment, items pulled and not settled stay within the graph's documented bound;
5. the run finishes (in bounded virtual time), also when stopped at a random moment;
6. batches never exceed their size (the model checks keys and contents).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar, cast, final

import attrs
import trio
import trio.testing

from .._composable import is_stage
from .._exceptions import PipelineError
from .._groups import group_of
from .._message import reason_key
from .._pipeline import Pipeline, collect, compose, is_pipeline
from .._report import RunReport
from .._stages import BatchStage, Process, Stage
from .._telemetry import Instrument
from .._validate import describe
from ._source import InFlightMeter, RecordedSource, TestSource

__all__ = [
    "CheckResult",
    "Expected",
    "InvariantViolation",
    "check_pipeline",
    "check_pipeline_async",
]

T = TypeVar("T")

ReasonSpec = type[BaseException] | str | Callable[[Any], bool] | None


class InvariantViolation(AssertionError):
    """``check_pipeline`` found a run that breaks an invariant; the message says which."""


@final
@attrs.frozen
class Expected:
    """What a model predicts for a run. Every field left ``None`` is not checked.

    ``outputs``: what leaves the last stage (``collect``), compared as a multiset, or as a
    sequence with ``ordered=True``. ``acked``: source items acked as successful (a multiset).
    ``failed``: source item -> expected reason: an exception class (the reason must be an
    instance), a string (``failed_by_reason`` key: class name or ``fail()`` string), a predicate,
    or ``None`` (any reason); an item absent from the mapping must not fail. ``retried``: the
    report's retry count.

    Example:
        >>> def model(items):
        ...     return Expected(outputs=[x * 2 for x in items if x], failed={0: ZeroDivisionError})
    """

    outputs: list[Any] | None = None
    ordered: bool = False
    acked: list[Any] | None = None
    failed: Mapping[Any, ReasonSpec | tuple[ReasonSpec, ...]] | None = None
    retried: int | None = None


@final
@attrs.frozen
class CheckResult:
    """What :func:`check_pipeline` observed: the report, outputs, outcomes and the peak in flight.

    Example:
        >>> result = check_pipeline(process(double), [1, 2])
        >>> result.outputs
        [2, 4]
    """

    report: RunReport
    outputs: list[Any]
    pulled: list[Any]
    acked: list[Any]
    failed: list[tuple[Any, BaseException | str | None]]
    peak_in_flight: int
    in_flight_bound: int | None
    batches: list[tuple[str, int, str]]
    elapsed: float


class _BatchWatch(Instrument):
    """Records every batch emitted: (stage label, size, trigger)."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, str]] = []

    def batch(self, stage: str, size: int, trigger: str, info: Any = None) -> None:
        self.batches.append((stage, size, trigger))


Recorded = TestSource[Any] | RecordedSource[Any]


def _recorded_sources(pipeline: Pipeline) -> list[Recorded]:
    """The recorded sources that run as tasks (the members of a merge, or the source itself)."""
    source = pipeline.source
    if source is None:
        return []
    parts: tuple[Any, ...] = getattr(source, "parts", lambda: (source,))()
    return [p for p in parts if isinstance(p, TestSource | RecordedSource)]


def _build(pipeline_or_factory: Any, items: Iterable[Any] | None) -> Pipeline:
    if is_pipeline(pipeline_or_factory) or is_stage(pipeline_or_factory):
        fragment = pipeline_or_factory
        if is_pipeline(fragment) and fragment.source is not None:
            if items is not None:
                raise TypeError(
                    f"check_pipeline: {fragment!r} has its own source; pass items=None, or pass "
                    "the pipeline without its source (or a factory of the source)"
                )
            return fragment
        if items is None:
            raise TypeError("check_pipeline: items=None needs a pipeline with its own source")
        return compose(TestSource(list(items)), fragment)
    if callable(pipeline_or_factory):
        src = TestSource(list(items) if items is not None else [])
        built: Any = pipeline_or_factory(src)
        return built if is_pipeline(built) else compose(built, None)
    raise TypeError(
        f"check_pipeline: {describe(pipeline_or_factory)} is not a pipeline, a stage, or a "
        "factory taking a TestSource"
    )


def _ends_in_sink(pipeline: Pipeline) -> bool:
    last = pipeline.stages[-1]
    return isinstance(last, Process) and last.terminal


def _reason_ok(spec: Any, reason: Any) -> bool:
    if isinstance(spec, tuple):
        return any(_reason_ok(s, reason) for s in cast("tuple[object, ...]", spec))
    if spec is None:
        return True
    if isinstance(spec, type):
        return isinstance(reason, spec)
    if isinstance(spec, str):
        return reason_key(reason) == spec
    return bool(spec(reason))


def _multiset_diff(expected: list[Any], actual: list[Any]) -> str:
    e: Counter[Hashable]
    a: Counter[Hashable]
    try:
        e, a = Counter(map(_hashable, expected)), Counter(map(_hashable, actual))
    except TypeError:  # pragma: no cover - unhashable data: compare sorted reprs
        e, a = Counter(map(repr, expected)), Counter(map(repr, actual))
    missing, extra = e - a, a - e
    if not missing and not extra:
        return ""
    return f"missing {_show(list(missing.elements()))}, unexpected {_show(list(extra.elements()))}"


def _hashable(x: Any) -> Hashable:
    if isinstance(x, list):
        return ("<list>", tuple(_hashable(v) for v in cast("list[object]", x)))
    return x  # type: ignore[no-any-return]


def _show(values: list[Any], limit: int = 8) -> str:
    text = ", ".join(repr(v) for v in values[:limit])
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return f"[{text}{more}]"


def _fail(pipeline: Pipeline, invariant: str, detail: str) -> InvariantViolation:
    return InvariantViolation(f"{invariant}: {detail}\n  pipeline: {pipeline!r}")


def _default_max_time(pipeline: Pipeline) -> float:
    return 24 * 3600.0


async def check_pipeline_async(
    pipeline_or_factory: Any,
    items: Iterable[Any] | None,
    *,
    model: Callable[[list[Any]], Expected | Iterable[Any]] | None = None,
    stop_after_pulled: int | None = None,
    stop_at: float | None = None,
    max_time: float | None = None,
    check_bound: bool = True,
) -> CheckResult:
    """:func:`check_pipeline` inside a running trio program whose clock is a ``MockClock``.

    Use it from an async test with pytest-trio's ``autojump_clock`` fixture. Raises
    ``RuntimeError`` when the current clock is not a :class:`trio.testing.MockClock`.

    Example:
        >>> async def test_double(autojump_clock):
        ...     await check_pipeline_async(process(double), [1, 2], model=doubled)
    """
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        raise RuntimeError(
            "check_pipeline_async needs a trio.testing.MockClock (use the autojump_clock fixture, "
            "or call check_pipeline outside trio)"
        )
    from .._runner import ACK_BUFFER
    from .._topology import compile_pipeline

    pipeline = _build(pipeline_or_factory, items)
    factory_model = getattr(pipeline_or_factory, "model", None)
    if model is None and callable(factory_model):
        model = cast("Callable[[list[Any]], Expected | Iterable[Any]]", factory_model)
    sources = _recorded_sources(pipeline)
    meter = InFlightMeter()
    for s in sources:
        s.meter = meter
    bound = compile_pipeline(pipeline, ack_buffer=ACK_BUFFER).in_flight_bound()
    watch = _BatchWatch()
    stop: trio.Event | None = None
    if stop_after_pulled is not None or stop_at is not None:
        stop = trio.Event()
        if stop_after_pulled is not None:
            for s in sources:
                if isinstance(s, TestSource):
                    s.stop_after(stop_after_pulled, stop)
    limit = max_time if max_time is not None else _default_max_time(pipeline)
    outputs: list[Any] = []
    report: RunReport | None = None
    started = trio.current_time()

    async def run() -> None:
        nonlocal report, outputs
        if _ends_in_sink(pipeline):
            report = await pipeline.run(stop=stop, drain_timeout=math.inf, telemetry=watch)
        else:
            reports: list[RunReport] = []

            class _Keep(Instrument):
                def pipeline_stop(self, report: RunReport) -> None:
                    reports.append(report)

            outputs = await collect(
                pipeline, stop=stop, drain_timeout=math.inf, telemetry=[watch, _Keep()]
            )
            report = reports[0]

    try:
        with trio.fail_after(limit):
            if stop is not None and stop_at is not None:
                event, when = stop, stop_at

                async def stopper() -> None:
                    await trio.sleep(when)
                    event.set()

                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stopper)
                        await run()
                        nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    raise _single(group) from None
            else:
                await run()
    except trio.TooSlowError:
        unsettled = [x for s in sources for x in s.unsettled()]
        raise _fail(
            pipeline,
            "invariant 5 (no deadlock)",
            f"the run did not finish within {limit} s of virtual time; "
            f"{len(unsettled)} item(s) pulled and not settled: {_show(unsettled)}",
        ) from None
    except PipelineError as exc:
        if isinstance(exc.__cause__, AssertionError) and "acked twice" in str(exc.__cause__):
            raise _fail(pipeline, "invariant 1 (acked exactly once)", str(exc.__cause__)) from exc
        raise
    assert report is not None
    elapsed = trio.current_time() - started

    pulled = [x for s in sources for x in s.pulled_data] if sources else []
    recorders = list({id(s.acknowledger): s.acknowledger for s in sources}.values())
    acked = [x for r in recorders for x in r.acked]
    failed = [xr for r in recorders for xr in r.failed]

    # 1. exactly once, nothing lost
    if sources:
        unsettled = [x for s in sources for x in s.unsettled()]
        if unsettled:
            raise _fail(
                pipeline,
                "invariant 1 (nothing disappears)",
                f"{len(unsettled)} item(s) pulled and never acked: {_show(unsettled)}",
            )
        diff = _multiset_diff(pulled, acked + [x for x, _ in failed])
        if diff:
            raise _fail(pipeline, "invariant 1 (acked exactly once)", f"acked vs pulled: {diff}")
    if report.received != report.acked + report.failed + report.unsettled or report.unsettled:
        raise _fail(
            pipeline,
            "invariant 1 (report)",
            f"received={report.received} acked={report.acked} failed={report.failed} "
            f"unsettled={report.unsettled}",
        )
    if sources and report.received != len(pulled):
        raise _fail(
            pipeline,
            "invariant 1 (report)",
            f"report.received={report.received} but {len(pulled)} items were pulled",
        )

    # 4. bounded in flight
    if check_bound and bound is not None and meter.peak > bound:
        raise _fail(
            pipeline,
            "invariant 4 (bounded in flight)",
            f"{meter.peak} items were pulled and not settled at once; the documented bound of "
            f"this graph is {bound}",
        )

    # 6. batch sizes
    sizes: dict[str, int] = {}
    for st in _all_stages(pipeline):
        if isinstance(st, BatchStage):
            sizes[st.label] = st.size
    for label, size, trigger in watch.batches:
        base = label.split("#")[0]
        limit_size = sizes.get(label, sizes.get(base))
        if limit_size is not None and not 0 < size <= limit_size:
            raise _fail(
                pipeline,
                "invariant 6 (batch size)",
                f"stage {label!r} emitted a batch of {size} items (size={limit_size}, "
                f"trigger {trigger!r})",
            )

    # 2, 3. the model
    if model is not None:
        try:
            predicted = model(list(pulled))
        except InvariantViolation as exc:
            raise _fail(pipeline, str(exc).split(":")[0], str(exc).partition(": ")[2]) from None
        expected = predicted if isinstance(predicted, Expected) else Expected(list(predicted))
        _compare(pipeline, expected, outputs, pulled, acked, failed, report)

    return CheckResult(
        report=report,
        outputs=outputs,
        pulled=pulled,
        acked=acked,
        failed=failed,
        peak_in_flight=meter.peak,
        in_flight_bound=bound,
        batches=watch.batches,
        elapsed=elapsed,
    )


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception of a group (nested or not), else the group itself."""
    exc: BaseException = group
    while (inner := group_of(exc)) is not None and len(inner.exceptions) == 1:
        exc = inner.exceptions[0]
    return exc


def _all_stages(pipeline: Pipeline) -> list[Stage[Any, Any]]:
    from .._stages import Route

    out: list[Stage[Any, Any]] = []
    for st in pipeline.stages:
        out.append(st)
        if isinstance(st, Route):
            for _, branch in st.branches:
                out.extend(_all_stages(branch))
    return out


def _compare(
    pipeline: Pipeline,
    expected: Expected,
    outputs: list[Any],
    pulled: list[Any],
    acked: list[Any],
    failed: list[tuple[Any, Any]],
    report: RunReport,
) -> None:
    if expected.outputs is not None:
        if expected.ordered:
            if list(map(_hashable, outputs)) != list(map(_hashable, expected.outputs)):
                raise _fail(
                    pipeline,
                    "invariant 2 (outputs, in order)",
                    f"expected {_show(expected.outputs)}, got {_show(outputs)}",
                )
        else:
            diff = _multiset_diff(expected.outputs, outputs)
            if diff:
                raise _fail(pipeline, "invariant 2 (outputs)", diff)
    if expected.acked is not None:
        diff = _multiset_diff(expected.acked, acked)
        if diff:
            raise _fail(pipeline, "invariant 3 (acked as successful)", diff)
    if expected.failed is not None:
        spec = expected.failed
        actual = {_hashable(x) for x, _ in failed}
        missing = [x for x in spec if _hashable(x) not in actual]
        seen = {_hashable(x) for x in pulled}
        never = [x for x in missing if _hashable(x) not in seen]
        if never:
            raise _fail(
                pipeline,
                "invariant 3 (failures)",
                f"items expected to fail were never pulled from the source: {_show(never)} "
                f"(the model names items that are not in model(pulled): {_show(pulled)})",
            )
        if missing:
            raise _fail(
                pipeline,
                "invariant 3 (failures)",
                f"items expected to fail were acked as successful: {_show(missing)}",
            )
        for x, reason in failed:
            if x not in spec:
                raise _fail(
                    pipeline,
                    "invariant 3 (failures)",
                    f"item {x!r} failed with {reason!r} but the model says it succeeds",
                )
            if not _reason_ok(spec[x], reason):
                raise _fail(
                    pipeline,
                    "invariant 3 (failure reasons)",
                    f"item {x!r} failed with {reason!r}; expected {spec[x]!r}",
                )
    if expected.retried is not None and report.retried != expected.retried:
        raise _fail(
            pipeline,
            "invariant 3 (retries)",
            f"report.retried={report.retried}, the model expects {expected.retried}",
        )


_deterministic = False


def _deterministic_trio() -> None:
    """Make trio's scheduler reproducible per hypothesis example (what pytest-trio does)."""
    global _deterministic
    if _deterministic:
        return
    _deterministic = True
    try:
        from hypothesis import register_random
    except ImportError:  # pragma: no cover - hypothesis is optional for check_pipeline
        return
    # trio has no public switch for this; pytest-trio flips the same private one. If trio moves
    # it, runs are only less reproducible (nothing else depends on it).
    run_module: Any = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(run_module, "_r", None)
    if rng is None or not hasattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        return
    register_random(rng)
    run_module._ALLOW_DETERMINISTIC_SCHEDULING = True


def check_pipeline(
    pipeline_or_factory: Any,
    items: Iterable[Any] | None,
    *,
    model: Callable[[list[Any]], Expected | Iterable[Any]] | None = None,
    stop_after_pulled: int | None = None,
    stop_at: float | None = None,
    max_time: float | None = None,
    check_bound: bool = True,
) -> CheckResult:
    """Run a pipeline on ``items`` under a ``MockClock`` and assert trioflow's invariants.

    ``pipeline_or_factory`` is a pipeline without a source (or a single stage), fed from a
    :class:`TestSource` over ``items``; or a factory called with that ``TestSource`` that returns a
    pipeline (it may use ``source.split(k)`` to build a ``merge``). ``model(pulled_items)`` returns
    the expected outputs (a list, compared as a multiset) or an :class:`Expected`; a factory with a
    ``model`` attribute (as :func:`pipelines` draws them) supplies its own. ``stop_after_pulled``
    or ``stop_at`` (virtual seconds) set ``stop`` during the run: the model then sees only what was
    pulled, and everything pulled must still be settled. A run longer than ``max_time`` virtual
    seconds is reported as a deadlock.

    Call it from a sync test (it runs ``trio.run`` with ``MockClock(autojump_threshold=0)``, with
    trio's scheduler made deterministic for hypothesis); inside trio use
    :func:`check_pipeline_async`. Raises :class:`InvariantViolation` (an ``AssertionError``) naming
    the invariant, the pipeline and the items involved.

    Example:
        >>> @given(st.lists(st.integers()))
        ... def test_double(xs):
        ...     doubled = process(lambda x: 2 * x, n=4)
        ...     check_pipeline(doubled, xs, model=lambda xs: [2 * x for x in xs])
    """
    _deterministic_trio()
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> CheckResult:
        return await check_pipeline_async(
            pipeline_or_factory,
            items,
            model=model,
            stop_after_pulled=stop_after_pulled,
            stop_at=stop_at,
            max_time=max_time,
            check_bound=check_bound,
        )

    return trio.run(main, clock=clock)
