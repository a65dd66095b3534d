"""Arguments are validated when a stage is built; graphs before any task starts."""

from __future__ import annotations

from typing import Any

import pytest

import trioflow as tf


async def f(x: Any) -> Any:
    return x


@pytest.mark.parametrize(
    ("make", "exc", "message"),
    [
        (lambda: tf.process(f, n=0), ValueError, r"^n=0 must be a positive integer$"),
        (lambda: tf.process(f, n=True), ValueError, r"^n=True must be a positive integer$"),
        (lambda: tf.process(f, buffer=0), ValueError, r"^buffer=0 must be a positive integer$"),
        (
            lambda: tf.process(f, timeout=0),
            ValueError,
            r"^timeout=0 must be a positive number of seconds$",
        ),
        (lambda: tf.sink(f, n=-2), ValueError, r"^n=-2 must be a positive integer$"),
        (lambda: tf.process(3), TypeError, r"^process: fn=3 must be callable$"),
        (lambda: tf.sink(None), TypeError, r"^sink: fn=None must be callable$"),
        (lambda: tf.batch(0), ValueError, r"^size=0 must be a positive integer$"),
        (
            lambda: tf.batch(5, -1.0),
            ValueError,
            r"^timeout=-1.0 must be a positive number of seconds$",
        ),
        (lambda: tf.batch(5, key=3), TypeError, r"^batch: key=3 must be callable$"),
        (lambda: tf.rate_limit(0), ValueError, r"^count=0 must be a positive integer$"),
        (
            lambda: tf.rate_limit(1, per=0),
            ValueError,
            r"^per=0 must be a positive number of seconds$",
        ),
        (lambda: tf.filter("x"), TypeError, r"^filter: pred='x' must be callable$"),
        (lambda: tf.flat_map(1), TypeError, r"^flat_map: fn=1 must be callable$"),
        (lambda: tf.route(1, {"a": f}), TypeError, r"^route: key_fn=1 must be callable$"),
        (
            lambda: tf.process(f, n=2, ordered=True, partition_by=len),
            ValueError,
            r"^partition_by and ordered=True: choose one \(partition_by orders per key\)$",
        ),
        (
            lambda: tf.process(lambda x: x, timeout=1),
            ValueError,
            r"^process\(.*<lambda>\): timeout needs an async function or thread=True",
        ),
        (
            lambda: tf.process(f, thread=True),
            TypeError,
            r"^process\(f\): thread=True needs a plain \(sync\) function$",
        ),
        (lambda: tf.process(f)(n=0), ValueError, r"^n=0 must be a positive integer$"),
    ],
)
def test_stage_arguments(make: Any, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        make()


def test_async_generator_is_not_a_processor() -> None:
    async def gen(x: Any):  # type: ignore[no-untyped-def]
        yield x

    with pytest.raises(TypeError, match=r"^process\(.*gen\): an async generator function yields"):
        tf.process(gen)


def test_on_failure_needs_callable() -> None:
    with pytest.raises(TypeError, match=r"^on_failure: handler=1 must be callable$"):
        (tf.from_iterable([1]) | tf.sink(f)).on_failure(1)  # type: ignore[arg-type]


async def test_pipeline_without_source_refused_before_any_task_starts() -> None:
    calls: list[Any] = []
    p = tf.process(calls.append) | tf.sink(calls.append)
    with pytest.raises(
        tf.InvalidPipeline,
        match=r"^process\(list.append\) \| sink\(list.append\) has no source: put a source first",
    ):
        await p.run()
    with pytest.raises(tf.InvalidPipeline, match=r"has no source"):
        await tf.collect(tf.process(calls.append))
    assert calls == []


def test_two_sources_refused() -> None:
    with pytest.raises(
        tf.InvalidPipeline,
        match=r"^a pipeline has one source, but from_iterable\(\[2\]\) follows "
        r"from_iterable\(\[1\]\); "
        r"use merge\(from_iterable\(\[1\]\), from_iterable\(\[2\]\)\) to read from both$",
    ):
        tf.from_iterable([1]) | tf.from_iterable([2])


def test_stage_after_sink_refused() -> None:
    with pytest.raises(
        tf.InvalidPipeline,
        match=r"^nothing can follow sink\(f\): a sink is terminal \(it acks its messages\), "
        r"but process\(f\) comes after it$",
    ):
        tf.from_iterable([1]) | tf.sink(f) | tf.process(f)


def test_route_branch_with_on_failure_refused() -> None:
    branch = (tf.process(f) | tf.sink(f)).on_failure(print)
    with pytest.raises(tf.InvalidPipeline, match=r"^route branch 'a' has an on_failure handler"):
        tf.from_iterable([1]) | tf.route(len, {"a": branch})
