"""Pipelines: immutable compositions of stages, built with ``|`` and run in one nursery."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeGuard, final, overload

import attrs
import trio

from ._composable import Composable, In, Out, is_stage
from ._exceptions import InvalidPipeline
from ._message import Message
from ._sources import Source, as_source
from ._stages import FlatMap, Process, Route, Stage, process
from ._validate import describe

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from ._report import RunReport
    from ._runner import PipelineHandle
    from ._telemetry import Instrument
else:
    from typing import TypeVar

T = TypeVar("T")

__all__ = ["Pipeline", "as_fragment", "collect", "compose", "is_pipeline"]

#: receives failed source messages (see :meth:`Pipeline.on_failure`); sync or async
FailureHandler = Callable[[list[Message[Any]]], Any]


@final
@attrs.frozen(repr=False)
class Pipeline(Composable[In, Out]):
    """A source and the stages after it (or only stages: a fragment, e.g. a route branch).

    Pipelines are values: ``|`` returns a new one, and the same pipeline can be run again (with a
    fresh source) or in two nurseries at once. ``Pipeline[None, Out]`` starts with a source and
    gives ``Out`` items; a fragment ``Pipeline[In, Out]`` takes ``In`` items.

    Examples:
        >>> pipeline = from_iterable(raw) | process(decode, n=10) | batch(100, 1.0) | sink(save)
        >>> report = trio.run(pipeline.run)
    """

    stages: tuple[Stage[Any, Any], ...]
    failure_handler: FailureHandler | None = None

    def on_failure(self, handler: FailureHandler) -> Pipeline[In, Out]:
        """A copy whose failed source messages go to ``handler(messages)`` in groups.

        ``handler`` (sync or async) receives the failed *source* messages, with their original
        data and ``.reason``; after it returns they are acked as failed to their source. An
        exception from the handler (but ``Fatal``) is contained: that call's messages are left
        un-acked (a broker delivers them again) and counted in ``failure_handler_errors``.

        Examples:
            >>> pipeline = pipeline.on_failure(dead_letter.write)
        """
        if not callable(handler):  # pyright: ignore[reportUnnecessaryComparison]
            raise TypeError(f"on_failure: handler={handler!r} must be callable")
        return attrs.evolve(self, failure_handler=handler)

    def sole_stage(self) -> Stage[Any, Any] | None:
        """The pipeline's only stage, or None if it has several."""
        return self.stages[0] if len(self.stages) == 1 else None

    @property
    def source(self) -> Stage[Any, Any] | None:
        """The pipeline's source stage, or ``None`` for a fragment."""
        first = self.stages[0] if self.stages else None
        return first if isinstance(first, Source) else None

    async def run(
        self,
        *,
        stop: trio.Event | None = None,
        drain_timeout: float = 30.0,
        telemetry: Instrument | list[Instrument] | None = None,
    ) -> RunReport:
        """Run until the source is exhausted and every message is acked or failed.

        ``stop`` starts a graceful drain when set: sources stop pulling, in-flight items finish,
        batches flush, acks are sent; what is still in flight after ``drain_timeout`` seconds is
        left un-acked (``report.unsettled``). Cancelling the surrounding scope is the hard stop:
        nothing that did not finish is acked. A bug or a :class:`~trioflow.Fatal` cancels every
        stage and raises :class:`~trioflow.PipelineError` naming the stage.
        """
        from ._runner import run_pipeline

        return await run_pipeline(self, stop=stop, drain_timeout=drain_timeout, telemetry=telemetry)

    async def serve(
        self,
        *,
        drain_timeout: float = 30.0,
        telemetry: Instrument | list[Instrument] | None = None,
        task_status: trio.TaskStatus[PipelineHandle] = trio.TASK_STATUS_IGNORED,
    ) -> RunReport:
        """Run as a service: ``handle = await nursery.start(pipeline.serve)``.

        The handle's ``stop()`` starts a graceful drain and returns at once; ``metrics`` is a live
        report; ``await handle.wait()`` returns the final report.
        """
        from ._runner import run_pipeline

        return await run_pipeline(
            self,
            stop=trio.Event(),
            drain_timeout=drain_timeout,
            telemetry=telemetry,
            task_status=task_status,
        )

    def __repr__(self) -> str:
        text = " | ".join(repr(s) for s in self.stages)
        if self.failure_handler is not None:
            text = f"({text}).on_failure({describe(self.failure_handler)})"
        return text


@overload
async def collect(
    pipeline: Composable[None, T],
    *,
    stop: trio.Event | None = None,
    drain_timeout: float = 30.0,
    telemetry: Instrument | list[Instrument] | None = None,
) -> list[T]: ...
@overload
async def collect(
    pipeline: AsyncIterable[T] | Iterable[T],
    *,
    stop: trio.Event | None = None,
    drain_timeout: float = 30.0,
    telemetry: Instrument | list[Instrument] | None = None,
) -> list[T]: ...
async def collect(
    pipeline: Any,
    *,
    stop: trio.Event | None = None,
    drain_timeout: float = 30.0,
    telemetry: Instrument | list[Instrument] | None = None,
) -> list[Any]:
    """Run ``pipeline`` and return the outputs of its last stage, as a list.

    A plain function last in the pipeline is a processor here (its outputs are collected); a
    pipeline ending in a sink collects nothing. Items that failed are not in the list (they went
    to failure handling). With ``n=1`` stages the list is in input order.

    Examples:
        >>> await collect(from_iterable([1, 2, 3]) | process(double))
        [2, 4, 6]
    """
    from ._runner import run_pipeline

    whole = pipeline if is_pipeline(pipeline) else compose(pipeline, None)
    out: list[Any] = []
    await run_pipeline(
        whole, stop=stop, drain_timeout=drain_timeout, telemetry=telemetry, collect=out
    )
    return out


def is_pipeline(obj: object) -> TypeGuard[Pipeline[Any, Any]]:
    """``isinstance(obj, Pipeline)``, seen by the checkers as ``Pipeline[Any, Any]``.

    (pyright leaves the type arguments of an ``isinstance`` of ``Any`` unknown; mypy calls a
    ``cast`` of it redundant.)
    """
    return isinstance(obj, Pipeline)


def _as_stage(obj: Any, *, where: str) -> Stage[Any, Any]:
    if is_stage(obj):
        return obj
    if inspect.isasyncgenfunction(obj):
        return FlatMap(obj)
    if callable(obj):
        return process(obj)
    raise TypeError(
        f"{where}: {describe(obj)} is not a stage; use a stage (process, batch, sink, ...) or a "
        "function"
    )


def _stages_of(obj: Any, *, leftmost: bool, where: str) -> tuple[tuple[Stage[Any, Any], ...], Any]:
    if is_pipeline(obj):
        return obj.stages, obj.failure_handler
    if is_stage(obj):
        return (obj,), None
    if leftmost and (
        inspect.isasyncgenfunction(obj)
        or (not callable(obj) and isinstance(obj, (Iterable, AsyncIterable)))
    ):
        return (as_source(obj, where=where),), None
    return (_as_stage(obj, where=where),), None


def compose(left: Any, right: Any) -> Pipeline[Any, Any]:
    """``left | right``: check the result is well formed and return a new pipeline."""
    stages, handler = _stages_of(left, leftmost=True, where="left of |")
    if right is not None:
        more, handler2 = _stages_of(right, leftmost=False, where="right of |")
        if handler is not None and handler2 is not None and handler is not handler2:
            raise InvalidPipeline("both sides of | have an on_failure handler; keep one")
        stages = stages + more
        handler = handler or handler2
    _check_shape(stages)
    return Pipeline(stages, handler)


def _check_shape(stages: tuple[Stage[Any, Any], ...]) -> None:
    for i, stage in enumerate(stages):
        if i > 0 and isinstance(stage, Source):
            raise InvalidPipeline(
                f"a pipeline has one source, but {stage!r} follows {stages[0]!r}; "
                f"use merge({stages[0]!r}, {stage!r}) to read from both"
            )
        if i < len(stages) - 1 and isinstance(stage, Process) and stage.terminal:
            raise InvalidPipeline(
                f"nothing can follow {stage!r}: a sink is terminal (it acks its messages), "
                f"but {stages[i + 1]!r} comes after it"
            )
        if isinstance(stage, Route):
            for key, branch in stage.branches:
                if branch.failure_handler is not None:
                    raise InvalidPipeline(
                        f"route branch {key!r} has an on_failure handler; set it on the whole "
                        "pipeline"
                    )


def as_fragment(obj: Any, *, where: str) -> Pipeline[Any, Any]:
    """A route branch: a pipeline without a source, or a single stage or function."""
    pipeline = obj if is_pipeline(obj) else Pipeline((_as_stage(obj, where=where),))
    if not pipeline.stages:
        raise InvalidPipeline(f"{where} is empty")
    if any(isinstance(s, Source) for s in pipeline.stages):
        raise InvalidPipeline(f"{where} has a source; a branch only has stages")
    return pipeline
