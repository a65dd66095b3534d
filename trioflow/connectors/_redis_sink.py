""":class:`RedisStreamSink`: ``XADD`` items to a Redis stream. See
:mod:`trioflow.connectors.redis`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast, final

from ._json import is_attrs, items_of
from ._lazy import require
from ._trace_context import outgoing

__all__ = ["RedisStreamSink"]


@final
class RedisStreamSink:
    """Add items (or batches) to a Redis stream with ``XADD``, one pipelined round trip a call.

    ``client`` is an entered coredis client (see :func:`connect`). Items are mappings of fields
    (or anything ``fields(item)`` turns into one). ``maxlen`` trims the stream approximately.
    Each entry gets a ``traceparent`` field: the current span's (a stage traced by
    ``OpenTelemetry``), else, for a :class:`~trioflow.Message` item (a ``messages=True`` sink,
    whose data is written), its own.

    Examples:
        >>> async with connect(port=6379) as client:
        ...     out = RedisStreamSink(client, "enriched")
        ...     await (source | process(enrich) | batch(200, 0.5) | sink(out)).run()
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        *,
        fields: Callable[[Any], Mapping[str, Any]] | None = None,
        maxlen: int | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.fields: Callable[[Any], Mapping[str, Any]] = fields or _fields
        self.maxlen = maxlen
        self.written: int = 0

    async def __call__(self, item: Any) -> None:
        items = items_of(item)
        coredis = require("coredis", "redis")
        trim: dict[str, Any] = {}
        if self.maxlen is not None:
            trim = {
                "trim_strategy": coredis.PureToken.MAXLEN,
                "threshold": self.maxlen,
                "trim_operator": coredis.PureToken.APPROXIMATELY,
            }
        data, contexts = outgoing(items)
        pipe = self.client.pipeline(transaction=False)
        async with pipe:
            for x, context in zip(data, contexts, strict=True):
                entry = {k: str(v) for k, v in self.fields(x).items()}
                if context:
                    entry.update(context)
                pipe.xadd(self.stream, entry, **trim)
        self.written += len(items)

    @property
    def __name__(self) -> str:  # for reprs: sink(RedisStreamSink(...))
        return f"RedisStreamSink({self.stream})"


def _fields(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return cast("Mapping[str, Any]", item)
    import attrs

    if is_attrs(item):
        return attrs.asdict(item)
    return {"data": item}
