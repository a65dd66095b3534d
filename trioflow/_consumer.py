"""Declarative consumers: a class per topic that compiles to an ordinary pipeline.

In the spirit of PhoenixMicro's Consumer DSL: class attributes say what to read and how wide to
go, methods say what to do with each message and each batch. :meth:`Consumer.pipeline` builds::

    source(topic) | process(handle, n=concurrency, retry=retry) | sink(handle_batch)   # batching
    source(topic) | sink(handle, n=concurrency, retry=retry)                          # per message

(with ``batch(batch_size, batch_timeout)`` before ``handle_batch``), so acknowledgement, failure
handling, telemetry and the testing kit apply unchanged. The source is built from ``topic`` by a
*source factory*: the consumer's own, or the one given to the
:class:`~trioflow.ConsumerManager` (or to :meth:`Consumer.pipeline`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, final

import attrs

from ._batches import Batch, BatchInfo
from ._message import FailureAction, Message
from ._pipeline import Pipeline, compose
from ._retry import Retry
from ._stages import batch, process, sink

__all__ = ["Consumer", "ConsumerContext", "SourceFactory"]

#: Builds a consumer's source from its topic: a source stage, or anything that may stand left of
#: ``|`` (an iterable, an async iterable, an async generator function).
SourceFactory = Callable[[str], Any]


@final
@attrs.frozen
class ConsumerContext:
    """What a consumer's ``handle`` and ``handle_batch`` learn besides the data.

    Attributes:
        consumer: the consumer's name.
        topic: its topic.
        metadata: in ``handle``, the message's metadata (a broker's delivery tag, redelivered
            flag, entry id...); empty in ``handle_batch``.
        batch_metadata: in ``handle_batch``, the metadata of each item, in batch order; empty
            in ``handle``.

    Examples:
        >>> async def handle(self, data, ctx):
        ...     if ctx.metadata.get("redelivered"):
        ...         log.info("second try for %s", data)
    """

    consumer: str
    topic: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)  # pyright: ignore[reportUnknownVariableType]
    batch_metadata: tuple[Mapping[str, Any], ...] = ()
    #: in ``handle_batch``: the batch's :class:`~trioflow.BatchInfo` (why it left, its size)
    batch_info: BatchInfo | None = None
    _failures: dict[int, tuple[BaseException | str, FailureAction | None]] = attrs.field(  # pyright: ignore[reportUnknownVariableType]
        factory=dict, repr=False, alias="_failures"
    )

    def fail(
        self, index: int, reason: BaseException | str, *, action: FailureAction | None = None
    ) -> None:
        """In ``handle_batch``: fail the batch's item ``index`` alone (the others are acked).

        Examples:
            >>> async def handle_batch(self, batch, ctx):
            ...     for i in await db.insert_many(batch):   # the rows the database rejected
            ...         ctx.fail(i, "rejected by the database", action="dead_letter")
        """
        if not 0 <= index < len(self.batch_metadata):
            raise IndexError(
                f"ctx.fail({index!r}, ...): the batch has {len(self.batch_metadata)} items"
            )
        self._failures[index] = (reason, action)


class _Call:
    """A consumer method as a stage function, named ``Class.method`` in reprs and telemetry."""

    __slots__ = ("__name__", "__qualname__", "consumer", "method")

    def __init__(self, consumer: Consumer, method: str) -> None:
        self.consumer = consumer
        self.method = method
        self.__name__ = self.__qualname__ = f"{type(consumer).__name__}.{method}"

    def __repr__(self) -> str:
        return self.__qualname__


@final
class _Handle(_Call):
    """``handle(data, ctx)`` on a message (``messages=True``: ``ctx`` gets its metadata)."""

    __slots__ = ()

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(consumer, "handle")

    async def __call__(self, message: Message[Any]) -> Message[Any]:
        c = self.consumer
        ctx = ConsumerContext(c.name, c.topic, message.metadata)
        result = c.handle(message.data, ctx)
        if inspect.isawaitable(result):
            result = await result
        return message.replace(result)


@final
class _HandleBatch(_Call):
    """``handle_batch(list_of_results, ctx)`` on a batch of messages (``messages=True``): the
    items ``ctx.fail(i, ...)`` names fail alone, the others are acked."""

    __slots__ = ()

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(consumer, "handle_batch")

    async def __call__(self, batch: Batch[Message[Any]]) -> list[Message[Any]] | None:
        c = self.consumer
        ctx = ConsumerContext(
            c.name,
            c.topic,
            batch_metadata=tuple(m.metadata for m in batch),
            batch_info=batch.info,
        )
        result = c.handle_batch([m.data for m in batch], ctx)
        if inspect.isawaitable(result):
            await result
        failures = ctx._failures  # pyright: ignore[reportPrivateUsage]  (this module's class)
        if not failures:
            return None
        return [
            m.fail(failures[i][0], action=failures[i][1]) if i in failures else m
            for i, m in enumerate(batch)
        ]


class Consumer:
    """Base class of declarative consumers: set the class attributes, write ``handle``.

    Class attributes:
        topic: what to consume (a stream, a queue), resolved by the source factory. Required.
        name: the consumer's name in the manager's status and in telemetry (default: the class
            name).
        concurrency: ``handle`` calls at once (the processor pool size).
        batch_size: items per ``handle_batch`` call; ``handle_batch`` is used only when it is
            greater than 1 (and then it must be defined).
        batch_timeout: seconds after a batch's first item that a partial batch is flushed
            (``None``: only full batches, and a flush at the end).
        retry: a :class:`~trioflow.Retry` for ``handle`` and ``handle_batch`` calls.
        buffer: items the first stage buffers (default :data:`~trioflow.DEFAULT_BUFFER`); a
            broker source's default prefetch follows it.
        drain_timeout: seconds a graceful drain may take before what is in flight is left
            un-acked for redelivery.
        source_factory: builds the source from ``topic`` (overrides the manager's).

    Methods:
        handle: ``handle(self, data, ctx)``, per message (async or plain). Its return value is
            what ``handle_batch`` receives; an exception fails the message.
        handle_batch: ``handle_batch(self, batch, ctx)``, per batch of ``handle`` results; an
            exception fails every message of the batch.
        handle_failed: ``handle_failed(self, messages)``, optional: the failed source messages,
            in groups, before they are acked as failed (a dead-letter sink, an alert).

    Examples:
        >>> class PaymentsConsumer(Consumer):
        ...     topic = "payments.created"
        ...     concurrency = 10
        ...     batch_size = 50
        ...     batch_timeout = 1.0
        ...     retry = Retry(attempts=5)
        ...     async def handle(self, data, ctx):
        ...         return json.loads(data)
        ...     async def handle_batch(self, batch, ctx):
        ...         await db.insert_many(batch)
        >>> PaymentsConsumer().pipeline(lambda topic: RabbitQueueSource(topic))
        RabbitQueueSource('payments.created') | process(PaymentsConsumer.handle, n=10, ...
    """

    topic: ClassVar[str]
    name: str = ""
    concurrency: ClassVar[int] = 1
    batch_size: ClassVar[int] = 1
    batch_timeout: ClassVar[float | None] = 1.0
    retry: ClassVar[Retry | None] = None
    buffer: ClassVar[int | None] = None
    drain_timeout: ClassVar[float] = 30.0
    source_factory: ClassVar[SourceFactory | None] = None

    def __init__(self) -> None:
        if not self.name:
            self.name = type(self).__name__
        self._check()

    def handle(self, data: Any, ctx: ConsumerContext) -> Any:
        """Handle one message's data; the default passes it on (to ``handle_batch``)."""
        return data

    def handle_batch(self, batch: list[Any], ctx: ConsumerContext) -> Any:
        """Handle a batch of ``handle`` results (only when ``batch_size`` > 1)."""
        raise NotImplementedError

    def handle_failed(self, messages: list[Message[Any]]) -> Any:
        """Receive failed source messages before they are acked as failed (optional)."""
        raise NotImplementedError

    def _overrides(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(Consumer, method)

    def _check(self) -> None:
        cls = type(self).__name__
        topic = getattr(self, "topic", None)
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"{cls}: topic={topic!r} must be a non-empty string")
        for attr in ("concurrency", "batch_size"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{cls}: {attr}={value!r} must be a positive integer")
        timeout = self.batch_timeout
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0
        ):
            raise ValueError(f"{cls}: batch_timeout={timeout!r} must be a positive number or None")
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise TypeError(f"{cls}: retry={self.retry!r} must be a trioflow.Retry or None")
        if not isinstance(self.drain_timeout, (int, float)) or self.drain_timeout < 0:
            raise ValueError(f"{cls}: drain_timeout={self.drain_timeout!r} must be >= 0")
        has_batch = self._overrides("handle_batch")
        if not self._overrides("handle") and not has_batch:
            raise TypeError(f"{cls}: define handle(self, data, ctx) or handle_batch")
        if has_batch and self.batch_size == 1:
            raise TypeError(
                f"{cls}: handle_batch is called only when batch_size > 1 (batch_size=1)"
            )
        if self.batch_size > 1 and not has_batch:
            raise TypeError(
                f"{cls}: batch_size={self.batch_size} needs a handle_batch(self, batch, ctx)"
            )

    def source(self, default: SourceFactory | None = None) -> Any:
        """This consumer's source: its ``source_factory(topic)``, else ``default(topic)``.

        Examples:
            >>> consumer.source(lambda topic: RedisStreamSource(topic, "billing"))
        """
        found = inspect.getattr_static(self, "source_factory", None)
        if isinstance(found, staticmethod):
            found = found.__func__  # pyright: ignore[reportUnknownMemberType]
        factory: SourceFactory | None = found if found is not None else default
        if factory is None:
            raise TypeError(
                f"{type(self).__name__}: no source factory for topic {self.topic!r}; set "
                "source_factory on the consumer or give one to the manager"
            )
        return factory(self.topic)

    def pipeline(self, source_factory: SourceFactory | None = None) -> Pipeline[None, None]:
        """The pipeline this consumer runs (``source_factory`` unless it has its own).

        Examples:
            >>> print(PaymentsConsumer().pipeline(lambda topic: RabbitQueueSource(topic)))
        """
        src = self.source(source_factory)
        if self.batch_size > 1:
            stages = compose(
                process(
                    _Handle(self),
                    self.concurrency,
                    retry=self.retry,
                    buffer=self.buffer,
                    messages=True,
                ),
                batch(self.batch_size, self.batch_timeout),
            )
            stages = compose(stages, sink(_HandleBatch(self), retry=self.retry, messages=True))
        else:
            stages = compose(
                sink(
                    _Handle(self),
                    self.concurrency,
                    retry=self.retry,
                    buffer=self.buffer,
                    messages=True,
                ),
                None,
            )
        pipeline = compose(src, stages)
        if self._overrides("handle_failed"):
            pipeline = pipeline.on_failure(self.handle_failed)
        return pipeline

    def __repr__(self) -> str:
        return f"<{type(self).__name__} topic={self.topic!r}>"
