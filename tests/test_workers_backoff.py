"""The supervisor's restart policy, exactly, under trio's MockClock: the backoff doubles from
0.5 s to 30 s, starts over after a worker ran a minute, and stops at a clean exit, a usage
error, or a drain. (The real processes are in tests/test_workers.py.)"""

from __future__ import annotations

import argparse
import json
from io import StringIO

import trio

from trioflow._workers import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    HEALTHY_AFTER,
    _mark,
    _Supervisor,
    _Worker,
)


class Scripted(_Supervisor):
    """A supervisor whose worker runs are scripted: (seconds it runs, exit status)."""

    runs: list[tuple[float, int]]
    started: list[float]

    async def run_once(self, w: _Worker) -> int:
        self.started.append(trio.current_time())
        seconds, status = self.runs.pop(0)
        await trio.sleep(seconds)
        return status


def supervisor(runs: list[tuple[float, int]]) -> Scripted:
    sup = Scripted(argparse.Namespace(), [_Worker(0)], err=StringIO())
    sup.runs = runs
    sup.started = []
    return sup


async def test_backoff_doubles_up_to_the_cap(autojump_clock: trio.abc.Clock) -> None:
    sup = supervisor([(0.0, 3)] * 9 + [(0.0, 0)])
    await sup.run_worker(sup.workers[0])
    gaps = [round(b - a, 6) for a, b in zip(sup.started, sup.started[1:], strict=False)]
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert (BACKOFF_MIN, BACKOFF_MAX) == (0.5, 30.0)
    assert sup.workers[0].restarts == 9
    assert sup.workers[0].status == 0  # a clean exit ends the worker: not restarted
    log = sup.err.getvalue()  # type: ignore[attr-defined]
    assert "worker 0 exit status 3: restarting in 0.5 s" in log
    assert "worker 0 exit status 3: restarting in 30 s" in log


async def test_a_worker_that_ran_a_minute_restarts_quickly_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    sup = supervisor([(0.0, 3), (0.0, 3), (HEALTHY_AFTER, -9), (0.0, 3), (0.0, 2)])
    await sup.run_worker(sup.workers[0])
    s = sup.started
    assert [round(s[1] - s[0], 6), round(s[2] - s[1], 6)] == [0.5, 1.0]
    # killed after a minute of work: the backoff starts over at 0.5 s
    assert round(s[3] - (s[2] + HEALTHY_AFTER), 6) == 0.5
    assert round(s[4] - s[3], 6) == 1.0
    # exit status 2 (a usage error) would only repeat: not restarted
    assert sup.workers[0].restarts == 4
    assert "worker 0 exit status 2: not restarted" in sup.err.getvalue()  # type: ignore[attr-defined]
    assert "worker 0 killed by SIGKILL: restarting in 0.5 s" in sup.err.getvalue()  # type: ignore[attr-defined]


async def test_a_drain_during_the_backoff_ends_the_worker(autojump_clock: trio.abc.Clock) -> None:
    sup = supervisor([(0.0, 3), (0.0, 3)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run_worker, sup.workers[0])
        await trio.sleep(0.2)  # in the first backoff (0.5 s)
        sup.drain()
    assert trio.current_time() == 0.2  # the wait ended at the drain, not at 0.5 s
    assert sup.started == [0.0]
    assert sup.workers[0].restarts == 0


def test_worker_lines_are_marked() -> None:
    assert _mark("trioflow: draining", 2) == "[worker 2] trioflow: draining"
    record = '{"level": "WARNING", "message": "stage \'price\' failed an item"}'
    assert json.loads(_mark(record, 1)) == {
        "level": "WARNING",
        "message": "stage 'price' failed an item",
        "worker": 1,
    }
    assert _mark("{not json", 0) == "[worker 0] {not json"
