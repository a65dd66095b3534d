"""Messages all the way through (API.md, second part; issue 12): metadata that flows, and the
per-message failure action a broker source honours."""

from __future__ import annotations

from typing import Any

import pytest

import trioflow as tf


class Recorder:
    def __init__(self) -> None:
        self.acked: list[tf.Message[Any]] = []
        self.failed: list[tf.Message[Any]] = []

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        self.acked += successful
        self.failed += failed


def test_with_metadata_is_a_copy_with_the_dict_updated() -> None:
    msg = tf.Message(1, metadata={"id": "1-0"})
    new = msg.with_metadata(tenant="acme")
    assert new.metadata == {"id": "1-0", "tenant": "acme"}
    assert msg.metadata == {"id": "1-0"}
    assert new.data == 1
    assert new.acknowledger is msg.acknowledger


def test_replace_takes_data_and_metadata() -> None:
    msg = tf.Message(b"raw", metadata={"id": "1-0"})
    new = msg.replace({"k": 1}, metadata={"schema": 2})
    assert (new.data, new.metadata) == ({"k": 1}, {"schema": 2})
    assert msg.replace(2).metadata is msg.metadata


def test_fail_takes_an_action() -> None:
    msg = tf.Message(1)
    assert msg.fail("bad").action is None
    assert msg.fail("bad", action="dead_letter").action == "dead_letter"
    with pytest.raises(ValueError, match=r"^action='later' must be one of 'redeliver', "):
        msg.fail("bad", action="later")  # type: ignore[arg-type]


async def test_metadata_set_by_a_stage_reaches_later_stages_and_the_acknowledger() -> None:
    rec = Recorder()
    seen: list[dict[str, Any]] = []

    async def tag(m: tf.Message[int]) -> tf.Message[int]:
        return m.with_metadata(parity=m.data % 2)

    async def look(m: tf.Message[int]) -> tf.Message[int]:
        seen.append(dict(m.metadata))
        return m

    src = tf.from_iterable([tf.Message(i, {"id": i}, rec) for i in range(4)])
    await (src | tf.process(tag, messages=True) | tf.process(look, messages=True)).run()
    assert seen == [{"id": i, "parity": i % 2} for i in range(4)]
    assert sorted((m.data, m.metadata["parity"]) for m in rec.acked) == [
        (i, i % 2) for i in range(4)
    ]


async def test_metadata_and_action_reach_on_failure_and_the_acknowledger() -> None:
    rec = Recorder()
    handled: list[tf.Message[Any]] = []

    async def check(m: tf.Message[int]) -> tf.Message[int]:
        m = m.with_metadata(checked=True)
        if m.data == 2:
            return m.fail("odd one", action="discard")
        return m

    src = tf.from_iterable([tf.Message(i, {"id": i}, rec) for i in range(4)])
    report = await (src | tf.process(check, messages=True)).on_failure(handled.extend).run()
    assert report.failed == 1
    [failed] = handled
    assert (failed.data, failed.reason, failed.action) == (2, "odd one", "discard")
    assert failed.metadata == {"id": 2, "checked": True}
    assert [(m.data, m.action, m.metadata["checked"]) for m in rec.failed] == [(2, "discard", True)]


async def test_plain_data_metadata_reaches_on_failure() -> None:
    handled: list[tf.Message[Any]] = []

    async def check(m: tf.Message[int]) -> tf.Message[int]:
        return m.with_metadata(why="too big").fail("big") if m.data > 1 else m

    await (
        (tf.from_iterable(range(3)) | tf.process(check, messages=True))
        .on_failure(handled.extend)
        .run()
    )
    assert [(m.data, m.metadata) for m in handled] == [(2, {"why": "too big"})]


async def test_a_message_failed_at_the_source_keeps_its_action() -> None:
    rec = Recorder()
    msgs = [
        tf.Message(0, acknowledger=rec),
        tf.Message(1, acknowledger=rec).fail("bad", action="redeliver"),
    ]
    await (tf.from_iterable(msgs) | tf.sink(lambda x: None)).run()
    assert [(m.data, m.action) for m in rec.failed] == [(1, "redeliver")]
