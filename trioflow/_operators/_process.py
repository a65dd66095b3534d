"""``process`` and ``sink``: workers over chunks, and work-conserving pools.

With ``n=1`` the worker takes a chunk of what is queued and calls the function item by item;
with ``n>1`` each worker takes one item at a time from the shared input (without a checkpoint
while there are items), so no item waits behind a slow call while another worker is idle: ``n``
means ``n`` calls in flight. Calls that do not suspend cost no task switch: a worker parks only
when its input is empty or its output is full.

Finished results wait in a :class:`~trioflow._queue.Pending` registered on the output. When the
next stage (or, after a sink, the acknowledger) is parked, the worker wakes it, and it takes what
is pending when it runs: right away if the call that follows suspends, after the chunk if it
does not. So results of suspending calls leave one by one as they finish, and those of calls that
never suspend leave as whole chunks, with no per-item test of whether a call suspended.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from heapq import heappop, heappush
from typing import Any

import attrs
import trio
from trio.lowlevel import ParkingLot

from .._acking import Fanout, Group
from .._awaitables import checked_key, has_awaitables, is_awaitable
from .._batches import Batch
from .._bulk import Lots, plain_data
from .._exceptions import Fatal, StageTimeout
from .._groups import is_fatal, matches
from .._lazy import require
from .._message import Message
from .._queue import FAILED, ChunkQueue, Pending
from .._stages import Process
from .._topology import Node
from .._validate import describe
from ._context import Emitter, StageContext
from ._traced import traced

__all__ = ["tasks"]

Call = Callable[[Any], Any]

#: While a worker hands results over during a chunk, the stage's live figures (count, busy
#: time, latency) are brought up to date at most this often (seconds of the trio clock).
ACCOUNT_EVERY = 0.05


def tasks(
    node: Node, inq: ChunkQueue, out: Emitter, ctx: StageContext
) -> list[Callable[[], Awaitable[None]]]:
    """The worker tasks of a ``process``/``sink`` node (producers registered on ``out``)."""
    stage = node.stage
    assert isinstance(stage, Process)
    call, is_async = make_call(stage, ctx)
    views = stage.messages
    wrappers = ctx.telemetry.call_wrappers(ctx.label)
    if wrappers:  # an instrument (a tracer) sees each call with the item's message
        call, is_async, views = traced(call, is_async, stage.messages, wrappers), True, True
    n = stage.max_n
    if stage.partition_by is not None:
        return _partitioned(node, stage, inq, out, ctx, call, is_async, views)
    ctx.workers = n
    for _ in range(n):
        out.add_producer()
    if n == 1:
        return [partial(worker, inq, out, ctx, call, is_async, node.buffer, views)]
    pool = _Pool(ctx, out, stage, node.buffer, views)
    return [partial(pool_worker, pool, inq, call, is_async) for _ in range(n)]


def make_call(stage: Process[Any, Any], ctx: StageContext) -> tuple[Call, bool]:
    """The per-item call with thread, timeout and retry applied; and whether it is awaited."""
    fn: Call = stage.fn
    is_async = stage.is_async
    if stage.thread:
        abandon = stage.timeout is not None
        sync_fn = fn  # bound now: ``fn`` is rebound to the wrapper below

        def boxed(value: Any) -> tuple[Any]:
            # in a box: trio refuses a coroutine as a thread's result, and one made by the
            # function is awaited here, as when it is called inline
            return (sync_fn(value),)

        async def in_thread(value: Any) -> Any:
            (result,) = await trio.to_thread.run_sync(boxed, value, abandon_on_cancel=abandon)
            return (await result) if is_awaitable(result) else result

        fn, is_async = in_thread, True
    if stage.parallel:
        fn, is_async = _in_processes(fn, stage, ctx.label), True
    if stage.timeout is not None:
        fn = _with_timeout(fn, stage.timeout, ctx.label)
    if stage.retry is not None:
        fn = _with_retry(fn, is_async, stage, ctx)
        is_async = True
    return fn, is_async


def _in_processes(fn: Call, stage: Process[Any, Any], label: str) -> Call:
    """``parallel=True``: each call runs in a trio-parallel worker process."""
    trio_parallel = require("trio_parallel", "parallel")
    # as many calls in flight as workers: the default limiter would cap them at the core count
    limiter = trio.CapacityLimiter(stage.max_n)
    checked = False

    async def in_process(value: Any) -> Any:
        nonlocal checked
        if not checked:
            check_main_guard(label)  # raises in the worker: the run stops naming the stage
            checked = True
        try:
            return await trio_parallel.run_sync(fn, value, kill_on_cancel=True, limiter=limiter)
        except trio_parallel.BrokenWorkerError as exc:
            raise RuntimeError(
                f"stage {label!r}: its worker process died ({exc}); if the entry script starts "
                'the pipeline at import time, put that under if __name__ == "__main__":'
            ) from exc

    return in_process


def check_main_guard(label: str) -> None:
    """Worker processes import the entry script: refuse one that would run the pipeline again."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.exists(path):
        return  # an interactive session, -c, or a frozen program: nothing to re-import
    with open(path, encoding="utf-8", errors="replace") as f:
        source = f.read()
    if "__main__" not in source:
        raise Fatal(
            f"stage {label!r} runs its function in worker processes (parallel=True), which "
            f"import the entry script {path!r} again; put the code that runs the pipeline under "
            'if __name__ == "__main__": so that importing it does not start it'
        )


def _with_timeout(fn: Call, timeout: float, label: str) -> Call:
    async def timed(value: Any) -> Any:
        with trio.move_on_after(timeout):
            return await fn(value)
        raise StageTimeout(f"stage {label!r}: the call took longer than timeout={timeout} s")

    return timed


def _with_retry(fn: Call, is_async: bool, stage: Process[Any, Any], ctx: StageContext) -> Call:
    policy = stage.retry
    assert policy is not None

    async def retried(value: Any) -> Any:
        attempt = 1
        while True:
            try:
                result = fn(value)
                if is_async or is_awaitable(result):
                    result = await result
                return result
            except Exception as exc:
                if is_fatal(exc) or not matches(exc, policy.on) or attempt >= policy.attempts:
                    raise
                _exception_event(ctx, value, exc)
                delay = policy.backoff.delay(attempt)
                ctx.retried(value, attempt + 1, exc, delay)
            await trio.sleep(delay)
            attempt += 1

    return retried


async def _await_results(
    ctx: StageContext, inputs: list[Any], results: list[Any], origins: list[Any], p: Pending
) -> None:
    """Await the awaitable results of a chunk in place (a failure fails that item)."""
    for i, result in enumerate(results):
        if result is FAILED or not is_awaitable(result):
            continue
        try:
            results[i] = await result
        except Exception as exc:
            if is_fatal(exc):
                raise
            results[i] = _failure(ctx, origins[i], inputs[i], exc)
            p.holes = True


def _view(lots: Lots, value: Any, origin: Any) -> Any:
    """What a ``messages=True`` stage sees: the item as a message, or for a batch a
    :class:`~trioflow.Batch` of its members' messages (each with its own metadata)."""
    t = type(origin)
    if t is Group and isinstance(value, list) and len(value) == len(origin.members):
        info = value.info if isinstance(value, Batch) else None
        return Batch(map(partial(_view, lots), value, origin.members), info)
    if isinstance(origin, Message):
        return Message(value, origin.metadata, origin.acknowledger)
    if t is tuple and len(origin) == 2:  # a bulk item's ref
        return lots.view(value, origin)
    return Message(value)


async def worker(
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    call: Call,
    is_async: bool,
    take: int,
    messages: bool,
) -> None:
    """``n=1``: take chunks from ``inq`` until it ends; call ``call`` per item, in order."""
    clock = trio.current_time
    pending = Pending(partial(_unwrap, ctx) if messages else None)
    out.hold(pending)
    settler = ctx.settler
    try:
        while True:
            got = await inq.get(take)
            if got is None:
                return
            values, origins = got
            n = len(values)
            ctx.chunk_start(n)
            started = clock()
            accounted = 0
            inputs = (
                [_view(ctx.settler.lots, v, o) for v, o in zip(values, origins, strict=True)]
                if messages
                else values
            )
            results: list[Any] = []
            pending.start(results, origins)
            append = results.append
            if is_async:
                for value in inputs:
                    try:
                        append(await call(value))
                    except Exception as exc:
                        if is_fatal(exc):
                            raise
                        append(_failure(ctx, origins[len(results)], value, exc))
                        pending.holes = True
                    if out.waiting:
                        # the next stage is idle: it takes what is done as soon as it runs
                        out.wake()
                        now = clock()
                        if now - started >= ACCOUNT_EVERY:
                            done = len(results)
                            ctx.chunk_stop(done - accounted, now - started)
                            started, accounted = now, done
            else:
                for value in inputs:
                    try:
                        append(call(value))
                    except Exception as exc:
                        if is_fatal(exc):
                            raise
                        append(_failure(ctx, origins[len(results)], value, exc))
                        pending.holes = True
                if has_awaitables(results):
                    # no one may take the results while the coroutines among them run
                    pending.busy = True
                    try:
                        await _await_results(ctx, inputs, results, origins, pending)
                    finally:
                        pending.busy = False
            await pending.flush(out)
            if n > accounted:
                ctx.chunk_stop(n - accounted, clock() - started)
            await settler.room()
    finally:
        out.close_producer()


def _failure(ctx: StageContext, origin: Any, value: Any, exc: Exception) -> Any:
    """A call for ``value`` raised ``exc`` (not a Fatal): tell instruments, fail the item, and
    return :data:`FAILED` to stand in its result."""
    _exception_event(ctx, value, exc)
    ctx.fail(origin, value, exc)
    return FAILED


class _Pool:
    """What the ``n`` workers of a pool share: their output, its order, and their holdings.

    ``held`` counts items taken from the input and not yet handed on (in a call, finished and
    pending, or waiting for their turn); a worker takes a new item only while it is below
    ``cap`` = ``max(buffer, n)``, so a stage holds at most its buffer plus ``cap`` items.
    ``ordered=True``: each item gets a ticket when taken, and its result joins the pending
    output only once every earlier ticket's has (``done`` holds the early ones).
    """

    __slots__ = (
        "cap",
        "ctx",
        "done",
        "handed",
        "held",
        "issued",
        "lot",
        "messages",
        "ordered",
        "out",
        "pending",
        "take",
    )

    def __init__(
        self,
        ctx: StageContext,
        out: Emitter,
        stage: Process[Any, Any],
        buffer: int,
        views: bool,
    ) -> None:
        self.ctx = ctx
        self.out = out
        self.messages = views  # calls take the item's view (messages=True, or traced)
        self.pending = Pending(partial(_unwrap, ctx) if views else None, self._stolen)
        out.hold(self.pending)
        self.ordered = stage.ordered
        #: items a worker takes in a row before it hands its results on and lets others run
        self.take = max(1, buffer // stage.max_n)
        self.cap = max(buffer, stage.max_n)
        self.held = 0
        self.issued = 0
        self.handed = 0
        self.done: dict[int, tuple[Any, Any]] = {}
        self.lot = ParkingLot()

    def finish(self, ticket: int, result: Any, origin: Any) -> None:
        """A call ended with ``result`` (:data:`FAILED` if the item failed and was settled)."""
        p = self.pending
        if not self.ordered:
            if result is FAILED:
                self.held -= 1
                self._release()
            else:
                p.results.append(result)
                p.origins.append(origin)
            return
        done = self.done
        done[ticket] = (result, origin)
        handed = self.handed
        while handed in done:
            result, origin = done.pop(handed)
            if result is FAILED:
                self.held -= 1
            else:
                p.results.append(result)
                p.origins.append(origin)
            handed += 1
        if handed != self.handed:
            self.handed = handed
            self._release()

    def _stolen(self, count: int) -> None:
        self.held -= count
        self._release()

    def _release(self) -> None:
        if self.lot:
            self.lot.unpark_all()

    async def flush(self) -> None:
        """Hand the pending results on (one worker at a time, so their order is kept)."""
        p = self.pending
        p.busy = True
        try:
            while len(p):
                count = len(p)
                got = p.take()
                if got is not None:
                    await self.out.put_many(*got)
                self.held -= count
        finally:
            p.busy = False
            self._release()

    async def room(self) -> None:
        """Wait until a worker may take one more item (handing results on if that is what
        stands in the way)."""
        p = self.pending
        while self.held >= self.cap:
            if len(p) and not p.busy:
                await self.flush()
            else:
                await self.lot.park()


async def pool_worker(pool: _Pool, inq: ChunkQueue, call: Call, is_async: bool) -> None:
    """``n>1``: take one item at a time from the shared input, so none waits while a worker is
    idle; hand results on through the pool's pending (in input order with ``ordered=True``)."""
    ctx, out, pending = pool.ctx, pool.out, pool.pending
    clock = trio.current_time
    settler = ctx.settler
    messages, take = pool.messages, pool.take
    try:
        while True:
            await pool.room()
            got = await inq.get(1)
            if got is None:
                return
            value, origin = got[0][0], got[1][0]
            if pool.held >= pool.cap:
                # others filled the pool while this worker waited for an item: give it back
                inq.unget(value, origin)
                continue
            started = clock()
            count = taken = 0
            while True:
                pool.held += 1
                ticket = pool.issued  # taken with the item: no await in between
                pool.issued += 1
                ctx.chunk_start(1)
                arg = _view(ctx.settler.lots, value, origin) if messages else value
                try:
                    result = await call(arg) if is_async else call(arg)
                    if not is_async and is_awaitable(result):
                        result = await result
                except Exception as exc:
                    if is_fatal(exc):
                        raise
                    result = _failure(ctx, origin, arg, exc)
                pool.finish(ticket, result, origin)
                count += 1
                if out.waiting:
                    out.wake()  # the next stage takes what is pending when it runs
                now = clock()
                if now - started >= ACCOUNT_EVERY:  # live figures follow a slow round
                    ctx.chunk_stop(count, now - started)
                    started, count = now, 0
                taken += 1
                if taken >= take or pool.held >= pool.cap:
                    break
                nxt = inq.pop()
                if nxt is None:
                    break
                value, origin = nxt
            if len(pending) and not pending.busy:
                await pool.flush()
            if count:
                ctx.chunk_stop(count, clock() - started)
            await settler.room()
    finally:
        out.close_producer()


def _exception_event(ctx: StageContext, value: Any, exc: BaseException) -> None:
    if ctx.telemetry.has_stage_exception:
        ctx.telemetry.emit("stage_exception", ctx.label, value, exc)


def _unwrap(ctx: StageContext, vals: list[Any], origs: list[Any]) -> tuple[list[Any], list[Any]]:
    """``messages=True``: results are messages; a failed one fails its item, others carry data.

    A result whose metadata differs from its origin's carries it on: the origin is replaced by a
    copy with that metadata, so later stages, ``on_failure`` and the acknowledger see it. After
    a batch, a result is the batch's messages (``None`` from a sink: all succeeded): the failed
    ones fail alone, the others go on as a batch (Broadway's ``handle_batch`` and
    ``prepare_messages``).
    """
    out_v: list[Any] = []
    out_o: list[Any] = []
    for result, origin in zip(vals, origs, strict=True):
        if type(origin) is Group and isinstance(result, list):
            got = _unwrap_batch(ctx, result, origin)
            if got is not None:
                out_v.append(got[0])
                out_o.append(got[1])
            continue
        if isinstance(result, Message):
            origin = _carry_metadata(ctx.settler.lots, result, origin)
            if result.status == "failed":
                ctx.fail(
                    origin,
                    result.data,
                    result.reason if result.reason is not None else "failed",
                    result.action,
                )
                continue
            result = result.data
        out_v.append(result)
        out_o.append(origin)
    return out_v, out_o


def _unwrap_batch(ctx: StageContext, result: list[Any], group: Group) -> tuple[Any, Any] | None:
    """A batch's messages back from a stage: fail the failed ones, the rest go on as a batch."""
    members = group.members
    if len(result) != len(members) or not all(isinstance(m, Message) for m in result):
        error = TypeError(
            f"stage {ctx.label!r} (messages=True) got a batch of {len(members)} messages and "
            f"must return None or those {len(members)} messages (some may be .fail()ed), not "
            f"{describe(result)}"
        )
        ctx.fail(group, [m.data if isinstance(m, Message) else m for m in result], error)
        return None
    data: list[Any] = []
    kept: list[Any] = []
    for message, member in zip(result, members, strict=True):
        member = _carry_metadata(ctx.settler.lots, message, member)
        if message.status == "failed":
            reason = message.reason if message.reason is not None else "failed"
            ctx.fail(member, message.data, reason, message.action)
            continue
        data.append(message.data)
        kept.append(member)
    if not kept:
        return None
    info = result.info if isinstance(result, Batch) else None
    if info is not None and len(kept) != info.size:
        info = attrs.evolve(info, size=len(kept))
    return Batch(data, info), Group(kept)


def _carry_metadata(lots: Lots, result: Message[Any], origin: Any) -> Any:
    if isinstance(origin, Message):
        if result.metadata is origin.metadata:
            return origin
        return origin.replace(origin.data, metadata=result.metadata)
    if type(origin) is tuple and len(origin) == 2:  # a bulk item's ref
        if result.metadata is lots.view_metadata(origin):
            return origin
        # changed: from now on an ordinary message, acked by ``ack`` with its new metadata
        source = lots.release(origin)
        return source.replace(source.data, metadata=result.metadata)
    if type(origin) in (Group, Fanout) or not result.metadata:
        return origin
    # plain data: on_failure still sees the metadata
    return Message(plain_data(origin), result.metadata)


def _partitioned(
    node: Node,
    stage: Process[Any, Any],
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    call: Call,
    is_async: bool,
    views: bool,
) -> list[Callable[[], Awaitable[None]]]:
    """``partition_by``: any idle worker takes the oldest item whose key is not being worked on.

    Items wait in a FIFO per key; a key is *runnable* while it has items and no call in flight.
    So items of one key go through one at a time, in input order, and among the items the stage
    holds none waits while a worker is idle unless an earlier item of its key is still in a call
    (a slow key holds up only itself). At most ``max(buffer, n)`` items are held (queued per key,
    in calls, or finished and pending): a single key whose backlog is longer than that holds up
    the items behind it in the input queue, as any bounded buffer must.
    """
    key_fn = stage.partition_by
    assert key_fn is not None
    part = _Partitions(ctx, out, stage, node.buffer, key_fn, views)
    ctx.workers = stage.max_n
    for _ in range(stage.max_n):
        out.add_producer()
    workers: list[Callable[[], Awaitable[None]]] = [
        partial(_keyed_worker, part, call, is_async) for _ in range(stage.max_n)
    ]
    return [partial(_intake, part, inq), *workers]


class _Partitions:
    """What ``partition_by`` workers share: the items per key, the runnable keys, the output.

    Every item gets a sequence number at intake; the runnable keys form a heap ordered by the
    number of their oldest item, so an idle worker always takes the oldest item whose key has
    no call in flight (with ``n=1``: input order).
    """

    __slots__ = (
        "busy",
        "by_key",
        "ended",
        "key_fn",
        "key_of_message",
        "pool",
        "runnable",
        "seq",
        "what",
        "work",
    )

    def __init__(
        self,
        ctx: StageContext,
        out: Emitter,
        stage: Process[Any, Any],
        buffer: int,
        key_fn: Callable[[Any], Any],
        views: bool,
    ) -> None:
        self.pool = _Pool(ctx, out, stage, buffer, views)
        self.key_fn = key_fn
        #: a messages=True stage's key function sees the message too (a traced one: the data)
        self.key_of_message = stage.messages
        self.what = f"stage {ctx.label!r}: partition_by={describe(key_fn)}"
        self.by_key: dict[Any, deque[tuple[int, Any, Any]]] = {}
        #: (sequence number of the key's oldest item, key): keys are never compared
        self.runnable: list[tuple[int, Any]] = []
        self.busy: set[Any] = set()
        self.seq = 0
        #: workers waiting for a runnable key
        self.work = ParkingLot()
        self.ended = False

    def add(self, value: Any, origin: Any, key: Any) -> None:
        seq = self.seq
        self.seq += 1
        items = self.by_key.get(key)
        if items is None:
            items = self.by_key[key] = deque()
            if key not in self.busy:
                heappush(self.runnable, (seq, key))
                self.work.unpark()
        items.append((seq, value, origin))

    def next_item(self) -> tuple[Any, Any, Any] | None:
        """The oldest item whose key is free (its key now busy), or None."""
        if not self.runnable:
            return None
        _, key = heappop(self.runnable)
        items = self.by_key[key]
        _, value, origin = items.popleft()
        if not items:
            del self.by_key[key]
        self.busy.add(key)
        return value, origin, key

    def done(self, key: Any) -> None:
        """The call for ``key`` ended: the key is runnable again if it has items."""
        self.busy.discard(key)
        items = self.by_key.get(key)
        if items is not None:
            heappush(self.runnable, (items[0][0], key))
            self.work.unpark()


async def _intake(part: _Partitions, inq: ChunkQueue) -> None:
    """Move items from the input into the per-key FIFOs, while fewer than the cap are held."""
    pool = part.pool
    ctx = pool.ctx
    key_fn, what = part.key_fn, part.what
    lots = ctx.settler.lots
    messages = pool.messages  # calls take the item's view: built once here
    key_of_message = part.key_of_message
    try:
        while True:
            await pool.room()
            got = await inq.get(pool.cap - pool.held)
            if got is None:
                return
            values, origins = got
            failed = False
            for value, origin in zip(values, origins, strict=True):
                # a messages=True stage: its key function and its call see the same message,
                # built once here
                arg = _view(lots, value, origin) if messages else value
                try:
                    key = checked_key(key_fn(arg if key_of_message else value), what)
                    hash(key)
                except Exception as exc:
                    if is_fatal(exc):
                        raise
                    ctx.fail(origin, value, exc)
                    failed = True
                    continue
                pool.held += 1
                part.add(arg, origin, key)
            if failed:
                await ctx.settler.room()
    finally:
        part.ended = True
        part.work.unpark_all()


async def _keyed_worker(part: _Partitions, call: Call, is_async: bool) -> None:
    pool = part.pool
    ctx, out, pending = pool.ctx, pool.out, pool.pending
    clock = trio.current_time
    take = pool.take
    try:
        while True:
            got = part.next_item()
            if got is None:
                if len(pending) and not pending.busy:
                    await pool.flush()  # nothing to call: hand on what is done first
                    continue
                if part.ended and not part.by_key:
                    return
                await part.work.park()
                continue
            arg, origin, key = got  # (a message already, for a messages=True stage)
            started = clock()
            ctx.chunk_start(1)
            try:
                result = await call(arg) if is_async else call(arg)
                if not is_async and is_awaitable(result):
                    result = await result
            except Exception as exc:
                if is_fatal(exc):
                    raise
                result = _failure(ctx, origin, arg, exc)
            pool.finish(0, result, origin)
            part.done(key)
            if out.waiting:
                out.wake()
            if len(pending) >= take and not pending.busy:
                await pool.flush()
            ctx.chunk_stop(1, clock() - started)
            await ctx.settler.room()
    finally:
        if part.ended and not part.by_key:
            part.work.unpark_all()  # the others may be parked waiting for keys that never come
        out.close_producer()
