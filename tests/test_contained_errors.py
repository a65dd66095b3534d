"""Errors in acknowledgers and failure handlers are contained (API.md, second part; issue 11).

An ``ack`` that raises leaves the messages of that call un-acked, an ``on_failure`` handler that
raises leaves the messages it was given un-acked (a broker delivers them again); both are counted
(``ack_errors``, ``failure_handler_errors``, and in ``unsettled``), logged on the ``trioflow``
logger and reported to instruments, and the run goes on. ``tf.Fatal`` from either still stops it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.abc import Instrument
from trioflow.testing import TestSource


class Recorder:
    """An acknowledger that records what it is told."""

    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.failed: list[Any] = []

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        self.acked += [m.data for m in successful]
        self.failed += [m.data for m in failed]


class Broken:
    """An acknowledger whose calls raise the exceptions in ``errors``, in turn (the last one
    again once they run out)."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[list[Any]] = []

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        self.calls.append([m.data for m in [*successful, *failed]])
        error = self.errors.pop(0) if len(self.errors) > 1 else self.errors[0]
        raise error


class Hooks(Instrument):
    """Records the contained-error hooks."""

    def __init__(self) -> None:
        self.ack_errors: list[tuple[Any, list[Any], BaseException]] = []
        self.handler_errors: list[tuple[list[Any], BaseException]] = []

    def ack_error(self, acknowledger: Any, messages: list[Any], exc: BaseException) -> None:
        self.ack_errors.append((acknowledger, [m.data for m in messages], exc))

    def failure_handler_error(self, messages: list[Any], exc: BaseException) -> None:
        self.handler_errors.append(([m.data for m in messages], exc))


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    """Whether a record of the ``trioflow`` logger mentions ``text`` (message or traceback)."""
    formatter = logging.Formatter()
    return any(
        text in formatter.format(r)
        for r in caplog.records
        if r.name == "trioflow" or r.name.startswith("trioflow.")
    )


async def one_second(x: Any) -> None:
    await trio.sleep(1)


def accounts(report: tf.RunReport) -> bool:
    return report.received == report.acked + report.failed + report.unsettled


async def test_ack_error_leaves_its_messages_unsettled_and_the_run_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``ack`` raising RuntimeError: its messages are unsettled and counted in ``ack_errors``,
    the hook and the log see it, and the other acknowledger's messages are acked."""
    caplog.set_level(logging.DEBUG, logger="trioflow")
    good, error = Recorder(), RuntimeError("broker connection blipped")
    broken = Broken(error)
    items = [tf.Message(i, acknowledger=broken if i % 3 == 0 else good) for i in range(12)]
    hooks = Hooks()
    with trio.fail_after(100):
        report = await (tf.from_iterable(items) | tf.sink(one_second)).run(telemetry=hooks)
    lost = sorted(x for call in broken.calls for x in call)
    assert lost == [0, 3, 6, 9]
    assert sorted(good.acked) == [i for i in range(12) if i % 3]
    assert (report.received, report.acked, report.failed) == (12, 8, 0)
    assert report.unsettled == report.ack_errors == 4
    assert accounts(report)
    assert sorted(x for _, data, _ in hooks.ack_errors for x in data) == lost
    assert all(a is broken and exc is error for a, _, exc in hooks.ack_errors)
    assert logged(caplog, "broker connection blipped")


async def test_ack_error_on_failed_messages_is_contained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An ``ack`` raising for failed messages: they are unsettled (not counted as failed)."""
    broken = Broken(RuntimeError("nack refused"))

    def reject(x: int) -> None:
        raise ValueError(x)

    items = [tf.Message(i, acknowledger=broken) for i in range(3)]
    with trio.fail_after(100):
        report = await (tf.from_iterable(items) | tf.sink(reject)).run()
    assert sorted(x for call in broken.calls for x in call) == [0, 1, 2]
    assert (report.received, report.acked, report.failed) == (3, 0, 0)
    assert report.unsettled == report.ack_errors == 3
    assert accounts(report)


async def test_fatal_from_ack_still_stops_after_a_contained_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A RuntimeError from one ``ack`` call is contained; a ``tf.Fatal`` from a later call stops
    the run with ``PipelineError`` caused by that ``Fatal``."""
    fatal = tf.Fatal("credentials revoked")
    broken = Broken(RuntimeError("blip"), fatal)
    items = [tf.Message(i, acknowledger=broken) for i in range(10)]
    with trio.fail_after(100), pytest.raises(tf.PipelineError) as info:
        await (tf.from_iterable(items) | tf.sink(one_second)).run()
    assert info.value.__cause__ is fatal
    assert len(broken.calls) >= 2


async def test_failure_handler_error_leaves_its_messages_unacked_and_handling_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``on_failure`` raising RuntimeError: the messages it was given are not acked at all, are
    counted in ``failure_handler_errors`` and ``unsettled``, reach the hook and the log; later
    groups are handled and acked as failed."""
    caplog.set_level(logging.DEBUG, logger="trioflow")
    error = RuntimeError("dead-letter queue unreachable")
    groups: list[list[int]] = []

    async def dead_letter(messages: list[tf.Message[Any]]) -> None:
        groups.append([m.data for m in messages])
        if len(groups) == 1:
            raise error

    async def odd_fails(x: int) -> None:
        await trio.sleep(1)
        if x % 2:
            raise ValueError(x)

    src = TestSource(range(10))
    hooks = Hooks()
    with trio.fail_after(100):
        report = await (src | tf.sink(odd_fails)).on_failure(dead_letter).run(telemetry=hooks)
    assert len(groups) >= 2  # the handler kept being called after it raised
    lost = groups[0]
    assert lost
    handled_later = sorted(x for g in groups[1:] for x in g)
    assert sorted(lost + handled_later) == [1, 3, 5, 7, 9]
    # the first group's messages reached their acknowledger neither way
    assert not set(lost) & set(src.acked)
    assert not set(lost) & {d for d, _ in src.failed}
    assert sorted(d for d, _ in src.failed) == handled_later
    assert sorted(src.acked) == [0, 2, 4, 6, 8]
    assert report.unsettled == report.failure_handler_errors == len(lost)
    assert (report.acked, report.failed) == (5, len(handled_later))
    assert accounts(report)
    assert [(data, exc) for data, exc in hooks.handler_errors] == [(lost, error)]
    assert logged(caplog, "dead-letter queue unreachable")


async def test_fatal_from_failure_handler_still_stops_after_a_contained_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A RuntimeError from ``on_failure`` is contained; a ``tf.Fatal`` from a later call stops
    the run with ``PipelineError`` caused by that ``Fatal``."""
    fatal = tf.Fatal("dead-letter credentials revoked")
    calls = 0

    async def dead_letter(messages: list[tf.Message[Any]]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("blip") if calls == 1 else fatal

    async def fails(x: int) -> None:
        await trio.sleep(1)
        raise ValueError(x)

    with trio.fail_after(100), pytest.raises(tf.PipelineError) as info:
        await (tf.from_iterable(range(10)) | tf.sink(fails)).on_failure(dead_letter).run()
    assert info.value.__cause__ is fatal
    assert calls == 2


async def test_contained_errors_are_in_the_snapshot_and_prometheus() -> None:
    """The counts reach a service's live snapshot and its /metrics text too."""
    from trioflow.observe import prometheus_text

    msgs = [tf.Message(i, acknowledger=Broken(RuntimeError("blip"))) for i in range(3)]
    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_iterable(msgs) | tf.sink(lambda x: None)).serve)
        report = await handle.wait()
        totals = handle.snapshot()["totals"]
        text = prometheus_text(handle).decode()
    assert report.ack_errors == 3
    assert totals["ack_errors"] == 3
    assert totals["failure_handler_errors"] == 0
    assert "trioflow_ack_errors_total" in text
