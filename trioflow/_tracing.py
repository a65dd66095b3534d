"""OpenTelemetry tracing: a span per message per ``process``/``sink`` stage.

:class:`OpenTelemetry` is an :class:`~trioflow.abc.Instrument` that wraps each stage's calls
(:meth:`~trioflow.abc.Instrument.wrap_call`). The trace context travels in each message's
metadata under two keys, the W3C header names:

* ``metadata["traceparent"]`` (and ``metadata["tracestate"]`` when there is one): the broker
  sources copy them there from the message's headers or fields, the stage spans continue that
  trace, and each stage's span writes its own context there for the next stage;
* broker sinks and the HTTP sink write ``traceparent`` (the current span's, see
  :func:`outgoing_context`) into what they send.

opentelemetry-api is imported only when an instrument is built (``pip install
'trioflow[otel]'``); the connectors look for it in ``sys.modules`` and never import it.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeGuard, final

from ._message import Message, is_message
from ._telemetry import Instrument

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "OpenTelemetry",
    "current_context",
    "messaging_attributes",
    "metadata_context",
    "outgoing_context",
]

#: the metadata keys of the trace context (the W3C header names)
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_SCOPE = "trioflow"

ViewCall = Callable[[Any], Awaitable[Any]]


def _otel() -> ModuleType:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(
            "trioflow.observe.OpenTelemetry needs opentelemetry-api: install it with "
            "pip install 'trioflow[otel]'"
        ) from exc
    return trace


def _kafka_key(key: Any) -> str | None:
    if isinstance(key, bytes):
        try:
            return key.decode()
        except UnicodeDecodeError:
            return None
    return key if isinstance(key, str) else None


def messaging_attributes(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenTelemetry messaging attributes that ``metadata`` tells, from the keys the
    broker sources put there (Kafka, RabbitMQ, Redis); and ``trioflow.attempt`` when the
    message carries its attempt number (``metadata["attempt"]``, set by a retry)."""
    attributes: dict[str, Any] = {}
    attempt = metadata.get("attempt")
    if isinstance(attempt, int):
        attributes["trioflow.attempt"] = attempt
    if "topic" in metadata and "offset" in metadata:
        attributes["messaging.system"] = "kafka"
        attributes["messaging.destination.name"] = str(metadata["topic"])
        attributes["messaging.destination.partition.id"] = str(metadata.get("partition"))
        attributes["messaging.kafka.offset"] = int(metadata["offset"])
        key = _kafka_key(metadata.get("key"))
        if key is not None:
            attributes["messaging.kafka.message.key"] = key
    elif "delivery_tag" in metadata:
        attributes["messaging.system"] = "rabbitmq"
        if metadata.get("queue") is not None:
            attributes["messaging.destination.name"] = str(metadata["queue"])
        if metadata.get("routing_key") is not None:
            key = str(metadata["routing_key"])
            attributes["messaging.rabbitmq.destination.routing_key"] = key
        attributes["messaging.rabbitmq.message.delivery_tag"] = int(metadata["delivery_tag"])
        for prop, name in (
            ("message_id", "messaging.message.id"),
            ("correlation_id", "messaging.message.conversation_id"),
        ):
            if metadata.get(prop) is not None:
                attributes[name] = str(metadata[prop])
    elif "stream" in metadata and "id" in metadata:
        attributes["messaging.system"] = "redis"
        attributes["messaging.destination.name"] = str(metadata["stream"])
        attributes["messaging.message.id"] = str(metadata["id"])
    else:
        return attributes
    attributes["messaging.operation.type"] = "process"
    count = metadata.get("delivery_count")
    if isinstance(count, int):
        attributes["trioflow.delivery_count"] = count
    return attributes


@final
class OpenTelemetry(Instrument):
    """Trace each message through each ``process``/``sink`` stage with OpenTelemetry.

    Every call of a stage is a span named ``"<stage> process"`` (kind ``CONSUMER``) with the
    attribute ``trioflow.stage`` and, for a message from a broker source, the messaging
    attributes that source knows (``messaging.system``, ``messaging.destination.name``, ...).
    Its parent is the context in ``metadata["traceparent"]`` (and ``"tracestate"``): the one a
    broker source found in the message's headers, or the span of the message's previous stage,
    so a message's spans form one trace, continued from the service that produced it. After a
    ``batch``, one span covers the call and *links* the spans of its messages. A retry adds a
    ``retry`` event to the call's span; an exception, or messages returned failed, mark it with
    an error status (the exception is recorded as an event).

    ``tracer_provider``: the provider to use; ``None`` takes the global one
    (``opentelemetry.trace.set_tracer_provider``) as it is when the run starts. A
    ``NoOpTracerProvider``, or no global provider set before the run, leaves the stages alone.
    Needs ``pip install 'trioflow[otel]'``.

    Examples:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> provider = TracerProvider()  # add a span processor and exporter to it
        >>> await pipeline.run(telemetry=[OpenTelemetry(provider)])
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        #: the ``opentelemetry.trace`` module (imported when the instrument is built)
        self.trace: ModuleType = _otel()
        self.tracer_provider: TracerProvider | None = tracer_provider
        #: the span of the call in progress in this task (the retry hook adds events to it)
        self._span: ContextVar[Span | None] = ContextVar("trioflow span", default=None)

    def __repr__(self) -> str:
        if self.tracer_provider is None:
            return "OpenTelemetry()"
        return f"OpenTelemetry({self.tracer_provider!r})"

    def _tracer(self) -> Tracer | None:
        trace = self.trace
        provider = self.tracer_provider
        if provider is None:
            provider = trace.get_tracer_provider()
        # no-op: spans would be dropped; the API's proxy: no SDK was set up before the run
        if isinstance(provider, (trace.NoOpTracerProvider, trace.ProxyTracerProvider)):
            return None
        from . import __version__

        tracer: Tracer = provider.get_tracer(_SCOPE, __version__)
        return tracer

    def wrap_call(self, stage: str, call: ViewCall) -> ViewCall | None:
        """Open a span around each of ``stage``'s calls (see the class docs)."""
        tracer = self._tracer()
        if tracer is None:
            return None
        from opentelemetry import context as otel_context
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        trace = self.trace
        propagator = TraceContextTextMapPropagator()
        extract, inject = propagator.extract, propagator.inject
        start_span, set_span_in_context = tracer.start_span, trace.set_span_in_context
        attach, detach = otel_context.attach, otel_context.detach
        current = self._span
        name = f"{stage} process"
        consumer = SpanKind.CONSUMER
        stage_attribute = {"trioflow.stage": stage}

        # a cancellation (a hard stop) ends the span without marking it: the message did not
        # fail, it will be delivered again
        def failed(span: Span, exc: BaseException) -> None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

        def failed_members(span: Span, result: Any) -> None:
            """A batch's messages came back: mark the span if some failed."""
            if not _is_list(result):
                return
            members = result
            bad: list[Message[Any]] = [
                m for m in members if isinstance(m, Message) and m.status == "failed"
            ]
            if bad:
                for m in bad:
                    span.add_event("message failed", {"reason": _reason(m.reason)})
                span.set_status(Status(StatusCode.ERROR, f"{len(bad)} of {len(members)} failed"))

        def carry(span: Span, result: Message[Any]) -> Message[Any]:
            """``result`` with this span's context in its metadata, for the next stage."""
            carrier: dict[str, str] = {}
            inject(carrier, set_span_in_context(span))
            metadata = dict(result.metadata)
            metadata.pop(TRACESTATE, None)
            metadata.update(carrier)
            return result.replace(result.data, metadata=metadata)

        async def one(view: Message[Any]) -> Any:
            metadata = view.metadata
            parent = _extract(extract, metadata) if TRACEPARENT in metadata else None
            span = start_span(name, parent, consumer, stage_attribute)
            recording = span.is_recording()
            if recording:
                span.set_attributes(messaging_attributes(metadata))
            token = attach(set_span_in_context(span, parent))
            mine = current.set(span)
            try:
                result: Any = await call(view)
            except Exception as exc:
                if recording:
                    failed(span, exc)
                raise
            else:
                if recording and is_message(result):
                    done = result
                    if done.status == "failed":
                        reason = done.reason
                        if isinstance(reason, BaseException):
                            failed(span, reason)
                        else:
                            span.set_status(Status(StatusCode.ERROR, str(reason)))
                    return carry(span, done)
                return result
            finally:
                current.reset(mine)
                detach(token)
                span.end()

        async def batch(view: list[Message[Any]]) -> Any:
            links: list[Link] | None = None
            for m in view:
                metadata = m.metadata
                if TRACEPARENT in metadata:
                    parent = _extract(extract, metadata)
                    context = trace.get_current_span(parent).get_span_context()
                    if context.is_valid:
                        if links is None:
                            links = []
                        links.append(Link(context))
            span = start_span(name, None, consumer, stage_attribute, links)
            recording = span.is_recording()
            if recording:
                span.set_attribute("messaging.batch.message_count", len(view))
            token = attach(set_span_in_context(span))
            mine = current.set(span)
            try:
                result: Any = await call(view)
            except Exception as exc:
                if recording:
                    failed(span, exc)
                raise
            else:
                if recording:
                    failed_members(span, result)
                return result
            finally:
                current.reset(mine)
                detach(token)
                span.end()

        async def traced(view: Any) -> Any:
            if is_message(view):
                return await one(view)
            return await batch(view)

        return traced

    def retry(self, stage: str, data: Any, attempt: int, exc: BaseException, delay: float) -> None:
        """Add a ``retry`` event to the span of the call that retries."""
        span = self._span.get()
        if span is not None and span.is_recording():
            span.add_event(
                "retry",
                {
                    "trioflow.attempt": attempt,
                    "trioflow.retry.delay": delay,
                    "exception.type": type(exc).__name__,
                    "exception.message": str(exc),
                },
            )


def _extract(extract: Callable[..., Context], metadata: Mapping[str, Any]) -> Context | None:
    """The context of ``metadata``'s ``traceparent``; ``None`` for one the propagator cannot
    read (not text): a bad header starts a new trace, it never fails the message."""
    try:
        return extract(metadata)
    except Exception:
        return None


def _is_list(value: object) -> TypeGuard[list[Any]]:
    return isinstance(value, list)


def _reason(reason: BaseException | str | None) -> str:
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


def current_context() -> dict[str, str] | None:
    """The W3C trace context of the span current in this task (a traced stage's), as headers
    (``traceparent``, ``tracestate``); ``None`` when there is none, or when OpenTelemetry was
    never imported (then it costs one dictionary lookup).

    Examples:
        >>> headers = current_context() or {}
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return carrier or None


def metadata_context(metadata: Mapping[str, Any]) -> dict[str, str] | None:
    """The trace context a message carries: its metadata's ``traceparent`` (and ``tracestate``)."""
    parent = metadata.get(TRACEPARENT)
    if parent is None:
        return None
    got = {TRACEPARENT: str(parent)}
    state = metadata.get(TRACESTATE)
    if state:
        got[TRACESTATE] = str(state)
    return got


def outgoing_context(metadata: Mapping[str, Any] | None = None) -> dict[str, str] | None:
    """The trace context a sink writes into what it sends: the current span's when there is
    one (:func:`current_context`), else ``metadata``'s (:func:`metadata_context`), else ``None``.

    Examples:
        >>> headers = outgoing_context(message.metadata) or {}
    """
    got = current_context()
    if got is None and metadata:
        got = metadata_context(metadata)
    return got
