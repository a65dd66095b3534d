"""Instruments: every event fires with the documented arguments; a raising one is removed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.abc import Instrument


class Recorder(Instrument):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def pipeline_start(self, pipeline: Any) -> None:
        self.events.append(("pipeline_start",))

    def pipeline_stop(self, report: Any) -> None:
        self.events.append(("pipeline_stop", report.received))

    def drain_start(self) -> None:
        self.events.append(("drain_start",))

    def drain_expired(self, unsettled: int) -> None:
        self.events.append(("drain_expired", unsettled))

    def stage_start(self, stage: str, items: int) -> None:
        self.events.append(("stage_start", stage, items))

    def stage_stop(self, stage: str, items: int, seconds: float) -> None:
        self.events.append(("stage_stop", stage, items, seconds))

    def stage_exception(self, stage: str, data: Any, exc: BaseException) -> None:
        self.events.append(("stage_exception", stage, data, type(exc).__name__))

    def retry(self, stage: str, data: Any, attempt: int, exc: BaseException, delay: float) -> None:
        self.events.append(("retry", stage, data, attempt, delay))

    def failure(self, stage: str, data: Any, reason: BaseException | str) -> None:
        self.events.append(("failure", stage, data))

    def batch_start(self, stage: str) -> None:
        self.events.append(("batch_start", stage))

    def batch(self, stage: str, size: int, trigger: str) -> None:
        self.events.append(("batch", stage, size, trigger))

    def dead_letter(self, messages: int) -> None:
        self.events.append(("dead_letter", messages))

    def ack(self, acknowledger: Any, successful: int, failed: int) -> None:
        self.events.append(("ack", successful, failed))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]


class Raising(Instrument):
    calls = 0

    def stage_stop(self, stage: str, items: int, seconds: float) -> None:
        type(self).calls += 1
        raise RuntimeError("instrument bug")

    def failure(self, stage: str, data: Any, reason: BaseException | str) -> None:
        type(self).calls += 1
        raise RuntimeError("instrument bug")


calls = 0


async def flaky(x: int) -> int:
    global calls
    calls += 1
    if calls == 1:
        raise ConnectionError("blip")
    await trio.sleep(1)
    if x == 3:
        raise ValueError("bad item")
    return x


async def save(batch: list[int]) -> None:
    await trio.sleep(0.5)


def pipeline() -> tf.Pipeline:
    retry = tf.Retry(attempts=2, backoff=tf.Backoff.constant(0.25), on=(ConnectionError,))
    return (
        tf.from_iterable(range(6))
        | tf.process(flaky, retry=retry)
        | tf.batch(2, 10.0)
        | tf.sink(save)
    ).on_failure(lambda messages: None)


async def test_every_event_with_its_arguments(autojump_clock: trio.abc.Clock) -> None:
    global calls
    calls = 0
    rec = Recorder()
    report = await pipeline().run(telemetry=rec)
    assert rec.events[0] == ("pipeline_start",)
    assert rec.events[-1] == ("pipeline_stop", 6)
    assert rec.named("retry") == [("retry", "flaky", 0, 2, 0.25)]
    assert rec.named("stage_exception") == [
        ("stage_exception", "flaky", 0, "ConnectionError"),
        ("stage_exception", "flaky", 3, "ValueError"),
    ]
    assert rec.named("failure") == [("failure", "flaky", 3)]
    assert rec.named("dead_letter") == [("dead_letter", 1)]
    assert rec.named("batch") == [
        ("batch", "batch(2, 10.0)", 2, "size"),
        ("batch", "batch(2, 10.0)", 2, "size"),
        ("batch", "batch(2, 10.0)", 1, "end"),
    ]
    assert len(rec.named("batch_start")) == 3
    # per chunk: the items every stage_stop reports add up to the items through the stage
    stops = [e for e in rec.named("stage_stop") if e[1] == "flaky"]
    assert sum(e[2] for e in stops) == 6
    starts = [e for e in rec.named("stage_start") if e[1] == "flaky"]
    assert sum(e[2] for e in starts) == 6
    assert sum(e[3] for e in stops) == pytest.approx(report.stages["flaky"].busy)
    assert report.dead_lettered == 1
    assert not rec.named("ack")  # plain data has no acknowledger


async def test_drain_events(autojump_clock: trio.abc.Clock) -> None:
    async def stuck(x: int) -> int:
        await trio.sleep(100)
        return x

    rec = Recorder()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: (tf.from_iterable(range(3)) | tf.sink(stuck)).run(
                stop=stop, drain_timeout=5.0, telemetry=rec
            )
        )
        await trio.sleep(1)
        stop.set()
    assert rec.named("drain_start") == [("drain_start",)]
    assert rec.named("drain_expired") == [("drain_expired", 3)]


async def test_raising_instrument_is_removed_and_logged_once(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    global calls
    calls = 0
    Raising.calls = 0
    rec = Recorder()
    with caplog.at_level(logging.ERROR, logger="trioflow"):
        report = await pipeline().run(telemetry=[Raising(), rec])
    # the pipeline did its work, the other instrument saw everything
    assert report.received == 6
    assert report.acked == 5
    assert report.failed == 1
    assert rec.events[-1] == ("pipeline_stop", 6)
    assert rec.named("failure") == [("failure", "flaky", 3)]
    # removed at its first raise: never called again, though its other hook had events
    assert Raising.calls == 1
    records = [r for r in caplog.records if "raised in" in r.getMessage()]
    assert len(records) == 1
    assert "it is removed from this run" in records[0].getMessage()
    assert records[0].exc_info is not None


async def test_instrument_listed_twice_is_logged_once(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    Raising.calls = 0
    bad = Raising()
    with caplog.at_level(logging.ERROR, logger="trioflow"):
        await (tf.from_iterable(range(3)) | tf.process(lambda x: x)).run(telemetry=[bad, bad])
    assert len([r for r in caplog.records if "raised in" in r.getMessage()]) == 1
