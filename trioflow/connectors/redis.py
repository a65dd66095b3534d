"""Redis Streams: a consumer-group source and a sink, with coredis (anyio-native, runs under trio).

Why coredis: it runs natively under ``trio.run`` (redis-py and valkey's clients are asyncio-only),
it is typed, and a cancelled blocking ``XREADGROUP`` leaves the client usable. Install with
``pip install 'trioflow[redis]'``.

Semantics of :class:`RedisStreamSource` (at-least-once):

* it joins consumer group ``group`` as ``consumer`` (``XGROUP CREATE ... MKSTREAM``, created at
  ``start``, ``"0"`` by default: the whole stream);
* it reads new entries with ``XREADGROUP ... >``, asking for as many as the pipeline can take
  (``COUNT`` = demand): nothing is read ahead of what the pipeline can hold;
* it retries its own pending entries (a restarted consumer of the same name gets back what it had
  in flight) and, every ``claim_every`` seconds, takes over entries idle for more than
  ``claim_idle`` seconds in any consumer's pending list (``XAUTOCLAIM ... JUSTID``): a consumer
  that died does not strand its entries. ``claim_idle`` must exceed the longest time an entry may
  spend in the pipeline;
* retries are isolated (poison isolation): an entry delivered once before goes in a group whose
  size doubles as groups settle, one delivered more often goes alone, each group once the
  previous one is settled, while new entries flow; so an entry that crashes the process is the
  only one whose count keeps rising;
* a drain waits for the read in progress (at most 1 s) and hands over what it got, acked by the
  drain: nothing read is stranded; retries not reached stay pending (logged, with how many);
* when Redis goes away it reconnects with the ``reconnect`` policy (``source_disconnected`` /
  ``source_reconnected``); acks wait for the new connection (at most ``give_up_after``), entries
  in flight stay pending;
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
entry), ``deliveries`` (the same number, its older name) and, when the entry has a
``traceparent`` field, ``traceparent`` (and ``tracestate``): the W3C trace context that
:class:`~trioflow.observe.OpenTelemetry` continues. :class:`RedisStreamSink` writes the current
span's ``traceparent`` (or the message's own) as a field of each entry.

Examples:
    >>> source = RedisStreamSource("events", "importers", "worker-1", host="127.0.0.1", port=6379)
    >>> pipeline = source | decode(Event, format=None, strict=False) | batch(500, 1.0) | sink(save)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar, final

import trio

from .._message import FailureAction, Message, check_failure_options
from .._sources import Outlet, Source
from ._lazy import require
from ._poison import poison as make_poison
from ._reconnect import (
    CONNECTION_ERRORS,
    Outage,
    Reconnect,
    SourceUnavailable,
    is_transient,
    keep_connected,
)
from ._redis_acker import StreamAcker
from ._redis_sink import RedisStreamSink
from ._trace_context import TRACEPARENT, from_headers

__all__ = ["RedisStreamSink", "RedisStreamSource", "connect", "default_consumer"]

logger: logging.Logger = logging.getLogger("trioflow")

_DEFAULT_RECONNECT = Reconnect()


def connect(host: str = "127.0.0.1", port: int = 6379, **options: Any) -> Any:
    """A coredis client (enter it with ``async with`` before use) decoding responses to str."""
    coredis = require("coredis", "redis")
    options.setdefault("decode_responses", True)
    return coredis.Redis(host=host, port=port, **options)


def default_consumer() -> str:
    """A source's consumer name when none is given: ``<host>-worker-<n>`` under ``trioflow run
    --workers N`` (``TRIOFLOW_WORKER=n``, the same after a restart, which so reads back its own
    pending entries at once), else ``<host>-<pid>``; e.g. ``'box-worker-2'``."""
    host = os.uname().nodename
    worker = os.environ.get("TRIOFLOW_WORKER", "").strip()
    if worker:
        return f"{host}-worker-{worker}"
    return f"{host}-{os.getpid()}"


@final
class RedisStreamSource(Source[dict[str, str]]):
    """Entries of a Redis stream, read in a consumer group (see the module docs).

    Args:
        stream: the stream to read.
        group: the consumer group (created at ``start`` if missing).
        consumer: this consumer's name in the group (default: :func:`default_consumer`: host
            name and ``worker-$TRIOFLOW_WORKER`` under ``trioflow run --workers N``, else host
            name and process id).
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
        reconnect: how to reconnect when Redis goes away (default: backoff from 0.1 s to 5 s,
            fail the run after 60 s without Redis); ``None``: the first lost connection fails
            the run.
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
        reconnect: Reconnect | None = _DEFAULT_RECONNECT,
        name: str | None = None,
    ) -> None:
        check_failure_options(on_failure, max_deliveries)
        if not block > 0:
            raise ValueError(f"block={block!r} must be a positive number of seconds")
        if reconnect is not None and not isinstance(reconnect, Reconnect):
            raise TypeError(f"reconnect={reconnect!r} must be a Reconnect(...) or None")
        self.stream = stream
        self.group = group
        self.consumer: str = consumer or default_consumer()
        self.client = client
        self.host = host
        self.port = port
        self.start = start
        self.block = block
        self.count = count
        self.claim_idle = claim_idle
        self.claim_every: float = (
            claim_every if claim_every is not None else max(claim_idle / 2, 0.05)
        )
        self.on_failure: FailureAction = on_failure
        self.max_deliveries = max_deliveries
        self.dead_letter: str = dead_letter or f"{stream}:dead"
        self.reconnect = reconnect
        self.name = name

    def open(self) -> AbstractAsyncContextManager[Source[dict[str, str]]]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncGenerator[Source[dict[str, str]], None]:
        async with AsyncExitStack() as stack:
            client = self.client
            if client is None:
                # no connection is made yet (the pool connects on the first command), so a
                # Redis that is down at start is an outage like any other
                client = await stack.enter_async_context(connect(self.host, self.port))
            yield _RedisRun(self, client)

    async def produce(self, out: Outlet) -> None:  # pragma: no cover - open() yields the runner
        raise RuntimeError("RedisStreamSource runs through open()")

    @property
    def label(self) -> str:
        return self.name or f"redis:{self.stream}/{self.group}"

    def __repr__(self) -> str:
        return f"RedisStreamSource({self.stream!r}, {self.group!r}, {self.consumer!r})"


class _GroupLost(ConnectionError):
    """The consumer group is gone (a Redis that restarted without its data): recreate it."""


@final
class _RedisRun(Source[dict[str, str]]):
    """One run of a :class:`RedisStreamSource`: its client, acknowledger, and what is in flight.

    The client is one coredis client for the whole run, shared by the reading task and the
    acknowledger: its pool drops a dead connection and opens a new one on the next command, so
    after an outage both go on over the new connection (entry ids, not connections, are what
    XACK and XCLAIM need).

    Retries are isolated: an entry delivered before (this consumer's own pending list at start
    or after a reconnect, and entries claimed from idle consumers) is handed over one at a time,
    the next only once the previous one is settled, while new entries flow as usual. A poison
    entry that crashes the process each time is then the only one whose count rises with each
    crash, and the only one that reaches ``max_deliveries``.
    """

    #: how often (seconds) the group's lag and pending count are read with XINFO GROUPS
    FIGURES_EVERY = 5.0
    #: most entries taken over by one claim (they are then retried one at a time)
    CLAIM_AT_ONCE = 100
    #: pending entries listed per XPENDING while walking this consumer's own pending list
    SCAN_PAGE = 100
    #: while a retry is in flight, how often (seconds) to look for new entries
    RETRY_POLL = 0.05
    #: longest blocking read (s): a drain waits for the read in progress (see _read_new)
    READ_AT_MOST = 1.0
    #: seconds a read may take past its ``block`` before it counts as a lost connection
    READ_GRACE = 5.0

    def __init__(self, spec: RedisStreamSource, client: Any) -> None:
        self.spec = spec
        self.client = client
        self.acker = StreamAcker(self)
        self._figures: dict[str, float] = {}
        self._figures_at = -math.inf
        self._transient = _transient_errors()
        #: ids handed over and not settled yet
        self.inflight: set[Any] = set()
        #: ids in this consumer's pending list to retry, one at a time
        self._retries: deque[Any] = deque()
        self._queued: set[Any] = set()
        #: where the walk of this consumer's own pending list goes on (None: not walking)
        self._scan_from: str | None = None
        #: the retried entries in flight (the next retries wait for them to be settled)
        self._retrying: set[Any] = set()
        #: how many entries delivered once before are retried together (doubles while it works)
        self._window = 1
        #: set when that entry is settled
        self._retry_settled = trio.Event()
        self._acks_waiting = False

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

    # -- settling (called by the acknowledger) -------------------------------------------------

    def settled(self, ids: list[Any]) -> None:
        """``ids`` are settled (acked, left pending to redeliver, or their ack gave up)."""
        self.inflight.difference_update(ids)
        if self._retrying:
            self._retrying.difference_update(ids)
            if not self._retrying:
                self._retry_settled.set()  # the next retries may go, twice as many
                self._window = min(self._window * 2, self.spec.count)

    async def retrying(self, op: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``op``; through an outage, again with the reconnect backoff until it works or
        ``give_up_after`` has passed (then raise: the entries stay pending)."""
        policy = self.spec.reconnect
        outage = None if policy is None else Outage(policy)
        while True:
            try:
                await op()
            except Exception as exc:
                if outage is None or not is_transient(exc, self._transient):
                    raise
                delay = outage.next_delay()
                if delay is None:
                    logger.error(
                        "trioflow: source %r gave up the %s after %.1f s without Redis; "
                        "they stay pending and are delivered again",
                        self.label,
                        what,
                        outage.elapsed,
                    )
                    raise SourceUnavailable(
                        f"{self.label}: {what} not sent within "
                        f"give_up_after={outage.policy.give_up_after} s "
                        f"(last error: {type(exc).__name__}: {exc})"
                    ) from exc
                if not self._acks_waiting:
                    self._acks_waiting = True
                    logger.warning(
                        "trioflow: source %r: the %s waits for Redis (%s: %s)",
                        self.label,
                        what,
                        type(exc).__name__,
                        exc,
                    )
                await trio.sleep(delay)
            else:
                if outage is not None and outage.attempt:
                    self._acks_waiting = False
                    logger.warning(
                        "trioflow: source %r: the %s was sent after %d tries",
                        self.label,
                        what,
                        outage.attempt + 1,
                    )
                return

    # -- reading -------------------------------------------------------------------------------

    async def produce(self, out: Outlet) -> None:
        async def session(connected: Callable[[], None]) -> None:
            await self._ensure_group()
            connected()
            try:
                await self._read(out)
            except _response_error() as exc:
                if "NOGROUP" in str(exc):
                    raise _GroupLost(f"the consumer group is gone ({exc})") from exc
                raise

        try:
            await keep_connected(
                out, self.spec.reconnect, session, transient=self._transient, what=self.label
            )
        finally:
            self._left_pending()

    def _left_pending(self) -> None:
        """Log the retries (own pending entries, claimed ones) left pending at the end."""
        if not self._retries and self._scan_from is None:
            return
        logger.warning(
            "trioflow: source %r stops with %d%s entries of its pending list not retried; "
            "they stay pending for %r: a consumer of that name re-reads them when it starts, "
            "any consumer of the group claims them once idle claim_idle=%s s",
            self.label,
            len(self._retries),
            " or more (the rest of the list was not read)" if self._scan_from is not None else "",
            self.spec.consumer,
            self.spec.claim_idle,
        )

    async def _read(self, out: Outlet) -> None:
        spec = self.spec
        # what this consumer has pending and not in flight: everything at start (it was in
        # flight before a restart), the replies lost in an outage after a reconnect
        self._scan_from = "-"
        self._window = 1
        next_claim = trio.current_time()
        block_ms = max(1, int(min(spec.block, self.READ_AT_MOST) * 1000))
        while True:
            room = min(await out.demand(), spec.count)
            await self._refresh_figures()
            if trio.current_time() >= next_claim:
                await self._claim()
                next_claim = trio.current_time() + spec.claim_every
            if not self._retrying:
                retries = await self._next_retries()
                if retries:
                    self._retrying.update(e.identifier for e, _ in retries)
                    self._retry_settled = trio.Event()
                    await self._hand_over(out, retries)
                    continue
            if self._retrying and self._has_retries():
                # a retry is in flight and more wait for it: look for new entries without
                # blocking (a blocking read cannot be cut short: a cancelled one leaves the
                # client stuck), then wait for the retry to be settled, a little at a time
                entries = await self._read_new(room, None)
                if entries:
                    await self._hand_over(out, [(e, 1) for e in entries])
                    continue
                with trio.move_on_after(min(spec.block, self.RETRY_POLL)):
                    await self._retry_settled.wait()
                continue
            block = min(block_ms, max(1, int((next_claim - trio.current_time()) * 1000)))
            entries = await self._read_new(room, block)
            if entries:
                await self._hand_over(out, [(e, 1) for e in entries])

    async def _read_new(self, room: int, block: int | None) -> tuple[Any, ...]:
        """``XREADGROUP ... >`` (blocking ``block`` ms, or not at all), shielded from a drain:
        Redis makes what it answers pending for this consumer, so a read cancelled after it was
        answered would strand those entries until a claim. Shielded, the read ends (at most
        :attr:`READ_AT_MOST` s later) and what it got is handed over, then acked by the drain
        (the hand-over starts with no checkpoint in between). A read that does not answer in
        time counts as a lost connection."""
        spec = self.spec
        options: dict[str, Any] = {"count": room}
        if block is not None:
            options["block"] = block
        with trio.CancelScope(shield=True):
            with trio.move_on_after((block or 0) / 1000 + self.READ_GRACE):
                got = await self.client.xreadgroup(
                    spec.group, spec.consumer, streams={spec.stream: ">"}, **options
                )
                return got.get(spec.stream, ()) if got else ()
        raise ConnectionError(f"XREADGROUP got no answer within {self.READ_GRACE} s")

    def _has_retries(self) -> bool:
        return bool(self._retries) or self._scan_from is not None

    def _queue_retries(self, ids: Any) -> None:
        for i in ids:
            if i not in self.inflight and i not in self._queued:
                self._queued.add(i)
                self._retries.append(i)

    def _alone(self, delivered: int) -> bool:
        """Whether an entry delivered ``delivered`` times so far must be retried alone: it was
        in flight at two failures already, or its next delivery is its last."""
        limit = self.spec.max_deliveries
        return delivered >= 2 or (limit is not None and delivered + 1 >= limit)

    async def _next_retries(self) -> list[tuple[Any, int]]:
        """The next group of this consumer's pending entries to retry, redelivered (XCLAIM),
        with their delivery counts: ``self._window`` entries delivered once before, or one
        entry delivered more often; ``[]`` when there is none."""
        spec, client = self.spec, self.client
        while True:
            if not self._retries:
                if self._scan_from is None:
                    return []
                page = await client.xpending(
                    spec.stream,
                    spec.group,
                    start=self._scan_from,
                    end="+",
                    count=self.SCAN_PAGE,
                    consumer=spec.consumer,
                )
                ids = [p.identifier for p in page]
                self._scan_from = f"({ids[-1]}" if len(ids) == self.SCAN_PAGE else None
                self._queue_retries(ids)
                continue
            candidates = list(itertools.islice(self._retries, self._window))
            # the lane is in id order: one XPENDING gives each one's current count and idle time
            found = await client.xpending(
                spec.stream,
                spec.group,
                start=candidates[0],
                end=candidates[-1],
                count=len(candidates) + len(self.inflight) + 10,
                consumer=spec.consumer,
            )
            info = {p.identifier: p for p in found}
            chosen: list[Any] = []
            for ident in candidates:
                p = info.get(ident)
                if p is not None and ident not in self.inflight:
                    alone = self._alone(int(p.delivered))
                    if alone and chosen:
                        break  # its own turn comes next
                    chosen.append(p)
                # acked or taken over by another consumer since it was queued, or taken now
                self._retries.popleft()
                self._queued.discard(ident)
                if chosen and self._alone(int(chosen[-1].delivered)):
                    break
            if not chosen:
                continue
            # min_idle_time: nobody else could take these (idle < claim_idle) or took them
            # since the XPENDING just now (that resets the idle time); an entry deleted from the
            # stream meanwhile is dropped from the pending list by Redis and not returned
            claimed: Any = ()
            with trio.CancelScope(shield=True):  # delivers them: not to be dropped by a drain
                with trio.fail_after(self.READ_GRACE):
                    claimed = await client.xclaim(
                        spec.stream,
                        spec.group,
                        spec.consumer,
                        min_idle_time=min(int(p.idle) for p in chosen),
                        identifiers=[p.identifier for p in chosen],
                    )
            counts = {p.identifier: int(p.delivered) + 1 for p in chosen}
            entries = [(e, counts[e.identifier]) for e in claimed if e.field_values is not None]
            if entries:
                return entries

    async def _ensure_group(self) -> None:
        coredis = require("coredis", "redis")
        spec = self.spec
        with contextlib.suppress(coredis.exceptions.StreamDuplicateConsumerGroupError):
            await self.client.xgroup_create(
                spec.stream, spec.group, identifier=spec.start, mkstream=True
            )

    async def _claim(self) -> None:
        """Take over (without delivering them: ``JUSTID``) entries idle for ``claim_idle`` in
        any consumer's pending list, to retry them one at a time."""
        if self._has_retries():
            return  # one backlog at a time: others may take what this one cannot do soon
        spec = self.spec
        cursor = "0-0"
        taken = 0
        while taken < self.CLAIM_AT_ONCE:
            result = await self.client.xautoclaim(
                spec.stream,
                spec.group,
                spec.consumer,
                min_idle_time=max(1, int(spec.claim_idle * 1000)),
                start=cursor,
                count=self.CLAIM_AT_ONCE - taken,
                justid=True,
            )
            cursor, ids = result[0], result[1]
            taken += len(ids)
            self._queue_retries(ids)
            if cursor in ("0-0", b"0-0"):
                break

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
            fields = dict(entry.field_values)
            if TRACEPARENT in fields:
                from_headers(fields, meta)
            if limit is not None and deliveries > limit:
                # handed over already failed: straight to failure handling, never to a stage
                poison.append(make_poison(fields, meta, acker, deliveries, limit))
                continue
            data.append(fields)
            ids.append(entry.identifier)
            metas.append(meta)
        self.inflight.update(ids)
        self.inflight.update(m.metadata["id"] for m in poison)
        await out.send_bulk(data, acknowledger=acker, ids=ids, metadata=metas, failed=poison)

    def __repr__(self) -> str:
        return repr(self.spec)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a lost or refused connection raises through coredis."""
    coredis = require("coredis", "redis")
    import anyio

    return (
        *CONNECTION_ERRORS,
        coredis.exceptions.ConnectionError,  # also BusyLoadingError: Redis is loading its data
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.EndOfStream,
    )


def _response_error() -> type[Exception]:
    coredis = require("coredis", "redis")
    error: type[Exception] = coredis.exceptions.ResponseError
    return error


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
