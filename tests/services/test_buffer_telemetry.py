"""Buffering telemetry: demand updates, items enqueued, entry buffer full (as PhoenixMicro)."""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf
from trioflow.abc import Instrument


class Buffering(Instrument):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def demand(self, source: str, room: int) -> None:
        self.events.append(("demand", source, room))

    def enqueued(self, source: str, items: int) -> None:
        self.events.append(("enqueued", source, items))

    def buffer_full(self, source: str) -> None:
        self.events.append(("buffer_full", source))


async def test_demand_enqueued_and_buffer_full() -> None:
    gate = trio.Event()

    async def slow(x: int) -> None:
        await gate.wait()

    tel = Buffering()
    pipeline = tf.from_iterable(range(10), name="numbers") | tf.sink(slow, buffer=4)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            lambda task_status: pipeline.serve(telemetry=tel, task_status=task_status)
        )
        await trio.testing.wait_all_tasks_blocked()
        # first demand is the whole entry buffer; the hand-over fills it
        assert tel.events[:3] == [
            ("demand", "numbers", 4),
            ("enqueued", "numbers", 4),
            ("buffer_full", "numbers"),
        ]
        gate.set()
        report = await handle.wait()
    assert report.acked == 10
    enqueued = sum(e[2] for e in tel.events if e[0] == "enqueued")
    assert enqueued == 10
    demands = [e for e in tel.events if e[0] == "demand"]
    assert all(room > 0 for _, _, room in demands)


async def test_no_instrument_no_events_and_others_unaffected() -> None:
    class Other(Instrument):
        acks = 0

        def ack(self, acknowledger: Any, successful: int, failed: int) -> None:
            self.acks += 1

    report = await (tf.from_iterable(range(5)) | tf.sink(lambda x: None)).run(telemetry=Other())
    assert report.acked == 5
