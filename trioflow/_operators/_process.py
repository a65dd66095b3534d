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
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import attrs
import trio
from trio.lowlevel import ParkingLot

from .._acking import Fanout, Group
from .._awaitables import has_awaitables, is_awaitable
from .._batches import Batch
from .._bulk import Lots, plain_data
from .._exceptions import Fatal, StageTimeout
from .._groups import is_fatal
from .._lazy import require
from .._message import Message
from .._queue import FAILED, ChunkQueue, Pending
from .._stages import Process
from .._topology import Node
from .._validate import describe
from ._context import Emitter, StageContext
from ._steer import Steering
from ._traced import wrapped_call

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
    wrapped = wrapped_call(call, is_async, stage.messages, wrappers) if wrappers else None
    if wrapped is not None:  # an instrument (a tracer) sees each call with the item's message
        call, is_async, views = wrapped, True, True
    from ._flowing import flow_tasks, uses_flow  # (they build on this module)
    from ._partition import partitioned

    if uses_flow(stage):
        return flow_tasks(node, inq, out, ctx, call, is_async, views)
    n = stage.max_n
    steer = Steering(ctx, n, n)
    if stage.partition_by is not None:
        return partitioned(node, stage, inq, out, ctx, call, is_async, views, steer)
    shared: list[Pool] = []

    def the_pool() -> Pool:  # made when first needed: an n=1 stage has none until resized
        if not shared:
            shared.append(Pool(ctx, out, stage, node.buffer, views))
        return shared[0]

    def on_resize(k: int) -> None:
        the_pool().resized(k, node.buffer)

    def make_worker(idx: int) -> Callable[[], Awaitable[None]]:
        out.add_producer()
        return partial(pool_worker, the_pool(), inq, call, is_async, steer, idx)

    steer.on_resize, steer.make_worker = on_resize, make_worker
    if n == 1:
        out.add_producer()
        return [partial(worker, inq, out, ctx, call, is_async, node.buffer, views, steer, the_pool)]
    return [make_worker(i) for i in range(n)]


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
    if stage.retry is not None and stage.retry.hold:
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
    attempts = stage.messages  # the call sees ``attempt`` in its message's metadata
    clock = trio.current_time

    async def retried(value: Any) -> Any:
        attempt = 1
        first = clock()
        while True:
            try:
                result = fn(with_attempt(value, attempt) if attempts else value)
                if is_async or is_awaitable(result):
                    result = await result
                return result
            except Exception as exc:
                if is_fatal(exc):
                    raise
                delay = policy.should_retry(exc, attempt, clock() - first)
                if delay is None:
                    raise
                exception_event(ctx, value, exc)
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
            results[i] = fail_item(ctx, origins[i], inputs[i], exc)
            p.holes = True


def with_attempt(view: Any, attempt: int) -> Any:
    """The view of a ``messages=True`` stage with ``attempt`` in its metadata (in each message
    of a batch)."""
    if isinstance(view, Message):
        return cast("Message[object]", view).with_metadata(attempt=attempt)
    if isinstance(view, list):
        info = view.info if isinstance(view, Batch) else None
        return Batch([with_attempt(m, attempt) for m in cast("list[object]", view)], info)
    return view


def view_of(lots: Lots, value: Any, origin: Any) -> Any:
    """What a ``messages=True`` stage sees: the item as a message, or for a batch a
    :class:`~trioflow.Batch` of its members' messages (each with its own metadata)."""
    t = type(origin)  # pyright: ignore[reportUnknownVariableType]
    if t is Group and isinstance(value, list) and len(value) == len(origin.members):  # pyright: ignore[reportUnknownArgumentType]
        info = value.info if isinstance(value, Batch) else None
        return Batch(map(partial(view_of, lots), value, origin.members), info)  # pyright: ignore[reportUnknownArgumentType]
    if isinstance(origin, Message):
        return Message(value, origin.metadata, origin.acknowledger)  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
    if t is tuple and len(origin) == 2:  # a bulk item's ref
        return lots.view(value, origin)
    return Message(value)  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]


async def worker(
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    call: Call,
    is_async: bool,
    take: int,
    messages: bool,
    steer: Steering,
    the_pool: Callable[[], Pool],
) -> None:
    """``n=1``: take chunks from ``inq`` until it ends; call ``call`` per item, in order.

    Resized to more than one (``handle.resize``), it goes on as worker 0 of a pool (order is no
    longer kept, unless ``ordered=True``)."""
    clock = trio.current_time
    pending = Pending(partial(_unwrap, ctx) if messages else None)
    out.hold(pending)
    settler = ctx.settler
    try:
        while True:
            if steer.limit != 1:
                await _pool_loop(the_pool(), inq, call, is_async, steer, 0)
                return
            got = await inq.get(take)
            if got is None:
                steer.end()
                return
            values, origins = got
            n = len(values)
            ctx.chunk_start(n)
            started = clock()
            accounted = 0
            inputs = (
                [view_of(ctx.settler.lots, v, o) for v, o in zip(values, origins, strict=True)]
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
                        append(fail_item(ctx, origins[len(results)], value, exc))
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
                        append(fail_item(ctx, origins[len(results)], value, exc))
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


def fail_item(ctx: StageContext, origin: Any, value: Any, exc: Exception) -> Any:
    """A call for ``value`` raised ``exc`` (not a Fatal): tell instruments, fail the item, and
    return :data:`FAILED` to stand in its result."""
    exception_event(ctx, value, exc)
    ctx.fail(origin, value, exc)
    return FAILED


class Pool:
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

    def resized(self, n: int, buffer: int) -> None:
        """The stage may run ``n`` calls now: it may hold as many items, takes fewer in a row."""
        self.cap = max(buffer, n, self.cap)
        self.take = max(1, buffer // n)

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


async def pool_worker(
    pool: Pool, inq: ChunkQueue, call: Call, is_async: bool, steer: Steering, idx: int
) -> None:
    """``n>1``: take one item at a time from the shared input, so none waits while a worker is
    idle; hand results on through the pool's pending (in input order with ``ordered=True``).

    Worker ``idx`` takes items only while ``idx`` is below the stage's limit (a resize)."""
    try:
        await _pool_loop(pool, inq, call, is_async, steer, idx)
    finally:
        pool.out.close_producer()


async def _pool_loop(
    pool: Pool, inq: ChunkQueue, call: Call, is_async: bool, steer: Steering, idx: int
) -> None:
    ctx, out, pending = pool.ctx, pool.out, pool.pending
    clock = trio.current_time
    settler = ctx.settler
    messages = pool.messages
    while True:
        if idx >= steer.limit and not await steer.idle(idx):
            return
        await pool.room()
        got = await inq.get(1)
        if got is None:
            steer.end()
            return
        value, origin = got[0][0], got[1][0]
        if pool.held >= pool.cap:
            # others filled the pool while this worker waited for an item: give it back
            inq.unget(value, origin)
            continue
        started = clock()
        count = taken = 0
        take = pool.take
        while True:
            pool.held += 1
            ticket = pool.issued  # taken with the item: no await in between
            pool.issued += 1
            ctx.chunk_start(1)
            arg = view_of(ctx.settler.lots, value, origin) if messages else value
            try:
                result = await call(arg) if is_async else call(arg)
                if not is_async and is_awaitable(result):
                    result = await result
            except Exception as exc:
                if is_fatal(exc):
                    raise
                result = fail_item(ctx, origin, arg, exc)
            pool.finish(ticket, result, origin)
            count += 1
            if out.waiting:
                out.wake()  # the next stage takes what is pending when it runs
            now = clock()
            if now - started >= ACCOUNT_EVERY:  # live figures follow a slow round
                ctx.chunk_stop(count, now - started)
                started, count = now, 0
            taken += 1
            if taken >= take or pool.held >= pool.cap or idx >= steer.limit:
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


def exception_event(ctx: StageContext, value: Any, exc: BaseException) -> None:
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
            got = _unwrap_batch(ctx, result, origin)  # pyright: ignore[reportUnknownArgumentType]
            if got is not None:
                out_v.append(got[0])
                out_o.append(got[1])
            continue
        if isinstance(result, Message):
            origin = _carry_metadata(ctx.settler.lots, result, origin)  # pyright: ignore[reportUnknownArgumentType]
            if result.status == "failed":
                ctx.fail(
                    origin,
                    result.data,  # pyright: ignore[reportUnknownMemberType]
                    result.reason if result.reason is not None else "failed",
                    result.action,
                )
                continue
            result = result.data  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
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
        ctx.fail(group, [m.data if isinstance(m, Message) else m for m in result], error)  # pyright: ignore[reportUnknownMemberType]
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
            return origin  # pyright: ignore[reportUnknownVariableType]
        return origin.replace(origin.data, metadata=result.metadata)  # pyright: ignore[reportUnknownArgumentType, reportUnknownMemberType, reportUnknownVariableType]
    if type(origin) is tuple and len(origin) == 2:  # a bulk item's ref  # pyright: ignore[reportUnknownArgumentType]
        if result.metadata is lots.view_metadata(origin):  # pyright: ignore[reportUnknownArgumentType]
            return origin  # pyright: ignore[reportUnknownVariableType]
        # changed: from now on an ordinary message, acked by ``ack`` with its new metadata
        source = lots.release(origin)  # pyright: ignore[reportUnknownArgumentType]
        return source.replace(source.data, metadata=result.metadata)
    if type(origin) in (Group, Fanout) or not result.metadata:  # pyright: ignore[reportUnknownArgumentType]
        return origin  # pyright: ignore[reportUnknownVariableType]
    # plain data: on_failure still sees the metadata
    return Message(plain_data(origin), result.metadata)
