"""Redis Streams: a consumer-group source and a sink, with coredis (anyio-native, runs under trio).

Why coredis: it runs natively under ``trio.run`` (redis-py and valkey's clients are asyncio-only),
it is typed, and a cancelled blocking ``XREADGROUP`` leaves the client usable without losing an
entry. Install with ``pip install 'trioflow[redis]'``.

Semantics of :class:`RedisStreamSource` (at-least-once):

* it joins consumer group ``group`` as ``consumer`` (``XGROUP CREATE ... MKSTREAM``, created at
  ``start``, ``"0"`` by default: the whole stream);
* it first re-reads its own pending entries (a restarted consumer of the same name gets back what
  it had in flight), then reads new ones with ``XREADGROUP ... >``, asking for as many as the
  pipeline can take (``COUNT`` = demand): nothing is read ahead of what the pipeline can hold;
* every ``claim_every`` seconds it takes over entries idle for more than ``claim_idle`` seconds in
  other consumers' pending lists (``XAUTOCLAIM``): a consumer that died does not strand its entries.
  ``claim_idle`` must exceed the longest time an entry may spend in the pipeline;
* an entry delivered more than ``max_deliveries`` times is a poison entry: it is handed over
  already failed with ``action="dead_letter"``, so it goes to the dead letter stream with its
  reason and is acked without reaching the stages, instead of being redelivered forever;
* acks are ``XACK`` in groups after the last stage. A failed entry gets its own
  ``message.action``, or the source's ``on_failure`` default: ``"dead_letter"`` (the default) adds
  it to the dead letter stream (``<stream>:dead`` by default: the entry's fields plus
  ``trioflow_reason``, ``trioflow_id``, ``trioflow_stream``), then acks it; ``"discard"`` only
  acks it; ``"redeliver"`` leaves it pending, so a claim (above) delivers it again once it has
  been idle ``claim_idle`` seconds since its last delivery (at the latest ``claim_every`` later),
  or a restarted consumer of the same name re-reads it at once.

Message data is the entry's fields as ``dict[str, str]``; metadata has ``id``, ``stream``,
``delivery_count`` (1 for a fresh read; the group's count of deliveries for a re-read or claimed
entry) and ``deliveries`` (the same number, its older name).

Examples:
    >>> source = RedisStreamSource("events", "importers", "worker-1", host="127.0.0.1", port=6379)
    >>> pipeline = source | decode(Event, format=None, strict=False) | batch(500, 1.0) | sink(save)
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar, final

import trio

from .._message import ACTIONS, FailureAction, Message
from .._sources import Outlet, Source
from ._lazy import require

__all__ = ["RedisStreamSink", "RedisStreamSource", "connect"]


def connect(host: str = "127.0.0.1", port: int = 6379, **options: Any) -> Any:
    """A coredis client (enter it with ``async with`` before use) decoding responses to str."""
    coredis = require("coredis", "redis")
    options.setdefault("decode_responses", True)
    return coredis.Redis(host=host, port=port, **options)


def _reason_text(reason: BaseException | str | None) -> str:
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


@final
class _StreamAcker:
    """Acknowledger: dead-letter the failed entries that are to be, then XACK everything but the
    entries to redeliver (they stay pending), in one round trip."""

    def __init__(
        self, client: Any, stream: str, group: str, dead_letter: str, on_failure: FailureAction
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.dead_letter = dead_letter
        self.on_failure = on_failure
        self.acked = 0
        self.dead_lettered = 0
        self.discarded = 0
        self.redelivered = 0

    def __repr__(self) -> str:
        return f"<redis acker {self.stream!r}/{self.group!r}>"

    async def ack_ids(self, ids: list[Any]) -> None:
        """XACK successful entries handed over in bulk, by id."""
        await self._settle(ids, [])

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        ids = [m.metadata["id"] for m in successful]
        dead: list[Message[Any]] = []
        default = self.on_failure
        for m in failed:
            action = m.action or default
            if action == "redeliver":
                self.redelivered += 1  # left pending: claimed again after claim_idle
                continue
            if action == "dead_letter":
                dead.append(m)
            else:
                self.discarded += 1
            ids.append(m.metadata["id"])
        await self._settle(ids, dead)

    async def _settle(self, ids: list[Any], dead: list[Message[Any]]) -> None:
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        async with pipe:
            for m in dead:
                pipe.xadd(self.dead_letter, self.dead_fields(m))
            pipe.xack(self.stream, self.group, ids)
        self.acked += len(ids)
        self.dead_lettered += len(dead)

    def dead_fields(self, m: Message[Any]) -> dict[str, str]:
        data = m.data if isinstance(m.data, Mapping) else {"data": repr(m.data)}
        fields = {str(k): str(v) for k, v in data.items()}
        fields["trioflow_reason"] = _reason_text(m.reason)
        fields["trioflow_id"] = str(m.metadata["id"])
        fields["trioflow_stream"] = self.stream
        return fields


@final
class RedisStreamSource(Source[dict[str, str]]):
    """Entries of a Redis stream, read in a consumer group (see the module docs).

    Args:
        stream: the stream to read.
        group: the consumer group (created at ``start`` if missing).
        consumer: this consumer's name in the group (default: host name and process id).
        client: an entered coredis client; by default the source opens its own.
        host: Redis host, for the source's own client.
        port: Redis port, for the source's own client.
        start: where a new group starts (``"0"``: the whole stream; ``"$"``: new entries only).
        block: longest wait of one ``XREADGROUP`` for new entries, in seconds.
        count: most entries read at once.
        claim_idle: claim entries idle this long (seconds) in any consumer's pending list.
        claim_every: how often to claim (default ``claim_idle / 2``).
        on_failure: what to do with a failed entry whose ``action`` is ``None``:
            ``"dead_letter"`` (default), ``"discard"`` or ``"redeliver"``.
        max_deliveries: an entry delivered more often than this is dead-lettered without
            reaching the stages; ``None``: no limit.
        dead_letter: the dead letter stream (default ``<stream>:dead``).
        name: the stage label.

    Examples:
        >>> source = RedisStreamSource("events", "importers", on_failure="redeliver")
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: str | None = None,
        *,
        client: Any = None,
        host: str = "127.0.0.1",
        port: int = 6379,
        start: str = "0",
        block: float = 1.0,
        count: int = 500,
        claim_idle: float = 30.0,
        claim_every: float | None = None,
        on_failure: FailureAction = "dead_letter",
        max_deliveries: int | None = 5,
        dead_letter: str | None = None,
        name: str | None = None,
    ) -> None:
        if on_failure not in ACTIONS:
            raise ValueError(
                f"on_failure={on_failure!r} must be one of {', '.join(map(repr, ACTIONS))}"
            )
        if max_deliveries is not None and (
            not isinstance(max_deliveries, int) or max_deliveries < 1
        ):
            raise ValueError(
                f"max_deliveries={max_deliveries!r} must be a positive integer or None"
            )
        if not block > 0:
            raise ValueError(f"block={block!r} must be a positive number of seconds")
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{os.uname().nodename}-{os.getpid()}"
        self.client = client
        self.host = host
        self.port = port
        self.start = start
        self.block = block
        self.count = count
        self.claim_idle = claim_idle
        self.claim_every = claim_every if claim_every is not None else max(claim_idle / 2, 0.05)
        self.on_failure: FailureAction = on_failure
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter or f"{stream}:dead"
        self.name = name

    def open(self) -> AbstractAsyncContextManager[Source[dict[str, str]]]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Source[dict[str, str]]]:
        async with AsyncExitStack() as stack:
            client = self.client
            if client is None:
                client = await stack.enter_async_context(connect(self.host, self.port))
            yield _RedisRun(self, client)

    async def produce(self, out: Outlet) -> None:  # pragma: no cover - open() yields the runner
        raise RuntimeError("RedisStreamSource runs through open()")

    @property
    def label(self) -> str:
        return self.name or f"redis:{self.stream}/{self.group}"

    def __repr__(self) -> str:
        return f"RedisStreamSource({self.stream!r}, {self.group!r}, {self.consumer!r})"


@final
class _RedisRun(Source[dict[str, str]]):
    """One run of a :class:`RedisStreamSource`: its client and acknowledger."""

    #: how often (seconds) the group's lag and pending count are read with XINFO GROUPS
    FIGURES_EVERY = 5.0

    def __init__(self, spec: RedisStreamSource, client: Any) -> None:
        self.spec = spec
        self.client = client
        self.acker = _StreamAcker(
            client, spec.stream, spec.group, spec.dead_letter, spec.on_failure
        )
        self._figures: dict[str, float] = {}
        self._figures_at = -math.inf

    def source_metrics(self) -> dict[str, float]:
        """The consumer group's ``lag`` (entries not yet delivered to it; Redis >= 7.0) and
        ``pending`` (delivered, not acked), as last read (every :attr:`FIGURES_EVERY` s)."""
        return dict(self._figures)

    async def _refresh_figures(self) -> None:
        now = trio.current_time()
        if now - self._figures_at < self.FIGURES_EVERY:
            return
        self._figures_at = now
        spec = self.spec
        groups = await self.client.xinfo_groups(spec.stream)
        for group in groups:
            info = {_text(k): v for k, v in group.items()}
            if _text(info.get("name", "")) != spec.group:
                continue
            figures = {"pending": float(info.get("pending") or 0)}
            if info.get("lag") is not None:  # None: Redis cannot tell (or is older than 7.0)
                figures["lag"] = float(info["lag"])
            self._figures = figures

    @property
    def label(self) -> str:
        return self.spec.label

    async def produce(self, out: Outlet) -> None:
        spec, client = self.spec, self.client
        await self._ensure_group()
        # 1. what this consumer had in flight before a restart
        last = "0"
        while True:
            room = min(await out.demand(), spec.count)
            try:
                got = await client.xreadgroup(
                    spec.group, spec.consumer, streams={spec.stream: last}, count=room
                )
            except TypeError:
                # an entry deleted or trimmed since it was read comes back without fields, which
                # the client cannot parse: nothing can process it, so ack it off the pending list
                if not await self._ack_deleted_pending():
                    raise
                continue
            entries = got.get(spec.stream, ()) if got else ()
            if not entries:
                break
            last = entries[-1].identifier
            gone = [e.identifier for e in entries if e.field_values is None]
            if gone:  # the same, from a client that parses them as empty
                await client.xack(spec.stream, spec.group, gone)
            entries = [e for e in entries if e.field_values is not None]
            if entries:
                await self._hand_over(out, await self._with_deliveries(entries))
        # 2. new entries, and now and then entries stranded by dead consumers
        next_claim = trio.current_time()
        block_ms = max(1, int(spec.block * 1000))
        while True:
            room = min(await out.demand(), spec.count)
            await self._refresh_figures()
            if trio.current_time() >= next_claim:
                claimed = await self._claim(room)
                next_claim = trio.current_time() + spec.claim_every
                if claimed:
                    await self._hand_over(out, await self._with_deliveries(claimed))
                    continue
            block = min(block_ms, max(1, int((next_claim - trio.current_time()) * 1000)))
            got = await client.xreadgroup(
                spec.group, spec.consumer, streams={spec.stream: ">"}, count=room, block=block
            )
            entries = got.get(spec.stream, ()) if got else ()
            if entries:
                await self._hand_over(out, [(e, 1) for e in entries])

    async def _ack_deleted_pending(self) -> int:
        """Ack this consumer's pending entries that are gone from the stream; how many."""
        spec, client = self.spec, self.client
        pending = await client.xpending(
            spec.stream, spec.group, start="-", end="+", count=10_000, consumer=spec.consumer
        )
        gone = []
        for p in pending:
            if not await client.xrange(spec.stream, start=p.identifier, end=p.identifier):
                gone.append(p.identifier)
        if gone:
            await client.xack(spec.stream, spec.group, gone)
        return len(gone)

    async def _ensure_group(self) -> None:
        coredis = require("coredis", "redis")
        spec = self.spec
        with contextlib.suppress(coredis.exceptions.StreamDuplicateConsumerGroupError):
            await self.client.xgroup_create(
                spec.stream, spec.group, identifier=spec.start, mkstream=True
            )

    async def _claim(self, room: int) -> list[Any]:
        spec = self.spec
        claimed: list[Any] = []
        cursor = "0-0"
        while len(claimed) < room:
            result = await self.client.xautoclaim(
                spec.stream,
                spec.group,
                spec.consumer,
                min_idle_time=max(1, int(spec.claim_idle * 1000)),
                start=cursor,
                count=room - len(claimed),
            )
            cursor, entries = result[0], result[1]
            claimed.extend(e for e in entries if e.field_values is not None)
            if cursor in ("0-0", b"0-0"):
                break
        return claimed

    async def _with_deliveries(self, entries: Any) -> list[tuple[Any, int]]:
        """Pair entries with their delivery counts (from the group's pending list)."""
        spec = self.spec
        if not entries:
            return []
        pending = await self.client.xpending(
            spec.stream,
            spec.group,
            start=entries[0].identifier,
            end=entries[-1].identifier,
            count=len(entries) * 2 + 10,
            consumer=spec.consumer,
        )
        counts = {p.identifier: p.delivered for p in pending}
        return [(e, counts.get(e.identifier, 1)) for e in entries]

    async def _hand_over(self, out: Outlet, entries: list[tuple[Any, int]]) -> None:
        spec, acker = self.spec, self.acker
        limit = spec.max_deliveries
        stream = spec.stream
        data: list[dict[str, Any]] = []
        ids: list[Any] = []
        metas: list[dict[str, Any]] = []
        poison: list[Message[Any]] = []
        for entry, deliveries in entries:
            meta = {
                "id": entry.identifier,
                "stream": stream,
                "delivery_count": deliveries,
                "deliveries": deliveries,
            }
            if limit is not None and deliveries > limit:
                # handed over already failed: straight to failure handling, never to a stage
                poison.append(
                    Message(dict(entry.field_values), meta, acker).fail(
                        f"poison: delivered {deliveries} times (max_deliveries={limit})",
                        action="dead_letter",
                    )
                )
                continue
            data.append(dict(entry.field_values))
            ids.append(entry.identifier)
            metas.append(meta)
        if poison:
            await out.send_many(poison)
        await out.send_bulk(data, acknowledger=acker, ids=ids, metadata=metas)

    def __repr__(self) -> str:
        return repr(self.spec)


@final
class RedisStreamSink:
    """Add items (or batches) to a Redis stream with ``XADD``, one pipelined round trip a call.

    ``client`` is an entered coredis client (see :func:`connect`). Items are mappings of fields
    (or anything ``fields(item)`` turns into one). ``maxlen`` trims the stream approximately.

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
        self.fields = fields or _fields
        self.maxlen = maxlen
        self.written = 0

    async def __call__(self, item: Any) -> None:
        items = item if isinstance(item, list) else [item]
        coredis = require("coredis", "redis")
        trim: dict[str, Any] = {}
        if self.maxlen is not None:
            trim = {
                "trim_strategy": coredis.PureToken.MAXLEN,
                "threshold": self.maxlen,
                "trim_operator": coredis.PureToken.APPROXIMATELY,
            }
        pipe = self.client.pipeline(transaction=False)
        async with pipe:
            for x in items:
                pipe.xadd(self.stream, {k: str(v) for k, v in self.fields(x).items()}, **trim)
        self.written += len(items)

    @property
    def __name__(self) -> str:  # for reprs: sink(RedisStreamSink(...))
        return f"RedisStreamSink({self.stream})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    import attrs

    if attrs.has(type(item)):
        return attrs.asdict(item)
    return {"data": item}
