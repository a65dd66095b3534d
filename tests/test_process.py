"""``process``: concurrency, ordering, partitions, threads, timeouts, message mode."""

from __future__ import annotations

import random
import threading
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import TestSource


async def test_n_workers_run_concurrently(autojump_clock: trio.testing.MockClock) -> None:
    running = peak = 0

    async def work(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return x

    start = trio.current_time()
    out = await tf.collect(tf.from_iterable(range(40)) | tf.process(work, n=10, buffer=10))
    assert sorted(out) == list(range(40))
    assert peak == 10
    assert trio.current_time() - start == 4.0


async def test_ordered_keeps_input_order_under_random_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(7)
    delays = [rng.random() for _ in range(300)]

    async def work(x: int) -> int:
        await trio.sleep(delays[x])
        return x

    unordered = await tf.collect(tf.from_iterable(range(300)) | tf.process(work, n=8, buffer=16))
    assert sorted(unordered) == list(range(300))
    assert unordered != list(range(300))  # the test can tell
    ordered = await tf.collect(
        tf.from_iterable(range(300)) | tf.process(work, n=8, ordered=True, buffer=16)
    )
    assert ordered == list(range(300))


async def test_partition_by_keeps_order_and_one_at_a_time_per_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(3)
    items = [(rng.randrange(5), i) for i in range(200)]
    active: dict[int, int] = {}
    overlap: list[int] = []
    seen: list[tuple[int, int]] = []

    async def work(item: tuple[int, int]) -> tuple[int, int]:
        key = item[0]
        active[key] = active.get(key, 0) + 1
        if active[key] > 1:
            overlap.append(key)
        await trio.sleep(rng.random())
        active[key] -= 1
        seen.append(item)
        return item

    out = await tf.collect(
        tf.from_iterable(items) | tf.process(work, n=4, partition_by=lambda it: it[0], buffer=8)
    )
    assert overlap == []
    assert sorted(out) == sorted(items)
    for key in range(5):
        assert [i for k, i in seen if k == key] == [i for k, i in items if k == key]
        assert [i for k, i in out if k == key] == [i for k, i in items if k == key]


async def test_thread_true_runs_in_a_worker_thread() -> None:
    main = threading.get_ident()
    where: list[int] = []

    def blocking(x: int) -> int:
        where.append(threading.get_ident())
        return x * 2

    out = await tf.collect(tf.from_iterable(range(5)) | tf.process(blocking, thread=True))
    assert out == [0, 2, 4, 6, 8]
    assert len(where) == 5
    assert main not in where


async def test_sync_function_without_thread_runs_inline() -> None:
    main = threading.get_ident()
    where: list[int] = []
    await tf.collect(
        tf.from_iterable(range(3)) | tf.process(lambda x: where.append(threading.get_ident()))
    )
    assert where == [main] * 3


async def test_timeout_fails_item_with_stage_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(x: int) -> int:
        await trio.sleep(x)
        return x

    src = TestSource([1, 5, 2])
    start = trio.current_time()
    report = await (src | tf.process(slow, timeout=3, name="slow")).run()
    assert trio.current_time() - start == 1 + 3 + 2
    assert src.acked == [1, 2]
    [(data, reason)] = src.failed
    assert data == 5
    assert isinstance(reason, tf.StageTimeout)
    assert isinstance(reason, TimeoutError)
    assert str(reason) == "stage 'slow': the call took longer than timeout=3 s"
    assert report.failed_by_reason == {"StageTimeout": 1}


async def test_messages_true_sees_and_returns_messages() -> None:
    src = TestSource(["a", "bad", "c"])
    got: list[Any] = []

    def see(msg: tf.Message[str]) -> Any:
        got.append((type(msg), msg.data, msg.metadata))
        if msg.data == "bad":
            return msg.fail("malformed")
        return msg.replace(msg.data.upper())

    out: list[str] = []
    report = await (src | tf.process(see, messages=True) | tf.sink(out.append)).run()
    assert out == ["A", "C"]
    assert [(t, d) for t, d, _ in got] == [
        (tf.Message, "a"),
        (tf.Message, "bad"),
        (tf.Message, "c"),
    ]
    assert [m["test_seq"] for _, _, m in got] == [0, 1, 2]
    assert src.acked == ["a", "c"]
    assert src.failed == [("bad", "malformed")]
    assert report.failed_by_reason == {"malformed": 1}
    assert (report.acked, report.failed) == (2, 1)


async def test_messages_true_plain_return_value_is_data() -> None:
    out = await tf.collect(
        tf.from_iterable([1, 2]) | tf.process(lambda m: m.data + 1, messages=True)
    )
    assert out == [2, 3]


async def test_message_fail_counts_under_the_string_reason() -> None:
    async def fail_some(msg: tf.Message[int]) -> tf.Message[int]:
        return msg.fail("odd") if msg.data % 2 else msg

    report = await (tf.from_iterable(range(10)) | tf.process(fail_some, messages=True, n=3)).run()
    assert report.failed_by_reason == {"odd": 5}
    assert (report.received, report.acked, report.failed) == (10, 5, 5)


def test_message_fail_and_replace_copy() -> None:
    m = tf.Message(1, metadata={"k": 1})
    f = m.fail("why")
    assert (m.status, m.reason, m.failed) == ("ok", None, False)
    assert (f.status, f.reason, f.failed, f.data, f.metadata) == (
        "failed",
        "why",
        True,
        1,
        {"k": 1},
    )
    r = m.replace("x")
    assert (r.data, r.metadata, r.acknowledger) == ("x", {"k": 1}, m.acknowledger)
    assert repr(f) == "Message(1, metadata={'k': 1}, status='failed', reason='why')"


async def test_stage_stats_count_items() -> None:
    report = await (
        tf.from_iterable(range(7))
        | tf.process(lambda x: x, name="p")
        | tf.sink(lambda x: None, name="s")
    ).run()
    assert report.stages["p"].count == 7
    assert report.stages["s"].count == 7
    assert set(report.stages) == {"p", "s"}
