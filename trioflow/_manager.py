"""The consumer manager: every consumer of a service in one nursery, supervised.

Task layout of ``await nursery.start(manager.serve)``::

    serve ── one supervisor task per consumer (registration order)
               └─ a nursery running the consumer's pipeline (pipeline.serve)

A supervisor restarts its consumer when the run fails (a dropped source connection, a broker that
went away, a source that cannot connect), after a backoff, without touching the others. On
:meth:`ConsumerManager.stop` the consumers are drained one after another, in *reverse*
registration order (the last registered stops first, like a stack of services), each with its
own ``drain_timeout``; the others keep consuming meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, final

import attrs
import trio

from ._consumer import Consumer, SourceFactory
from ._exceptions import PipelineError
from ._groups import group_of
from ._retry import Backoff

if TYPE_CHECKING:
    from ._report import RunReport
    from ._runner import PipelineHandle
    from ._telemetry import Instrument

__all__ = ["ConsumerManager", "ConsumerState", "ConsumerStatus"]

logger = logging.getLogger("trioflow")

ConsumerState = Literal[
    "idle", "starting", "running", "draining", "restarting", "stopped", "failed"
]


@final
@attrs.frozen
class ConsumerStatus:
    """Health and readiness of one consumer, as the manager sees it now.

    Attributes:
        name: the consumer's name.
        state: ``idle`` (not started), ``starting`` (connecting), ``running``, ``draining``,
            ``restarting`` (waiting out a backoff after a failure), ``stopped`` (drained, or its
            source ended) or ``failed`` (gave up after ``max_restarts``).
        ready: whether it is consuming: running, its source connected (a consumer whose
            connection dropped is restarting, so not ready).
        healthy: whether it is running or recovering (not ``failed``).
        restarts: how many times it was restarted.
        last_error: the last failure, as ``"Type: message"``, or ``None``.
        metrics: the live report of its current run (``None`` before the first one).

    Examples:
        >>> {name: s.ready for name, s in manager.status().items()}
        {'PaymentsConsumer': True, 'RefundsConsumer': False}
    """

    name: str
    state: ConsumerState
    ready: bool
    healthy: bool
    restarts: int
    last_error: str | None
    metrics: RunReport | None


class _Slot:
    """One consumer under supervision."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.state: ConsumerState = "idle"
        self.restarts = 0
        self.last_error: str | None = None
        self.handle: PipelineHandle | None = None
        self.stop = trio.Event()
        self.done = trio.Event()
        self.started = False
        self.start_scope = trio.CancelScope()

    def status(self) -> ConsumerStatus:
        metrics = self.handle.metrics if self.handle is not None else None
        return ConsumerStatus(
            self.consumer.name,
            self.state,
            self.state == "running",
            self.state != "failed",
            self.restarts,
            self.last_error,
            metrics,
        )


def _describe(exc: BaseException) -> str:
    group = group_of(exc)
    while group is not None and len(group.exceptions) == 1:
        exc = group.exceptions[0]
        group = group_of(exc)
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None:
        text += f" (from {type(cause).__name__}: {cause})"
    return text


@final
class ConsumerManager:
    """Runs declarative consumers in one nursery: start, supervise, report, drain.

    Args:
        consumers: consumers (instances, or classes to instantiate) to register now.
        source_factory: builds a consumer's source from its topic, for consumers without their
            own (e.g. ``lambda topic: RabbitQueueSource(topic, port=5672)``).
        restart_backoff: the wait before restart ``k`` of a consumer whose run failed; the count
            starts over once a run has lasted ``stable_after`` seconds.
        stable_after: seconds of running after which a consumer's backoff is reset.
        max_restarts: restarts in a row (without a stable run) after which a consumer is given
            up (``failed``, unhealthy); ``None`` never gives up.
        telemetry: instruments given to every consumer's pipeline.

    Examples:
        >>> manager = ConsumerManager(
        ...     [PaymentsConsumer, RefundsConsumer],
        ...     source_factory=lambda topic: RabbitQueueSource(topic, port=5672),
        ... )
        >>> async with trio.open_nursery() as nursery:
        ...     await nursery.start(manager.serve)
        ...     ...  # on SIGTERM:
        ...     manager.stop()
    """

    def __init__(
        self,
        consumers: Iterable[Consumer | type[Consumer]] = (),
        *,
        source_factory: SourceFactory | None = None,
        restart_backoff: Backoff = Backoff.exponential(0.5, max=30.0, jitter=True),  # noqa: B008
        stable_after: float = 30.0,
        max_restarts: int | None = None,
        telemetry: Instrument | list[Instrument] | None = None,
    ) -> None:
        if source_factory is not None and not callable(source_factory):
            raise TypeError(f"source_factory={source_factory!r} must be callable")
        if not isinstance(restart_backoff, Backoff):
            raise TypeError(f"restart_backoff={restart_backoff!r} must be a trioflow.Backoff")
        if max_restarts is not None and (not isinstance(max_restarts, int) or max_restarts < 0):
            raise ValueError(f"max_restarts={max_restarts!r} must be a non-negative integer")
        self.source_factory = source_factory
        self.restart_backoff = restart_backoff
        self.stable_after = stable_after
        self.max_restarts = max_restarts
        self.telemetry = telemetry
        self._slots: dict[str, _Slot] = {}
        self._stop = trio.Event()
        self._serving = False
        for consumer in consumers:
            self.add(consumer)

    def add(self, consumer: Consumer | type[Consumer]) -> Consumer:
        """Register a consumer (an instance, or a class to instantiate); returns the instance.

        Usable as a class decorator (``@manager.add``: the class is returned unchanged). Names
        must be unique. Consumers added while serving are not started.

        Examples:
            >>> manager.add(PaymentsConsumer())
        """
        instance = consumer() if isinstance(consumer, type) else consumer
        if not isinstance(instance, Consumer):
            raise TypeError(f"{consumer!r} is not a trioflow.Consumer")
        if instance.name in self._slots:
            raise ValueError(f"a consumer named {instance.name!r} is already registered")
        if self._serving:
            raise RuntimeError("add consumers before serve() starts")
        # resolve now: a consumer without a source factory fails at registration, not at start
        if self.source_factory is None:
            instance.source(None)
        self._slots[instance.name] = _Slot(instance)
        return instance

    @property
    def consumers(self) -> dict[str, Consumer]:
        """The registered consumers by name, in registration order."""
        return {name: slot.consumer for name, slot in self._slots.items()}

    def status(self) -> dict[str, ConsumerStatus]:
        """Health and readiness of every consumer, by name (see :class:`ConsumerStatus`)."""
        return {name: slot.status() for name, slot in self._slots.items()}

    @property
    def ready(self) -> bool:
        """Whether every consumer is consuming (a readiness probe)."""
        return bool(self._slots) and all(s.state == "running" for s in self._slots.values())

    @property
    def healthy(self) -> bool:
        """Whether no consumer was given up (a liveness probe)."""
        return all(s.state != "failed" for s in self._slots.values())

    def stop(self) -> None:
        """Start the graceful shutdown and return at once (idempotent); ``serve`` then returns."""
        self._stop.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[ConsumerManager] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every consumer until :meth:`stop`: ``await nursery.start(manager.serve)``.

        ``nursery.start`` returns (the manager) once every consumer made its first attempt: it
        is running, or restarting after a failed start. After :meth:`stop`, consumers are
        drained one at a time in reverse registration order; ``serve`` returns when all are.
        Cancelling the surrounding scope is the hard stop: nothing in flight is acked.
        """
        if self._serving:
            raise RuntimeError("this manager is already serving")
        self._serving = True
        slots = list(self._slots.values())
        try:
            async with trio.open_nursery() as nursery:
                for slot in slots:
                    await nursery.start(self._supervise, slot)
                task_status.started(self)
                await self._stop.wait()
                for slot in reversed(slots):
                    slot.stop.set()
                    slot.start_scope.cancel()  # a consumer still connecting gives up at once
                    await slot.done.wait()
        finally:
            self._serving = False

    async def _supervise(self, slot: _Slot, *, task_status: trio.TaskStatus[None]) -> None:
        consumer = slot.consumer
        failures = 0

        def started() -> None:
            if not slot.started:
                slot.started = True
                task_status.started()

        try:
            while not slot.stop.is_set():
                slot.state = "starting"
                began = trio.current_time()
                try:
                    pipeline = consumer.pipeline(self.source_factory)
                    report = await self._run_once(slot, pipeline, started)
                except Exception as exc:
                    slot.handle = None
                    slot.last_error = _describe(exc)
                    logger.warning(
                        "trioflow: consumer %s failed: %s", consumer.name, slot.last_error
                    )
                    if trio.current_time() - began >= self.stable_after:
                        failures = 0
                    failures += 1
                    started()
                    if self.max_restarts is not None and failures > self.max_restarts:
                        slot.state = "failed"
                        return
                    slot.state = "restarting"
                    with trio.move_on_after(self.restart_backoff.delay(failures)):
                        await slot.stop.wait()
                    if not slot.stop.is_set():
                        slot.restarts += 1
                    continue
                # the run ended without an error: drained, or its source was exhausted
                logger.info("trioflow: consumer %s stopped: %s", consumer.name, report)
                slot.state = "stopped"
                return
            slot.state = "stopped"
        finally:
            started()
            slot.done.set()

    async def _run_once(
        self, slot: _Slot, pipeline: Any, started: Callable[[], None]
    ) -> RunReport | None:
        consumer = slot.consumer
        async with trio.open_nursery() as nursery:
            slot.start_scope = trio.CancelScope()
            handle: PipelineHandle | None = None
            with slot.start_scope:
                handle = await nursery.start(
                    _serve, pipeline, consumer.drain_timeout, self.telemetry
                )
            if handle is None:
                return None  # stopped while connecting
            slot.handle = handle
            slot.state = "running"
            started()

            async def stop_on_request() -> None:
                await slot.stop.wait()
                slot.state = "draining"
                handle.stop()

            nursery.start_soon(stop_on_request)
            report: RunReport | None = None
            # a crash is raised by the _serve task itself, through this nursery
            with contextlib.suppress(PipelineError):
                report = await handle.wait()
            nursery.cancel_scope.cancel()
        return report


async def _serve(
    pipeline: Any,
    drain_timeout: float,
    telemetry: Instrument | list[Instrument] | None,
    *,
    task_status: trio.TaskStatus[PipelineHandle],
) -> None:
    await pipeline.serve(drain_timeout=drain_timeout, telemetry=telemetry, task_status=task_status)
