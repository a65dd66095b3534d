"""Batches that know why they left (API.md, second part: "Messages all the way through batches")."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.abc import Instrument
from trioflow.testing import TestSource


async def slow_source(n: int, gap: float) -> Any:
    for i in range(n):
        yield i
        await trio.sleep(gap)


async def test_default_timeout_leaves_a_partial_batch_after_one_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[float, tf.Batch[int]]] = []
    t0 = trio.current_time()

    def save(batch: tf.Batch[int]) -> None:
        seen.append((trio.current_time() - t0, batch))

    async def quiet() -> Any:
        yield 1
        yield 2
        await trio.sleep(60)
        yield 3

    with trio.fail_after(100):
        await (tf.from_aiter(quiet()) | tf.batch(100) | tf.sink(save)).run()
    assert [(t, list(b), b.info.trigger) for t, b in seen] == [
        (1.0, [1, 2], "timeout"),
        (60.0, [3], "end"),
    ]


async def test_timeout_none_keeps_only_full_batches(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tf.Batch[int]] = []
    with trio.fail_after(100):
        await (tf.from_aiter(slow_source(5, 10)) | tf.batch(2, None) | tf.sink(seen.append)).run()
    assert [(list(b), b.info.trigger) for b in seen] == [
        ([0, 1], "size"),
        ([2, 3], "size"),
        ([4], "end"),
    ]


async def test_a_batch_is_a_list_with_its_info() -> None:
    out = await tf.collect(tf.from_iterable(range(5)) | tf.batch(2, key=lambda x: x % 2))
    assert all(isinstance(b, tf.Batch) and isinstance(b, list) for b in out)
    assert sorted(map(sum, out)) == [2, 4, 4]
    assert sorted((b.info.key, b.info.size, b.info.weight, b.info.trigger) for b in out) == [
        (0, 1, 1, "end"),
        (0, 2, 2, "size"),
        (1, 2, 2, "size"),
    ]
    assert out[0] == list(out[0])  # compares as a list


async def test_branch_names_the_route_key() -> None:
    saved: list[tf.Batch[int]] = []
    branches = {"even": tf.batch(10) | tf.sink(saved.append), "odd": tf.sink(lambda x: None)}
    await (
        tf.from_iterable(range(6)) | tf.route(lambda x: "odd" if x % 2 else "even", branches)
    ).run()
    assert [(list(b), b.info.branch) for b in saved] == [([0, 2, 4], "even")]


async def test_weight_makes_a_batch_leave_before_the_item_that_would_overfill_it() -> None:
    src = TestSource(["aaaa", "bbb", "cc", "dddddd", "e"])
    out = await tf.collect(src | tf.batch(10, weight=len, max_weight=8))
    assert [(list(b), b.info.weight, b.info.trigger) for b in out] == [
        (["aaaa", "bbb"], 7, "weight"),
        (["cc", "dddddd"], 8, "weight"),
        (["e"], 1, "end"),
    ]


async def test_an_item_heavier_than_max_weight_fails_alone() -> None:
    src = TestSource([b"x" * 3, b"y" * 20, b"z"])
    out = await tf.collect(src | tf.batch(10, weight=len, max_weight=8))
    assert [list(b) for b in out] == [[b"xxx", b"z"]]
    [(data, reason)] = src.failed
    assert data == b"y" * 20
    assert isinstance(reason, ValueError)
    assert "weighs 20" in str(reason)
    assert "max_weight=8" in str(reason)


def test_max_weight_needs_weight() -> None:
    with pytest.raises(ValueError, match=r"^batch: max_weight=10 needs weight="):
        tf.batch(10, max_weight=10)


async def test_a_drain_flushes_with_trigger_drain(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tf.Batch[int]] = []
    stop = trio.Event()

    async def endless() -> Any:
        i = 0
        while True:
            yield i
            i += 1
            if i == 3:
                stop.set()
            await trio.sleep(0.01)

    with trio.fail_after(100):
        await (tf.from_aiter(endless()) | tf.batch(100, None) | tf.sink(seen.append)).run(stop=stop)
    assert [b.info.trigger for b in seen] == ["drain"]
    assert sum(len(b) for b in seen) >= 3


async def test_the_batch_event_carries_the_info() -> None:
    got: list[Any] = []

    class Rec(Instrument):
        def batch(self, stage: str, size: int, trigger: str, info: Any = None) -> None:
            got.append((size, trigger, info))

    class Old(Instrument):  # an override written before info existed still works
        calls = 0

        def batch(self, stage: str, size: int, trigger: str) -> None:  # type: ignore[override]
            Old.calls += 1

    await (tf.from_iterable(range(3)) | tf.batch(2) | tf.sink(lambda b: None)).run(
        telemetry=[Rec(), Old()]
    )
    assert [(s, t, i.size, i.trigger) for s, t, i in got] == [
        (2, "size", 2, "size"),
        (1, "end", 1, "end"),
    ]
    assert Old.calls == 2


# -- messages=True after a batch (Broadway's handle_batch / prepare_messages) ------------------


async def test_a_batch_sink_fails_only_the_rejected_rows() -> None:
    src = TestSource(range(10))
    handled: list[tf.Message[Any]] = []
    seen: list[Any] = []

    async def save(rows: tf.Batch[tf.Message[int]]) -> list[tf.Message[int]] | None:
        seen.append((type(rows).__name__, rows.info.size, [m.data for m in rows]))
        if not any(m.data % 3 == 0 for m in rows):
            return None
        return [m.fail("rejected", action="dead_letter") if m.data % 3 == 0 else m for m in rows]

    pipeline = (src | tf.batch(5, None) | tf.sink(save, messages=True)).on_failure(handled.extend)
    report = await pipeline.run()
    assert seen == [("Batch", 5, [0, 1, 2, 3, 4]), ("Batch", 5, [5, 6, 7, 8, 9])]
    assert sorted(src.acked) == [1, 2, 4, 5, 7, 8]
    assert sorted(d for d, _ in src.failed) == [0, 3, 6, 9]
    assert report.failed_by_reason == {"rejected": 4}
    assert sorted((m.data, m.action) for m in handled) == [(d, "dead_letter") for d in (0, 3, 6, 9)]


async def test_prepare_messages_passes_the_rest_on_as_a_batch_with_metadata() -> None:
    src = TestSource(range(6))
    saved: list[tuple[list[int], int]] = []

    async def prepare(batch: tf.Batch[tf.Message[int]]) -> list[tf.Message[int]]:
        return [m.fail("odd") if m.data % 2 else m.with_metadata(shard=m.data // 2) for m in batch]

    async def peek(batch: tf.Batch[tf.Message[int]]) -> None:
        saved.append(([m.data for m in batch], batch.info.size))
        assert [m.metadata["shard"] for m in batch] == [m.data // 2 for m in batch]

    await (
        src | tf.batch(3, None) | tf.process(prepare, messages=True) | tf.sink(peek, messages=True)
    ).run()
    assert saved == [([0, 2], 2), ([4], 1)]
    assert sorted(src.acked) == [0, 2, 4]
    assert sorted(d for d, _ in src.failed) == [1, 3, 5]


async def test_a_batch_stage_that_returns_the_wrong_messages_fails_the_batch() -> None:
    src = TestSource(range(4))

    async def bad(batch: tf.Batch[tf.Message[int]]) -> list[int]:
        return [1]

    await (src | tf.batch(4, None) | tf.sink(bad, messages=True)).run()
    assert len(src.failed) == 4
    reason = src.failed[0][1]
    assert isinstance(reason, TypeError)
    assert "must return None or those 4 messages" in str(reason)


# -- unbatch -----------------------------------------------------------------------------------


def fails_on(bad: int) -> Any:
    """A stage function that raises ``ValueError`` for ``bad`` and passes anything else on."""

    def check(x: int) -> int:
        if x == bad:
            raise ValueError(x)
        return x

    return check


async def test_unbatch_settles_each_item_on_its_own() -> None:
    src = TestSource(range(6))
    out = await tf.collect(
        src | tf.batch(3, None) | tf.process(lambda b: b) | tf.unbatch() | tf.process(fails_on(4))
    )
    assert sorted(out) == [0, 1, 2, 3, 5]
    assert sorted(src.acked) == [0, 1, 2, 3, 5]
    assert [d for d, _ in src.failed] == [4]


async def test_unbatch_of_a_reshaped_list_ties_items_to_their_batch() -> None:
    src = TestSource(range(4))
    out = await tf.collect(
        src
        | tf.batch(2, None)
        | tf.process(lambda b: [sum(b) * 10, -1, -2])
        | tf.unbatch()
        | tf.process(fails_on(10))
    )
    assert sorted(out) == [-2, -2, -1, -1, 50]
    assert sorted(src.acked) == [2, 3]
    assert sorted(d for d, _ in src.failed) == [0, 1]


def test_unbatch_repr() -> None:
    assert repr(tf.batch(2) | tf.unbatch()) == "batch(2, 1.0) | unbatch()"
