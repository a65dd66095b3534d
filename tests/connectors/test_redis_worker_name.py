"""Under ``trioflow run --workers N`` (``TRIOFLOW_WORKER`` set: 0 .. N-1, the same number after a
restart) RedisStreamSource's default consumer name is ``<host>-worker-<n>``, so a restarted worker
(a new process id) reads back its own pending entries at once instead of waiting ``claim_idle``
for a claim."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSource, default_consumer
from trioflow.connectors.redis import connect as redis_connect

from .servers import RedisServer

HOST = os.uname().nodename


def test_the_default_name_is_the_worker_number_under_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRIOFLOW_WORKER", "3")
    assert default_consumer() == f"{HOST}-worker-3"
    assert RedisStreamSource("s", "g").consumer == f"{HOST}-worker-3"
    assert RedisStreamSource("s", "g", "mine").consumer == "mine"  # a given name wins
    monkeypatch.delenv("TRIOFLOW_WORKER")
    assert RedisStreamSource("s", "g").consumer == f"{HOST}-{os.getpid()}"
    monkeypatch.setenv("TRIOFLOW_WORKER", "")
    assert RedisStreamSource("s", "g").consumer == f"{HOST}-{os.getpid()}"


async def test_a_restarted_worker_reads_back_its_pending_entries_at_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, group = f"w-{uuid.uuid4().hex[:8]}", "g"
    monkeypatch.setenv("TRIOFLOW_WORKER", "1")
    async with redis_connect(port=redis_server.port) as client:
        for i in range(10):
            await client.xadd(stream, {"n": str(i)})

    # the first process of worker 1 takes the entries and dies before acking any
    monkeypatch.setattr(os, "getpid", lambda: 1001)
    taken: list[str] = []
    first = RedisStreamSource(stream, group, port=redis_server.port, block=0.05)
    with trio.move_on_after(10) as crash:

        async def hold(entry: dict[str, str]) -> None:
            taken.append(entry["n"])
            if len(taken) == 10:
                crash.cancel()
            await trio.sleep_forever()

        await (first | tf.sink(hold, n=10)).run()
    assert sorted(taken, key=int) == [str(i) for i in range(10)]

    # the supervisor restarts worker 1: a new process id, the same TRIOFLOW_WORKER
    monkeypatch.setattr(os, "getpid", lambda: 1002)
    seen: list[dict[str, Any]] = []
    stop = trio.Event()

    def note(m: tf.Message[dict[str, str]]) -> None:
        seen.append(dict(m.metadata))
        if len(seen) == 10:
            stop.set()

    again = RedisStreamSource(stream, group, port=redis_server.port, block=0.05, claim_idle=600)
    assert again.consumer == first.consumer == f"{HOST}-worker-1"
    with trio.fail_after(10):  # without its own name it would wait claim_idle (600 s)
        report = await (again | tf.sink(note, messages=True)).run(stop=stop)
    assert report.acked == 10
    assert sorted(m["delivery_count"] for m in seen) == [2] * 10
