"""``route``: one branch per key, unknown keys fail, non-sink branch outputs continue."""

from __future__ import annotations

import pytest

import trioflow as tf
from trioflow.testing import TestSource


async def test_each_item_goes_to_its_branch() -> None:
    a: list[int] = []
    b: list[int] = []
    src = TestSource(range(10))
    report = await (
        src
        | tf.route(
            lambda x: "a" if x % 2 else "b", {"a": tf.sink(a.append), "b": tf.sink(b.append)}
        )
    ).run()
    assert a == [1, 3, 5, 7, 9]
    assert b == [0, 2, 4, 6, 8]
    assert sorted(src.acked) == list(range(10))
    assert (report.received, report.acked) == (10, 10)


async def test_branch_may_be_a_pipeline_with_batch() -> None:
    saved: list[list[int]] = []
    src = TestSource(range(7))
    await (
        src
        | tf.route(
            lambda x: x % 2,
            {
                0: tf.process(lambda x: x * 10) | tf.batch(2) | tf.sink(saved.append),
                1: tf.filter(lambda x: False),
            },
        )
    ).run()
    assert saved == [[0, 20], [40, 60]]
    assert sorted(src.acked) == list(range(7))


async def test_unknown_key_fails_item_with_key_error_naming_it() -> None:
    src = TestSource(["a", "zz", "a"])
    report = await (src | tf.route(lambda s: s, {"a": tf.sink(lambda x: None)}, name="r")).run()
    assert src.acked == ["a", "a"]
    [(data, reason)] = src.failed
    assert data == "zz"
    assert isinstance(reason, KeyError)
    assert reason.args == ("r: no branch for key 'zz'; branches are 'a'",)
    assert report.failed_by_reason == {"KeyError": 1}


async def test_failing_key_function_fails_item() -> None:
    src = TestSource([1, 0])
    await (src | tf.route(lambda x: 1 // x, {1: tf.sink(lambda x: None)})).run()
    assert src.acked == [1]
    assert [(d, type(r)) for d, r in src.failed] == [(0, ZeroDivisionError)]


async def test_non_sink_branch_outputs_continue_after_route() -> None:
    sunk: list[int] = []
    out = await tf.collect(
        tf.from_iterable(range(6))
        | tf.route(
            lambda x: x % 3,
            {0: tf.process(lambda x: x + 100), 1: tf.sink(sunk.append), 2: lambda x: -x},
        )
        | tf.process(lambda x: ("after", x))
    )
    assert sorted(out) == sorted([("after", 100), ("after", 103), ("after", -2), ("after", -5)])
    assert sunk == [1, 4]


async def test_branches_with_batches_continue_and_settle() -> None:
    src = TestSource(range(8))
    after: list[object] = []
    report = await (
        src
        | tf.route(lambda x: x % 2, {0: tf.batch(2), 1: tf.process(lambda x: [x])})
        | tf.sink(after.append)
    ).run()
    assert sorted(map(sorted, after)) == [[0, 2], [1], [3], [4, 6], [5], [7]]  # type: ignore[arg-type]
    assert sorted(src.acked) == list(range(8))
    assert report.unsettled == 0


def test_route_validates_branches() -> None:
    with pytest.raises(TypeError, match=r"^route: branches=\{\} must be a non-empty dict"):
        tf.route(lambda x: x, {})
    with pytest.raises(
        tf.InvalidPipeline, match=r"^route branch 'a' has a source; a branch only has stages$"
    ):
        tf.route(lambda x: x, {"a": tf.from_iterable([1]) | tf.sink(print)})
