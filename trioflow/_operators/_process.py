"""``process`` and ``sink``: worker pools over chunks.

A worker takes a chunk of what is queued (all of it with ``n=1``; a fair share with ``n>1``),
calls the function item by item, and hands results on. Calls that do not suspend cost no task
switch: the worker only parks when its input is empty or its output is full. When the next stage
is idle and waiting, results are handed over after each item, so a slow (suspending) function
does not hold finished items back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from trio.lowlevel import ParkingLot

from .._exceptions import Fatal, StageTimeout
from .._lazy import require
from .._message import Message
from .._queue import ChunkQueue
from .._stages import Process
from .._topology import Node
from ._context import Emitter, StageContext, is_fatal, step_counter

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
    n = stage.n
    if stage.partition_by is not None:
        return _partitioned(node, stage, inq, out, ctx, call, is_async)
    take = node.buffer if n == 1 else max(1, node.buffer // n)
    seq = _Sequencer() if stage.ordered and n > 1 else None
    ctx.workers = n
    for _ in range(n):
        out.add_producer()
    return [
        partial(worker, inq, out, ctx, call, is_async, take, n, stage.messages, seq)
        for _ in range(n)
    ]


def make_call(stage: Process[Any, Any], ctx: StageContext) -> tuple[Call, bool]:
    """The per-item call with thread, timeout and retry applied; and whether it is awaited."""
    fn: Call = stage.fn
    is_async = stage.is_async
    if stage.thread:
        abandon = stage.timeout is not None
        sync_fn = fn  # bound now: ``fn`` is rebound to the wrapper below

        async def in_thread(value: Any) -> Any:
            return await trio.to_thread.run_sync(sync_fn, value, abandon_on_cancel=abandon)

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
    limiter = trio.CapacityLimiter(stage.n)
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
    settler, telemetry = ctx.settler, ctx.telemetry

    async def retried(value: Any) -> Any:
        attempt = 1
        while True:
            try:
                if is_async:
                    return await fn(value)
                return fn(value)
            except Exception as exc:
                if is_fatal(exc) or not isinstance(exc, policy.on) or attempt >= policy.attempts:
                    raise
                _exception_event(ctx, value, exc)
                delay = policy.backoff.delay(attempt)
                settler.retried += 1
                if telemetry.has_retry:
                    telemetry.emit("retry", ctx.label, value, attempt + 1, exc, delay)
            await trio.sleep(delay)
            attempt += 1

    return retried


class _Sequencer:
    """Hands out chunk tickets and lets workers emit strictly in ticket order."""

    __slots__ = ("lot", "next_ticket", "turn")

    def __init__(self) -> None:
        self.next_ticket = 0
        self.turn = 0
        self.lot = ParkingLot()


def _view(value: Any, origin: Any) -> Message[Any]:
    if type(origin) is Message:
        return Message(value, origin.metadata, origin.acknowledger)
    return Message(value)


async def worker(
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    call: Call,
    is_async: bool,
    take: int,
    share: int,
    messages: bool,
    seq: _Sequencer | None,
) -> None:
    """Take chunks from ``inq`` until it ends; call ``call`` per item; hand results to ``out``."""
    clock = trio.current_time
    steps = step_counter()  # .._schedule_points: how often this task yielded to trio
    flushable = seq is None  # an ordered pool emits whole chunks, in turn
    # Whether this stage's calls wait (I/O): then results are handed over one by one as they
    # finish; calls that never wait are handed over by the chunk, which is what makes them cheap.
    suspends = False
    try:
        while True:
            got = await inq.get(take, share)
            if got is None:
                return
            values, origins = got
            ticket = -1
            if seq is not None:
                ticket = seq.next_ticket
                seq.next_ticket += 1
            n = len(values)
            ctx.chunk_start(n)
            started = clock()
            inputs = (
                [_view(v, o) for v, o in zip(values, origins, strict=True)] if messages else values
            )
            results: list[Any] = []
            append = results.append
            failures: list[int] | None = None
            lo = accounted = 0
            if is_async:
                for value in inputs:
                    before = steps._schedule_points
                    try:
                        append(await call(value))
                    except Exception as exc:
                        if is_fatal(exc):
                            raise
                        if failures is None:
                            failures = []
                        failures.append(len(results))
                        append(exc)
                        _exception_event(ctx, value, exc)
                    if steps._schedule_points != before:
                        suspends = True
                    if flushable and (suspends or out.waiting):
                        # The call waited (so the next one may wait long: hand over what is
                        # done rather than hold it), or the next stage is idle and hungry.
                        hi = len(results)
                        await _emit(out, ctx, inputs, results, origins, failures, lo, hi, messages)
                        lo = hi
                        # live figures follow what was handed over, at most every
                        # ACCOUNT_EVERY s: the histogram is not touched per item
                        now = clock()
                        if now - started >= ACCOUNT_EVERY:
                            ctx.chunk_stop(hi - accounted, now - started)
                            started = now
                            accounted = hi
            else:
                for value in inputs:
                    try:
                        append(call(value))
                    except Exception as exc:
                        if is_fatal(exc):
                            raise
                        if failures is None:
                            failures = []
                        failures.append(len(results))
                        append(exc)
                        _exception_event(ctx, value, exc)
            if seq is not None:
                while seq.turn != ticket:
                    await seq.lot.park()
            await _emit(out, ctx, inputs, results, origins, failures, lo, len(results), messages)
            if seq is not None:
                seq.turn += 1
                seq.lot.unpark_all()
            if n > accounted:
                ctx.chunk_stop(n - accounted, clock() - started)
    finally:
        out.close_producer()


def _exception_event(ctx: StageContext, value: Any, exc: BaseException) -> None:
    if ctx.telemetry.has_stage_exception:
        ctx.telemetry.emit("stage_exception", ctx.label, value, exc)


async def _emit(
    out: Emitter,
    ctx: StageContext,
    inputs: list[Any],
    results: list[Any],
    origins: list[Any],
    failures: list[int] | None,
    lo: int,
    hi: int,
    messages: bool,
) -> None:
    """Hand ``results[lo:hi]`` on; settle the failed ones among them."""
    if hi <= lo:
        return
    whole = lo == 0 and hi == len(origins)
    vals = results if whole else results[lo:hi]
    origs = origins if whole else origins[lo:hi]
    failed_any = False
    if failures is not None and failures[-1] >= lo:
        bad = {i - lo for i in failures if lo <= i < hi}
        if bad:
            failed_any = True
            for i in bad:
                ctx.fail(origs[i], inputs[lo + i], vals[i])
            keep = [i for i in range(hi - lo) if i not in bad]
            vals = [vals[i] for i in keep]
            origs = [origs[i] for i in keep]
    if messages:
        vals, origs, marked = _unwrap(ctx, vals, origs)
        failed_any = failed_any or marked
    if vals:
        await out.put_many(vals, origs)
    if failed_any:
        await ctx.settler.room()


def _unwrap(
    ctx: StageContext, vals: list[Any], origs: list[Any]
) -> tuple[list[Any], list[Any], bool]:
    """``messages=True``: results are messages; a failed one fails its item, others carry data."""
    out_v: list[Any] = []
    out_o: list[Any] = []
    marked = False
    for result, origin in zip(vals, origs, strict=True):
        if isinstance(result, Message):
            if result.status == "failed":
                marked = True
                ctx.fail(
                    origin, result.data, result.reason if result.reason is not None else "failed"
                )
                continue
            result = result.data
        out_v.append(result)
        out_o.append(origin)
    return out_v, out_o, marked


def _partitioned(
    node: Node,
    stage: Process[Any, Any],
    inq: ChunkQueue,
    out: Emitter,
    ctx: StageContext,
    call: Call,
    is_async: bool,
) -> list[Callable[[], Awaitable[None]]]:
    """``partition_by``: a dispatcher sends each key to one worker, which keeps its order."""
    n = stage.n
    key_fn = stage.partition_by
    assert key_fn is not None
    per_worker = max(1, node.buffer // n)
    queues = [ChunkQueue(per_worker, f"{ctx.label}[{i}]") for i in range(n)]
    ctx.workers = n
    for q in queues:
        q.add_producer()
    for _ in range(n):
        out.add_producer()

    async def dispatch() -> None:
        try:
            while True:
                got = await inq.get(node.buffer)
                if got is None:
                    return
                values, origins = got
                parts: list[tuple[list[Any], list[Any]]] = [([], []) for _ in range(n)]
                failed = False
                for value, origin in zip(values, origins, strict=True):
                    try:
                        idx = hash(key_fn(value)) % n
                    except Exception as exc:
                        if is_fatal(exc):
                            raise
                        ctx.fail(origin, value, exc)
                        failed = True
                        continue
                    part = parts[idx]
                    part[0].append(value)
                    part[1].append(origin)
                for q, (vals, origs) in zip(queues, parts, strict=True):
                    if vals:
                        await q.put_many(vals, origs)
                if failed:
                    await ctx.settler.room()
        finally:
            for q in queues:
                q.close_producer()

    workers: list[Callable[[], Awaitable[None]]] = [
        partial(worker, q, out, ctx, call, is_async, per_worker, 1, stage.messages, None)
        for q in queues
    ]
    return [dispatch, *workers]
