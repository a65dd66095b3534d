"""Poison isolation of RedisStreamSource (issue 13), against a real redis-server.

An entry delivered before (this consumer's own pending list at start, entries claimed from an
idle consumer) is retried one at a time, each once the previous one is settled, while new
entries flow: a poison entry that crashes its process is then the only one whose delivery count
rises with each crash, so it alone reaches ``max_deliveries``.
"""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSource, connect

from .servers import RedisServer

pytestmark = pytest.mark.server

_names = itertools.count()
#: where the trioflow under test is imported from, for the consumer processes
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tf.__file__)))

#: a consumer process that dies (os._exit) on the poison entry, as a crashing worker would
CONSUMER = textwrap.dedent(
    """
    import os, sys
    import trio
    import trioflow as tf
    from trioflow.connectors.redis import RedisStreamSource, connect

    port = int(sys.argv[1])
    stream, group, poison, log = sys.argv[2:6]

    async def main():
        def work(message):
            if message.data["n"] == poison:
                os._exit(17)  # the poison entry crashes the whole process
            return message

        def save(messages):
            with open(log, "a") as f:
                f.writelines(f"{m.data['n']} {m.metadata['delivery_count']}\\n" for m in messages)

        stop = trio.Event()

        async def until_done():
            async with connect(port=port) as client:
                while True:
                    await trio.sleep(0.05)
                    for info in await client.xinfo_groups(stream):
                        if info["name"] == group and info["pending"] == 0 and info["lag"] == 0:
                            stop.set()
                            return

        source = RedisStreamSource(stream, group, "worker-1", port=port, block=0.05)
        pipeline = (
            source
            | tf.process(work, n=8, messages=True)
            | tf.batch(50, 0.005)
            | tf.sink(save, messages=True)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_done)
            await pipeline.run(stop=stop)
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


def names() -> tuple[str, str]:
    n = next(_names)
    return f"poison{n}", f"pgroup{n}"


async def fill(port: int, stream: str, count: int) -> None:
    async with connect(port=port) as client:
        pipe = client.pipeline(transaction=False)
        async with pipe:
            for i in range(count):
                pipe.xadd(stream, {"n": str(i)})


async def test_a_crashing_poison_entry_is_the_only_one_dead_lettered(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The issue's scenario: 512 entries, one crashes the consumer process every time it is
    processed; the consumer is restarted after each crash (as a supervisor would)."""
    stream, group = names()
    port = redis_server.port
    await fill(port, stream, 512)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    log = tmp_path / "processed.txt"
    log.touch()
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT, "PYTHONSAFEPATH": "1"}
    exits = []
    with trio.fail_after(120):
        for _ in range(10):
            done = await trio.run_process(
                [sys.executable, str(script), str(port), stream, group, "100", str(log)],
                check=False,
                env=env,
            )
            exits.append(done.returncode)
            if done.returncode != 17:
                break
    # five crashes (deliveries 1 to 5), then delivery 6 is past max_deliveries=5: dead-lettered
    assert exits == [17] * 5 + [0]
    async with connect(port=port) as client:
        dead = [dict(e.field_values) for e in await client.xrange(f"{stream}:dead")]
        summary = await client.xpending(stream, group)
    assert [d["n"] for d in dead] == ["100"]
    assert dead[0]["trioflow_reason"] == "poison: delivered 6 times (max_deliveries=5)"
    assert int(summary.pending) == 0  # every good entry was acked
    lines = [line.split() for line in log.read_text().splitlines()]
    processed = Counter(n for n, _ in lines)
    assert set(processed) == {str(i) for i in range(512) if i != 100}  # no good one lost
    # a good entry is in flight during at most one crash in a group of retries, then it is
    # retried alone: never delivered a fourth time
    assert max(int(count) for _, count in lines) <= 3


@pytest.mark.parametrize("how", ["own pending list", "claimed"])
@pytest.mark.parametrize(("before", "peak_allowed"), [(2, 1), (1, 4)])
async def test_retries_are_isolated_while_new_entries_flow(
    redis_server: RedisServer, how: str, before: int, peak_allowed: int
) -> None:
    """Ten entries delivered ``before`` times come back: delivered twice already, one at a time;
    delivered once, in groups of 1, 2, 4, ... as each group is settled. Forty new entries flow
    meanwhile."""
    stream, group = names()
    port = redis_server.port
    await fill(port, stream, 10)
    async with connect(port=port) as client:
        await client.xgroup_create(stream, group, identifier="0")
        owner = "w1" if how == "own pending list" else "dead"
        got = await client.xreadgroup(group, owner, streams={stream: ">"}, count=10)  # no ack
        ids = [e.identifier for e in got[stream]]
        for _ in range(before - 1):
            await client.xclaim(stream, group, owner, min_idle_time=0, identifiers=ids)
        pipe = client.pipeline(transaction=False)
        async with pipe:
            for i in range(10, 50):
                pipe.xadd(stream, {"n": str(i)})
    await trio.sleep(0.15)
    retried_now = 0
    peak = 0
    first_alone = None
    fresh_during_retries = 0
    done: set[str] = set()
    stop = trio.Event()

    async def work(message: tf.Message[dict[str, str]]) -> None:
        nonlocal retried_now, peak, fresh_during_retries, first_alone
        retry = message.metadata["delivery_count"] > 1
        if retry:
            assert message.metadata["delivery_count"] == before + 1
            retried_now += 1
            peak = max(peak, retried_now)
            if first_alone is None:
                first_alone = retried_now == 1
        elif len([n for n in done if int(n) < 10]) < 10:
            fresh_during_retries += 1
        await trio.sleep(0.02)
        if retry:
            retried_now -= 1
        done.add(message.data["n"])
        if len(done) == 50:
            stop.set()

    source = RedisStreamSource(stream, group, "w1", port=port, block=0.05, claim_idle=0.1)
    with trio.fail_after(30):
        report = await (source | tf.sink(work, n=8, messages=True)).run(stop=stop)
    assert report.acked == 50
    assert first_alone
    assert 1 <= peak <= peak_allowed  # not all ten at once, as before
    assert fresh_during_retries >= 20  # the forty new ones did not wait for them
    async with connect(port=port) as client:
        assert int((await client.xpending(stream, group)).pending) == 0
