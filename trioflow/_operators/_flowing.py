"""``process``/``sink`` stages under flow control: an adaptive limit, a breaker, or retries that
free their worker (``Retry(hold=False)``).

Such a stage runs an *intake* task and worker tasks, as ``partition_by`` does. The intake moves
items from the input into the stage's ready structure (a FIFO, or with ``partition_by`` the
per-key FIFOs of :class:`~trioflow._operators._process.Partitions`) while fewer than the cap
(``max(buffer, n)``) are held. A worker takes, in this order: an item held back by an open
breaker, an item whose retry is due, a ready item; and only while fewer calls than the limit are
in flight and the breaker lets a call through. Every item the stage holds (ready, in a call,
waiting for a retry or for the breaker, finished and pending) counts against the cap, so the
bound of a stage's memory is that of a pool: its buffer plus ``max(buffer, n)`` items.

Under ``partition_by`` a key stays busy from its item's first call until that item is done
(succeeded, or failed for good): an item waiting for a retry or for the breaker holds up the
later items of its key only, so per-key order is kept.

Items of failed calls and the breaker: a failed call counts against the breaker. If the breaker
is open after it, the item waits for the breaker (it is neither failed nor dead-lettered) and is
called again, first, once the breaker lets calls through. Otherwise, if its retry policy gives
up, the item is *suspect*: it is failed as soon as a call succeeds (the downstream works: the
item was the problem), or, if the breaker opens first, it waits with the others. When no call
runs and nothing else can be called, suspects are failed at the end of input, once the stage is
full, or ``reset`` seconds after they failed: they never hold their key (or the stage) for ever.

The probe: the oldest held item that has not failed as a probe; then a due retry or a ready
item; then the held item whose probe failed longest ago. A held item keeps its place in
``held`` when its probe fails. An item that failed as a probe and fails again once the breaker
has closed is bad: its retry policy decides, it does not count against the breaker. A held item
whose probe fails past its ``Retry(deadline=...)`` fails (its budget).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from heapq import heappop, heappush
from typing import Any, final

import trio
from trio.lowlevel import ParkingLot, checkpoint

from .._awaitables import checked_key, is_awaitable
from .._groups import is_fatal
from .._queue import FAILED, ChunkQueue
from .._retry import Retry
from .._stages import Process
from .._topology import Node
from .._validate import describe
from ._breaker import BreakerState, State
from ._context import Emitter, StageContext
from ._limit import GradientLimit
from ._partition import Partitions
from ._process import Pool, exception_event, view_of, with_attempt
from ._steer import Steering

__all__ = ["flow_tasks", "uses_flow"]

Call = Callable[[Any], Any]
Task = Callable[[], Awaitable[None]]


def uses_flow(stage: Process[Any, Any]) -> bool:
    """Whether ``stage`` needs the flow-controlled workers (else the plain ones, faster)."""
    from .._flow import Adaptive

    retry = stage.retry
    return (
        isinstance(stage.n, Adaptive)
        or stage.breaker is not None
        or (retry is not None and not retry.hold)
    )


@final
class _Item:
    """One item in the stage: what calls see, where it came from, its key (or ticket), and its
    retry state."""

    __slots__ = ("arg", "attempt", "exc", "first", "key", "origin", "probed", "since")

    def __init__(self, arg: Any, origin: Any, key: Any) -> None:
        self.arg = arg
        self.origin = origin
        self.key = key
        self.attempt = 1
        self.first = -1.0  # when its first call started
        self.exc: Exception | None = None
        #: 0, or the number of the last failed probe this item was the call of (see the module)
        self.probed = 0
        #: when it became a suspect
        self.since = 0.0


@final
class _Fifo:
    """The ready items of a stage without ``partition_by``: input order (the key is the ticket
    that ``ordered=True`` hands results on by)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()

    def add(self, item: _Item) -> None:
        self.items.append(item)

    def ready(self) -> bool:
        return bool(self.items)

    def next_item(self) -> _Item:
        return self.items.popleft()

    def done(self, key: Any) -> None:
        pass

    def empty(self) -> bool:
        return not self.items


@final
class _Keyed:
    """The ready items under ``partition_by``: the oldest item whose key is not busy."""

    __slots__ = ("part",)

    def __init__(self, part: Partitions) -> None:
        self.part = part

    def add(self, item: _Item) -> None:
        self.part.add(item, None, item.key)

    def ready(self) -> bool:
        return bool(self.part.runnable)

    def next_item(self) -> _Item:
        got = self.part.next_item()
        assert got is not None
        item: _Item = got[0]
        return item

    def done(self, key: Any) -> None:
        self.part.done(key)

    def empty(self) -> bool:
        return not self.part.by_key


class _Flow:
    """What the intake and the workers of one flow-controlled stage share."""

    def __init__(
        self,
        ctx: StageContext,
        pool: Pool,
        ready: _Fifo | _Keyed,
        stage: Process[Any, Any],
        steer: Steering,
    ) -> None:
        self.ctx = ctx
        self.pool = pool
        self.ready = ready
        self.steer = steer
        self.calling = 0
        self.lot = ParkingLot()
        self.intake_done = False
        #: items whose next attempt is due at a time: (due, sequence, item)
        self.later: list[tuple[float, int, _Item]] = []
        self.seq = 0
        #: items waiting for the breaker to let calls through
        self.held: deque[_Item] = deque()
        #: items whose calls failed for good while the breaker was closed (see the module)
        self.suspects: list[_Item] = []
        retry = stage.retry
        self.retry: Retry | None = retry if retry is not None and not retry.hold else None
        #: the retry policy's ``deadline``: also the budget of an item held by the breaker
        self.deadline = math.inf if retry is None or retry.deadline is None else retry.deadline
        #: a messages=True stage with retries sees ``attempt`` in each message's metadata
        self.attempts = stage.messages and retry is not None and not retry.hold
        self.limiter: GradientLimit | None = None
        self.breaker: BreakerState | None = None
        #: failed probes so far (an item's ``probed`` is the number of its last one)
        self.probes = 0
        #: where the probe in flight came from: its index in ``held``, or -1 (ready, a retry)
        self.probe_from = -1

    # -- taking work ----------------------------------------------------------------------------

    def _work(self, now: float) -> int:
        """Where the next item would come from: 1 held back, 2 a due retry, 3 ready, 0 none."""
        if self.held:
            return 1
        if self.later and self.later[0][0] <= now:
            return 2
        return 3 if self.ready.ready() else 0

    def _idle(self) -> bool:
        return (
            self.intake_done
            and self.ready.empty()
            and not self.later
            and not self.held
            and not self.suspects
        )

    async def take(self) -> tuple[_Item, bool] | None:
        """The next item to call and whether its call is the breaker's probe; None at the end."""
        clock = trio.current_time
        pool = self.pool
        pending = pool.pending
        while True:
            now = clock()
            where = self._work(now)
            breaker = self.breaker
            if where and self.calling < self.steer.limit:
                probe = False
                if breaker is not None:
                    verdict = breaker.may_call(now)
                    if verdict is False:
                        await self._wait(breaker.probe_at if breaker.state == "open" else math.inf)
                        continue
                    probe = verdict is None
                if probe:
                    item = self._probe_item(now)
                elif where == 1:
                    item = self.held.popleft()
                elif where == 2:
                    item = heappop(self.later)[2]
                else:
                    item = self.ready.next_item()
                return item, probe
            decide = math.inf
            if not where:
                if self._idle():
                    return None
                if self.suspects and self.calling == 0 and not self.later and not self.held:
                    # nothing runs that could tell the suspects apart: decide them at the end
                    # of input, when the stage is full (their own key's items, or ordered
                    # results behind them, fill it), or after ``reset`` seconds
                    assert breaker is not None
                    decide = self.suspects[0].since + breaker.reset
                    if self.intake_done or pool.held >= pool.cap or now >= decide:
                        self._fail_suspects()
                        continue
            if len(pending) and not pending.busy:
                await pool.flush()
                continue
            due = min(decide, self.later[0][0] if self.later else math.inf)
            if where and breaker is not None and breaker.state == "open":
                due = min(due, breaker.probe_at)
            await self._wait(due)

    def _probe_item(self, now: float) -> _Item:
        """The probe's item: the oldest held one that has not failed a probe; else a due retry
        or a ready item; else the held item whose probe failed longest ago (a rotation: one bad
        item cannot keep the breaker open while others wait)."""
        held = self.held
        for idx, item in enumerate(held):
            if not item.probed:
                del held[idx]
                self.probe_from = idx
                return item
        self.probe_from = -1
        if self.later and self.later[0][0] <= now:
            return heappop(self.later)[2]
        if self.ready.ready():
            return self.ready.next_item()
        idx = min(range(len(held)), key=lambda i: held[i].probed)
        item = held[idx]
        del held[idx]
        self.probe_from = idx
        return item

    async def _wait(self, deadline: float) -> None:
        if deadline == math.inf:
            await self.lot.park()
        else:
            with trio.move_on_at(deadline):
                await self.lot.park()

    def wake(self) -> None:
        if self.lot:
            self.lot.unpark_all()

    # -- outcomes -------------------------------------------------------------------------------

    def view(self, item: _Item) -> Any:
        arg = item.arg
        if self.attempts:
            return with_attempt(arg, item.attempt)
        return arg

    def succeeded(self, item: _Item, result: Any) -> None:
        breaker = self.breaker
        if breaker is not None:
            breaker.succeeded()
            if self.suspects:
                self._fail_suspects()
        self._finish(item, result)

    def failed(self, item: _Item, arg: Any, exc: Exception, now: float, probe: bool) -> None:
        """A call for ``item`` (seen as ``arg``) raised ``exc``; ``probe``: it was the breaker's
        probe."""
        ctx = self.ctx
        exception_event(ctx, arg, exc)
        breaker = self.breaker
        if breaker is not None:
            if item.probed and not probe and breaker.state == "closed":
                # it failed as a probe, a call has succeeded since (the breaker closed), and it
                # failed again: the item is the problem. Its retry policy decides, and this
                # failure does not count against the breaker.
                item.probed = 0
                if not self._retry(item, arg, exc, now):
                    self._fail(item, arg, exc)
                return
            if breaker.failed(now):
                if self.suspects:
                    self.held.extend(self.suspects)
                    self.suspects.clear()
                if probe and now - item.first >= self.deadline:
                    self._fail(item, arg, exc)  # its retry deadline is its budget
                    return
                if probe:
                    self.probes += 1
                    item.probed = self.probes
                    if 0 <= self.probe_from <= len(self.held):
                        self.held.insert(self.probe_from, item)  # held items keep their order
                        return
                self.held.append(item)
                return
        if self._retry(item, arg, exc, now):
            return
        if breaker is not None:
            item.exc = exc
            item.since = now
            self.suspects.append(item)
            return
        self._fail(item, arg, exc)

    def _retry(self, item: _Item, arg: Any, exc: Exception, now: float) -> bool:
        """Whether ``item`` waits for another attempt (its retry policy says so)."""
        retry = self.retry
        if retry is None:
            return False
        ctx = self.ctx
        try:
            delay = retry.should_retry(
                exc, item.attempt, now - item.first, where=f"stage {ctx.label!r}, item {arg!r}"
            )
        except Exception as error:  # the predicate raised: the item fails with that
            item.exc = error
            self._fail(item, arg, error)
            return True
        if delay is None:
            return False
        item.attempt += 1
        ctx.retried(arg, item.attempt, exc, delay)
        self.seq += 1
        heappush(self.later, (now + delay, self.seq, item))
        return True

    def _finish(self, item: _Item, result: Any) -> None:
        self.pool.finish(item.key, result, item.origin)
        self.ready.done(item.key)

    def _fail(self, item: _Item, arg: Any, exc: Exception) -> None:
        # (its call's ``stage_exception`` event was emitted in :meth:`failed`: once per call)
        self.ctx.fail(item.origin, arg, exc)
        self.pool.finish(item.key, FAILED, item.origin)
        self.ready.done(item.key)

    def _fail_suspects(self) -> None:
        suspects, self.suspects = self.suspects, []
        for item in suspects:
            assert item.exc is not None
            self._fail(item, item.arg, item.exc)


def flow_tasks(
    node: Node,
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    call: Call,
    is_async: bool,
    views: bool,
) -> list[Task]:
    """The intake and worker tasks of a flow-controlled stage (producers registered on ``out``)."""
    from .._flow import Adaptive

    stage = node.stage
    assert isinstance(stage, Process)
    adaptive = stage.n if isinstance(stage.n, Adaptive) else None
    ready: _Fifo | _Keyed
    part: Partitions | None
    if stage.partition_by is not None:
        part = Partitions(ctx, out, stage, node.buffer, stage.partition_by, views)
        pool, ready = part.pool, _Keyed(part)
    else:
        pool = Pool(ctx, out, stage, node.buffer, views)
        part, ready = None, _Fifo()
    tasks = stage.max_n
    limiter = None
    if adaptive is not None:
        limiter = GradientLimit(adaptive, trio.current_time())
        steer = Steering(ctx, limiter.limit, tasks, adaptive)
    else:
        steer = Steering(ctx, tasks, tasks)
    flow = _Flow(ctx, pool, ready, stage, steer)
    flow.limiter = limiter
    if stage.breaker is not None:
        flow.breaker = steer.breaker_state = BreakerState(
            stage.breaker, partial(_breaker_changed, flow)
        )

    def on_resize(n: int) -> None:
        pool.cap = max(node.buffer, n)
        pool.take = max(1, node.buffer // n)
        flow.wake()

    def make_worker(idx: int) -> Task:
        out.add_producer()
        return partial(_worker, flow, call, is_async)

    steer.on_resize = on_resize
    steer.make_worker = make_worker
    workers = [make_worker(i) for i in range(tasks)]
    return [partial(_intake, flow, inq, stage, part), *workers]


def _breaker_changed(flow: _Flow, state: State) -> None:
    ctx = flow.ctx
    ctx.hold_sources(state != "closed")
    if ctx.telemetry.has_breaker:
        ctx.telemetry.emit("breaker", ctx.label, state)
    flow.wake()


async def _intake(
    flow: _Flow, inq: ChunkQueue, stage: Process[Any, Any], part: Partitions | None
) -> None:
    """Move items from the input into the ready structure while fewer than the cap are held."""
    pool = flow.pool
    ctx = pool.ctx
    lots = ctx.settler.lots
    messages = pool.messages
    key_fn = stage.partition_by
    what = f"stage {ctx.label!r}: partition_by={describe(key_fn)}"
    key_of_message = stage.messages
    ready = flow.ready
    try:
        while True:
            await pool.room()
            got = await inq.get(pool.cap - pool.held)
            if got is None:
                return
            values, origins = got
            failed = False
            for value, origin in zip(values, origins, strict=True):
                arg = view_of(lots, value, origin) if messages else value
                if key_fn is not None:
                    try:
                        key = checked_key(key_fn(arg if key_of_message else value), what)
                        hash(key)
                    except Exception as exc:
                        if is_fatal(exc):
                            raise
                        ctx.fail(origin, value, exc)
                        failed = True
                        continue
                else:
                    key = pool.issued
                    pool.issued += 1
                pool.held += 1
                ready.add(_Item(arg, origin, key))
            free = flow.steer.limit - flow.calling
            if flow.lot and free > 0:
                flow.lot.unpark(count=min(len(values), free))  # one per free slot, not the herd
            if failed:
                await ctx.settler.room()
    finally:
        flow.intake_done = True
        if part is not None:
            part.ended = True
        flow.wake()


async def _worker(flow: _Flow, call: Call, is_async: bool) -> None:
    ctx, pool, steer = flow.ctx, flow.pool, flow.steer
    out, pending = pool.out, pool.pending
    clock = trio.current_time
    limiter = flow.limiter
    try:
        while True:
            got = await flow.take()
            if got is None:
                return
            item, probe = got
            arg = flow.view(item)
            flow.calling += 1
            epoch = limiter.started(flow.calling) if limiter is not None else 0
            ctx.chunk_start(1)
            started = clock()
            if item.first < 0:
                item.first = started
            try:
                result = await call(arg) if is_async else call(arg)
                if not is_async and is_awaitable(result):
                    result = await result
            except Exception as exc:
                if is_fatal(exc):
                    raise
                flow.calling -= 1
                now = clock()
                ctx.chunk_stop(1, now - started)
                flow.failed(item, arg, exc, now, probe)
                flow.wake()  # a retry's due time or the breaker's state: all look again
            else:
                flow.calling -= 1
                now = clock()
                ctx.chunk_stop(1, now - started)
                if limiter is not None and limiter.finished(epoch, now - started, now):
                    steer.set_limit(limiter.limit)
                    flow.wake()
                # (its slot is this worker's next call: no one else needs waking)
                flow.succeeded(item, result)
                if out.waiting:
                    out.wake()
                if len(pending) >= pool.take and not pending.busy:
                    if flow.lot:
                        flow.lot.unpark()  # this worker may wait here: its slot is free
                    await pool.flush()
            await ctx.settler.room()
            await checkpoint()
    finally:
        steer.end()
        flow.wake()
        out.close_producer()
