"""Failure actions, delivery counts and max_deliveries of RedisStreamSource, on a real server.

Each test uses its own stream and group on the session's redis-server (see ``conftest.py``).
A redelivered entry comes back through the source's claims (``XAUTOCLAIM``), so these tests
use a short ``claim_idle``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSource, connect

from .servers import RedisServer, serve_until

pytestmark = pytest.mark.server

_names = itertools.count()
#: fast claims, so that a redelivery comes back in a fraction of a second
FAST = {"claim_idle": 0.2, "block": 0.05}


def names() -> tuple[str, str]:
    n = next(_names)
    return f"actions{n}", f"agroup{n}"


async def fill(server: RedisServer, stream: str, count: int) -> None:
    async with connect(port=server.port) as client:
        for i in range(count):
            await client.xadd(stream, {"n": str(i)})


async def broker_state(server: RedisServer, stream: str, group: str) -> tuple[int, list[str]]:
    """(entries pending in the group, the ``n`` of each dead-lettered entry)."""
    async with connect(port=server.port) as client:
        info = await client.xpending(stream, group)
        dead = await client.xrange(f"{stream}:dead")
    return int(info.pending), [dict(d.field_values)["n"] for d in dead]


@pytest.mark.parametrize("on_failure", ["dead_letter", "discard", "redeliver"])
async def test_each_action_as_the_default(redis_server: RedisServer, on_failure: Any) -> None:
    stream, group = names()
    await fill(redis_server, stream, 10)
    seen: list[tuple[str, int]] = []

    def check(message: tf.Message[dict[str, str]]) -> tf.Message[dict[str, str]]:
        n, count = message.data["n"], message.metadata["delivery_count"]
        seen.append((n, count))
        if n == "3" and count == 1:
            raise ValueError("fails on its first delivery")
        return message

    source = RedisStreamSource(
        stream, group, "c1", port=redis_server.port, on_failure=on_failure, **FAST
    )
    redelivers = on_failure == "redeliver"
    report = await serve_until(
        source | tf.process(check, messages=True) | tf.sink(lambda x: None),
        lambda m: m.acked + m.failed >= (11 if redelivers else 10),
    )
    assert report.failed_by_reason == {"ValueError": 1}
    pending, dead = await broker_state(redis_server, stream, group)
    assert pending == 0
    assert dead == (["3"] if on_failure == "dead_letter" else [])
    # fresh reads are delivery 1; the redelivered entry came back claimed, as delivery 2
    assert [s for s in seen if s[0] != "3"] == [(str(n), 1) for n in range(10) if n != 3]
    assert [s for s in seen if s[0] == "3"] == ([("3", 1), ("3", 2)] if redelivers else [("3", 1)])
    assert report.acked == (10 if redelivers else 9)


@pytest.mark.parametrize("default", ["dead_letter", "discard"])
async def test_each_action_per_message(redis_server: RedisServer, default: Any) -> None:
    stream, group = names()
    await fill(redis_server, stream, 6)
    actions: dict[str, Any] = {"1": "discard", "2": "dead_letter", "3": "redeliver", "4": None}
    seen: list[tuple[str, int]] = []

    def decide(message: tf.Message[dict[str, str]]) -> tf.Message[dict[str, str]]:
        n, count = message.data["n"], message.metadata["delivery_count"]
        seen.append((n, count))
        if n in actions and count == 1:
            return message.fail(f"rejected {n}", action=actions[n])
        return message

    source = RedisStreamSource(
        stream, group, "c1", port=redis_server.port, on_failure=default, **FAST
    )
    report = await serve_until(
        source | tf.process(decide, messages=True) | tf.sink(lambda x: None),
        lambda m: m.acked >= 3,  # 0, 5, and 3 on its redelivery
    )
    assert report.failed == 4
    pending, dead = await broker_state(redis_server, stream, group)
    assert pending == 0
    # "2" asked for the dead letter; "4" had no action of its own, so it got the default
    assert sorted(dead) == (["2", "4"] if default == "dead_letter" else ["2"])
    assert [s for s in seen if s[0] == "3"] == [("3", 1), ("3", 2)]
    assert {s for s in seen if s[0] != "3"} == {(str(n), 1) for n in (0, 1, 2, 4, 5)}


async def test_per_message_action_from_a_batch_sink(redis_server: RedisServer) -> None:
    """A ``messages=True`` batch sink fails some messages of its batch, each with its action."""
    stream, group = names()
    await fill(redis_server, stream, 20)
    counts: dict[str, list[int]] = {}

    def save(batch: tf.Batch[tf.Message[dict[str, str]]]) -> list[tf.Message[dict[str, str]]]:
        out = []
        for m in batch:
            n = m.data["n"]
            counts.setdefault(n, []).append(m.metadata["delivery_count"])
            if n == "7":
                out.append(m.fail("bad row", action="dead_letter"))
            elif n == "8" and len(counts[n]) == 1:
                out.append(m.fail("try again", action="redeliver"))
            else:
                out.append(m)
        return out

    source = RedisStreamSource(
        stream, group, "c1", port=redis_server.port, on_failure="discard", **FAST
    )
    report = await serve_until(
        source | tf.batch(10, 0.05) | tf.sink(save, messages=True), lambda m: m.acked >= 19
    )
    assert report.failed_by_reason == {"bad row": 1, "try again": 1}
    assert await broker_state(redis_server, stream, group) == (0, ["7"])
    assert counts["8"] == [1, 2]


async def test_max_deliveries_dead_letters_without_reaching_the_stages(
    redis_server: RedisServer,
) -> None:
    stream, group = names()
    await fill(redis_server, stream, 3)
    seen: list[tuple[str, int]] = []

    def always_fails(message: tf.Message[dict[str, str]]) -> tf.Message[dict[str, str]]:
        seen.append((message.data["n"], message.metadata["delivery_count"]))
        if message.data["n"] == "1":
            raise RuntimeError("poison")
        return message

    source = RedisStreamSource(
        stream,
        group,
        "c1",
        port=redis_server.port,
        on_failure="redeliver",
        max_deliveries=3,
        **FAST,
    )
    report = await serve_until(
        source | tf.process(always_fails, messages=True) | tf.sink(lambda x: None),
        lambda m: m.failed >= 4,
    )
    # delivered 3 times to the stage (redelivered twice), then dead-lettered on the 4th delivery
    # before any stage saw it, although the default action is "redeliver"
    assert [s for s in seen if s[0] == "1"] == [("1", 1), ("1", 2), ("1", 3)]
    assert report.failed_by_reason == {
        "RuntimeError": 3,
        "poison: delivered 4 times (max_deliveries=3)": 1,
    }
    assert await broker_state(redis_server, stream, group) == (0, ["1"])
    async with connect(port=redis_server.port) as client:
        dead = await client.xrange(f"{stream}:dead")
    assert dict(dead[0].field_values)["trioflow_reason"] == (
        "poison: delivered 4 times (max_deliveries=3)"
    )


async def test_redeliver_comes_back_after_claim_idle(redis_server: RedisServer) -> None:
    """A redelivered entry is claimed once idle ``claim_idle`` since its delivery: not before."""
    stream, group = names()
    await fill(redis_server, stream, 1)
    times: list[float] = []

    def fail_first(message: tf.Message[dict[str, str]]) -> tf.Message[dict[str, str]]:
        times.append(trio.current_time())
        if len(times) == 1:
            return message.fail("later", action="redeliver")
        return message

    source = RedisStreamSource(
        stream, group, "c1", port=redis_server.port, claim_idle=0.5, claim_every=0.05, block=0.05
    )
    await serve_until(source | tf.process(fail_first, messages=True), lambda m: m.acked >= 1)
    assert len(times) == 2
    assert 0.45 <= times[1] - times[0] < 2.0
    assert await broker_state(redis_server, stream, group) == (0, [])


def test_validation() -> None:
    with pytest.raises(
        ValueError,
        match=r"^on_failure='drop' must be one of 'redeliver', 'dead_letter', 'discard'$",
    ):
        RedisStreamSource("s", "g", on_failure="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_deliveries=0 must be a positive integer or None$"):
        RedisStreamSource("s", "g", max_deliveries=0)
    source = RedisStreamSource("s", "g", max_deliveries=None, on_failure="redeliver")
    assert (source.on_failure, source.max_deliveries) == ("redeliver", None)
    assert RedisStreamSource("s", "g").on_failure == "dead_letter"
