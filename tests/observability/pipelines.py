"""Pipelines the CLI tests run (``trioflow run tests/observability/pipelines.py:NAME``)."""

from __future__ import annotations

import itertools
from typing import Any

import trio

import trioflow as tf


async def work(x: int) -> int:
    await trio.sleep(0.002)
    return x


async def save(batch: list[Any]) -> None:
    await trio.sleep(0.001)


def fail_some(x: int) -> int:
    if x % 10 == 3:
        raise ValueError("bad")
    return x


def boom(x: int) -> int:
    if x == 5:
        raise tf.Fatal("the database is gone")
    return x


async def forever(x: Any) -> None:
    await trio.sleep(1000)


finite = tf.from_iterable(range(200)) | tf.process(work, n=4) | tf.batch(20, 0.1) | tf.sink(save)
endless = (
    tf.from_iterable(itertools.count()) | tf.process(work, n=4) | tf.batch(20, 0.1) | tf.sink(save)
)
failing = tf.from_iterable(range(50)) | tf.process(fail_some) | tf.sink(save)
fatal = tf.from_iterable(range(50)) | tf.process(boom) | tf.sink(save)
stuck = tf.from_iterable(itertools.count()) | tf.sink(forever, n=2)


def factory() -> tf.Pipeline:
    return finite


not_a_pipeline = 42


async def slow_save(batch: list[Any]) -> None:
    await trio.sleep(0.005)


def steerable() -> tf.Pipeline:
    """Endless, with a process, a rate_limit and a sink stage to steer (dashboard controls)."""
    return (
        tf.from_iterable(itertools.count())
        | tf.process(work, n=2, name="work")
        | tf.rate_limit(400, per=1.0, name="throttle")
        | tf.batch(20, 0.1)
        | tf.sink(slow_save, name="save")
    )
