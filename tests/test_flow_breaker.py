"""``breaker=tf.Breaker(failures, reset)``: an outage pauses the sources, loses nothing, probes
every ``reset`` seconds and resumes on the first success (MockClock)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.abc import Instrument
from trioflow.testing import TestSource

OUTAGE_START, OUTAGE = 5.0, 60.0


class Flaky:
    """A downstream that takes 10 ms per call and fails every call ending during its outage."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.calls = 0
        self.failed_calls = 0
        self.seen: dict[Any, list[int]] = defaultdict(list)

    def down(self) -> bool:
        now = trio.current_time() - self.t0
        return OUTAGE_START <= now < OUTAGE_START + OUTAGE

    async def __call__(self, item: int) -> int:
        self.calls += 1
        await trio.sleep(0.01)
        if self.down():
            self.failed_calls += 1
            raise ConnectionError("the database is down")
        self.seen[item % 10].append(item)
        return item


class States(Instrument):
    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    def breaker(self, stage: str, state: str) -> None:
        self.events.append((trio.current_time(), stage, state))


@pytest.mark.parametrize("keyed", [False, True])
async def test_outage_pauses_sources_and_loses_nothing(
    autojump_clock: trio.testing.MockClock, keyed: bool
) -> None:
    items = 20_000
    src = TestSource(range(items))
    t0 = trio.current_time()
    down = Flaky(t0)
    breaker = tf.Breaker(failures=5, reset=10.0)
    if keyed:
        stage = tf.process(down, n=4, partition_by=lambda x: x % 10, breaker=breaker, name="db")
    else:
        stage = tf.process(down, n=4, breaker=breaker, name="db")
    out: list[int] = []
    pipeline = src | stage | tf.sink(out.append)
    states = States()
    pulled_during: list[int] = []
    in_flight: list[int] = []
    snapshots: list[str | None] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            lambda task_status: pipeline.serve(telemetry=states, task_status=task_status)
        )
        await trio.sleep(OUTAGE_START + 2.0)
        for _ in range(11):  # t = 7 .. 57: the outage goes on
            (entry,) = [s for s in handle.snapshot()["stages"] if s["name"] == "db"]
            snapshots.append(entry["breaker"])
            pulled_during.append(src.pulled)
            in_flight.append(src.pulled - src.settled)
            assert handle.metrics.stages["db"].breaker in ("open", "half_open")
            await trio.sleep(5.0)
        report = await handle.wait()

    # nothing failed nor dead-lettered; all acked once the outage is over
    assert src.failed == []
    assert report.failed == 0
    assert sorted(src.acked) == list(range(items))
    assert sorted(out) == list(range(items))
    # the sources stopped pulling: in flight stayed where it was when the breaker opened
    assert len(set(pulled_during)) == 1
    assert pulled_during[0] < items
    assert len(set(in_flight)) == 1
    # the stage's buffer and cap (1024 each), the sink's buffer: a few thousand at most
    assert 0 < in_flight[0] <= 4 * 1024
    # about failures + outage / reset calls failed: the ones that opened it (and the other
    # calls already in flight), then one probe per reset
    probes = int(OUTAGE / 10.0)
    assert 5 + probes - 1 <= down.failed_calls <= 5 + 3 + probes
    # its states were seen by instruments, snapshots and the report
    assert set(snapshots) <= {"open", "half_open"}
    assert "open" in snapshots
    kinds = [state for _, _, state in states.events]
    assert kinds[0] == "open"
    assert kinds[-1] == "closed"
    assert kinds.count("half_open") == probes
    assert all(stage == "db" for _, stage, _ in states.events)
    opened = states.events[0][0] - t0
    assert OUTAGE_START <= opened <= OUTAGE_START + 0.1
    assert report.stages["db"].breaker == "closed"
    if keyed:
        for key, seen in down.seen.items():
            assert seen == sorted(seen), f"key {key} out of order"


async def test_isolated_failures_still_fail(autojump_clock: trio.testing.MockClock) -> None:
    # a poison item among good ones is not an outage: it fails, the breaker stays closed
    src = TestSource(range(100))

    async def fn(x: int) -> int:
        await trio.sleep(0.01)
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        return x

    report = await (
        src | tf.sink(fn, n=2, breaker=tf.Breaker(failures=3, reset=1.0), name="fn")
    ).run()
    assert sorted(x for x, _ in src.failed) == list(range(3, 100, 10))
    assert report.failed_by_reason == {"ValueError": 10}
    assert report.stages["fn"].breaker == "closed"


async def test_failures_at_the_end_of_input_fail(autojump_clock: trio.testing.MockClock) -> None:
    # failures below the threshold with nothing after them: failed at the end, not held forever
    src = TestSource(range(3))

    async def fn(x: int) -> int:
        raise ValueError("bad")

    report = await (src | tf.sink(fn, breaker=tf.Breaker(failures=5, reset=1.0))).run()
    assert [x for x, _ in src.failed] == [0, 1, 2]
    assert report.failed == 3


async def test_user_pause_and_breaker_do_not_undo_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = TestSource(range(100_000))
    t0 = trio.current_time()
    down = Flaky(t0)
    pipeline = src | tf.sink(down, n=2, breaker=tf.Breaker(failures=2, reset=10.0), name="db")
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(OUTAGE_START + 1.0)  # the breaker is open
        handle.pause()
        handle.resume()  # the user's resume does not lift the breaker's pause
        pulled = src.pulled
        await trio.sleep(5.0)
        assert src.pulled == pulled
        assert not handle.paused
        handle.pause()  # a user's pause outlives the breaker closing
        await trio.sleep(OUTAGE + 10.0)
        (entry,) = [s for s in handle.snapshot()["stages"] if s["name"] == "db"]
        assert entry["breaker"] == "closed"
        pulled = src.pulled
        await trio.sleep(5.0)
        assert src.pulled == pulled
        handle.resume()
        await trio.sleep(1.0)
        assert src.pulled > pulled
        handle.stop()
        await handle.wait()
    assert src.failed == []


def test_no_breaker_is_none_in_snapshot_and_report() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start((tf.from_iterable(range(3)) | tf.sink(print)).serve)
            assert [s["breaker"] for s in handle.snapshot()["stages"]] == [None]
            report = await handle.wait()
            assert report.stages["print"].breaker is None

    trio.run(main)


async def test_drain_during_an_outage_leaves_waiting_items_unsettled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    src = TestSource(range(10_000))
    down = Flaky(trio.current_time())
    sink = tf.sink(down, n=2, breaker=tf.Breaker(failures=3, reset=10.0))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def stop_later() -> None:
            await trio.sleep(OUTAGE_START + 5.0)
            stop.set()

        nursery.start_soon(stop_later)
        report = await (src | sink).run(stop=stop, drain_timeout=20.0)
    # still down when the drain ran out: the waiting items are neither failed nor acked
    assert report.failed == 0
    assert src.failed == []
    assert report.unsettled > 0
    assert report.received == report.acked + report.unsettled
