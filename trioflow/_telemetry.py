"""Telemetry: instruments receive events; a failing instrument is removed, never fatal.

An :class:`Instrument` overrides the hooks it cares about; every hook is a no-op by default.
Hooks are called synchronously from the pipeline's tasks, so they must be quick (hand heavy
work to a channel). An instrument that raises is removed for the rest of the run and the
exception is logged once on the ``trioflow`` logger.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._report import RunReport

__all__ = ["Instrument", "Telemetry"]

logger = logging.getLogger("trioflow")


class Instrument:
    """Base class of instruments: override the hooks you need (see docs/telemetry table).

    Examples:
        >>> class CountRetries(Instrument):
        ...     retries = 0
        ...     def retry(self, stage, data, attempt, exc, delay):
        ...         self.retries += 1
    """

    def pipeline_start(self, pipeline: Any) -> None:
        """The run started (``pipeline`` is the :class:`~trioflow.Pipeline`), before any task."""

    def pipeline_stop(self, report: RunReport) -> None:
        """The run ended normally (input exhausted, or a drain) with ``report``."""

    def drain_start(self) -> None:
        """A graceful drain began: sources stopped pulling."""

    def drain_expired(self, unsettled: int) -> None:
        """The drain passed its deadline: ``unsettled`` messages are left un-acked."""

    def stage_start(self, stage: str, items: int) -> None:
        """A worker of ``stage`` took a chunk of ``items`` items to work on."""

    def stage_stop(self, stage: str, items: int, seconds: float) -> None:
        """A worker of ``stage`` finished a chunk of ``items`` items in ``seconds``."""

    def stage_exception(self, stage: str, data: Any, exc: BaseException) -> None:
        """A call in ``stage`` raised ``exc`` for ``data`` (before retries are decided)."""

    def retry(self, stage: str, data: Any, attempt: int, exc: BaseException, delay: float) -> None:
        """``stage`` will call again for ``data`` after ``delay`` seconds (``attempt`` is next)."""

    def failure(self, stage: str, data: Any, reason: BaseException | str) -> None:
        """An item failed in ``stage`` (it goes to failure handling)."""

    def batch_start(self, stage: str) -> None:
        """``stage`` opened a new batch (its timer, if any, starts now)."""

    def batch(self, stage: str, size: int, trigger: str, info: Any = None) -> None:
        """``stage`` emitted a batch of ``size`` items; ``trigger`` is why it left (``"size"``,
        ``"weight"``, ``"timeout"``, ``"end"``, ``"drain"``) and ``info`` its
        :class:`~trioflow.BatchInfo` (an override may leave ``info`` out)."""

    def dead_letter(self, messages: int) -> None:
        """``messages`` failed messages were handed to the ``on_failure`` handler."""

    def ack(self, acknowledger: Any, successful: int, failed: int) -> None:
        """An acknowledger was called for ``successful`` + ``failed`` messages."""

    def ack_error(self, acknowledger: Any, messages: list[Any], exc: BaseException) -> None:
        """``acknowledger.ack`` raised ``exc``: ``messages`` (a list of ``Message``) stay
        un-acked (counted in ``unsettled`` and ``ack_errors``); the run goes on."""

    def failure_handler_error(self, messages: list[Any], exc: BaseException) -> None:
        """The ``on_failure`` handler raised ``exc`` for ``messages``: they stay un-acked
        (counted in ``unsettled`` and ``failure_handler_errors``); the run goes on."""

    def demand(self, source: str, room: int) -> None:
        """``source`` asked the pipeline how much it can take: ``room`` items fit now."""

    def enqueued(self, source: str, items: int) -> None:
        """``source`` handed ``items`` items over to the pipeline's entry buffer."""

    def buffer_full(self, source: str) -> None:
        """A hand-over by ``source`` filled the entry buffer: it waits for demand now."""

    def source_disconnected(
        self, source: str, exc: BaseException, attempt: int, delay: float
    ) -> None:
        """``source`` lost its broker connection (or failed to open it again) with ``exc``; it
        tries again after ``delay`` seconds (``attempt`` counts the tries of this outage)."""

    def source_reconnected(self, source: str, attempts: int, downtime: float) -> None:
        """``source`` is connected again after ``attempts`` tries and ``downtime`` seconds."""

    def breaker(self, stage: str, state: str) -> None:
        """The breaker of ``stage`` changed state: ``"open"`` (calls stop, sources pause),
        ``"half_open"`` (one probe call is under way) or ``"closed"`` (sources resume)."""

    def wrap_call(
        self, stage: str, call: Callable[[Any], Awaitable[Any]]
    ) -> Callable[[Any], Awaitable[Any]] | None:
        """Wrap ``stage``'s calls (a ``process``/``sink`` stage), once when the run starts.

        ``call`` takes the item's view, a :class:`~trioflow.Message` or (after a batch) a
        :class:`~trioflow.Batch` of messages, and is awaited; return a function of the same
        shape that awaits it (a tracer opens a span around it), or ``None`` to leave the stage
        alone. Not an event: it is not called per item, and an instrument that raises here
        stops the run.
        """
        return None


_HOOKS = tuple(
    name
    for name in vars(Instrument)
    if not name.startswith("_") and callable(vars(Instrument)[name]) and name != "wrap_call"
)


def _arity(fn: Callable[..., Any]) -> int:
    params = inspect.signature(fn).parameters.values()
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


#: how many arguments each hook is called with (``self`` aside)
_ARITY = {hook: _arity(getattr(Instrument, hook)) - 1 for hook in _HOOKS}


def _adapted(method: Callable[..., Any], arity: int) -> Callable[..., Any]:
    """``method``, or a wrapper passing only the positional arguments it takes: a hook that
    gained an argument (``batch``'s ``info``) keeps working with overrides written before."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return method
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return method
    positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if positional >= arity:
        return method

    def call(*args: Any) -> Any:
        return method(*args[:positional])

    return call


class Telemetry:
    """Dispatches events to the instruments that override each hook.

    ``has_<hook>`` is true while some instrument overrides ``<hook>``: hot loops test it and skip
    building an event nobody listens to.
    """

    has_pipeline_start: bool
    has_pipeline_stop: bool
    has_drain_start: bool
    has_drain_expired: bool
    has_stage_start: bool
    has_stage_stop: bool
    has_stage_exception: bool
    has_retry: bool
    has_failure: bool
    has_batch_start: bool
    has_batch: bool
    has_dead_letter: bool
    has_ack: bool
    has_ack_error: bool
    has_failure_handler_error: bool
    has_demand: bool
    has_enqueued: bool
    has_buffer_full: bool
    has_source_disconnected: bool
    has_source_reconnected: bool
    has_breaker: bool

    def __init__(self, instruments: list[Instrument]) -> None:
        self._instruments = list(instruments)
        self._logged: set[int] = set()
        self._rebuild()

    def _rebuild(self) -> None:
        for hook in _HOOKS:
            targets = [
                (i, _adapted(getattr(i, hook), _ARITY[hook]))
                for i in self._instruments
                if getattr(type(i), hook, None) is not getattr(Instrument, hook)
            ]
            setattr(self, f"has_{hook}", bool(targets))
            setattr(self, f"_{hook}_targets", targets)

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook(*args)`` on every instrument that has it; remove any that raises."""
        targets: list[tuple[Instrument, Callable[..., Any]]] = getattr(self, f"_{hook}_targets")
        for instrument, method in targets:
            try:
                method(*args)
            except Exception:
                self._remove(instrument, hook)

    def _remove(self, instrument: Instrument, hook: str) -> None:
        if instrument not in self._instruments:  # already removed (listed twice)
            return
        if id(instrument) not in self._logged:
            self._logged.add(id(instrument))
            logger.exception(
                "trioflow: instrument %r raised in %s(); it is removed from this run",
                instrument,
                hook,
            )
        self._instruments = [i for i in self._instruments if i is not instrument]
        self._rebuild()

    def call_wrappers(
        self, stage: str
    ) -> list[Callable[[Callable[[Any], Awaitable[Any]]], Callable[[Any], Awaitable[Any]] | None]]:
        """For each instrument that overrides ``wrap_call``, its wrapper of ``stage``'s calls."""
        return [
            partial(i.wrap_call, stage)
            for i in self._instruments
            if getattr(type(i), "wrap_call", None) is not Instrument.wrap_call
        ]

    def __bool__(self) -> bool:
        return bool(self._instruments)
