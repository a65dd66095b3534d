"""Correct pipelines: every element type is inferred, with no annotation (assert_type lines)."""

from collections.abc import AsyncIterator
from typing import Any, assert_type

import trio

import trioflow as tf
from trioflow.abc import Source

batcher = tf.batch(100, 1.0)  # a module-level stage needs no annotation
limiter = tf.rate_limit(10, per=1.0)
splitter = tf.unbatch()


async def to_str(x: int) -> str:
    return str(x)


def double(x: int) -> int:
    return 2 * x


def is_even(x: int) -> bool:
    return x % 2 == 0


def takes_object(x: object) -> bool:
    return x is not None


def words(text: str) -> list[str]:
    return text.split()


async def awords(text: str) -> list[str]:
    return text.split()


async def chars(text: str) -> AsyncIterator[str]:
    for c in text:
        yield c


async def numbers() -> AsyncIterator[int]:
    yield 1


async def save_all(rows: list[str]) -> None: ...


async def save_batch(rows: tf.Batch[str]) -> None: ...


def save_one(row: str) -> None: ...


async def main() -> None:
    ints = tf.from_iterable([1, 2, 3])
    source: Source[int] = ints
    assert_type(source | tf.process(to_str), tf.Pipeline[None, str])

    p1 = ints | tf.process(to_str)
    assert_type(p1, tf.Pipeline[None, str])
    assert_type(await tf.collect(p1), list[str])
    assert_type(await tf.collect(ints), list[int])

    p2 = ints | tf.process(double, n=4, ordered=True) | tf.process(to_str, n=tf.Adaptive(1, 8))
    assert_type(p2, tf.Pipeline[None, str])
    assert_type(ints | tf.process(double, thread=True), tf.Pipeline[None, int])
    assert_type(ints | tf.process(double, parallel=True), tf.Pipeline[None, int])
    assert_type(ints | tf.process(to_str, breaker=tf.Breaker()), tf.Pipeline[None, str])

    assert_type(ints | tf.filter(is_even), tf.Pipeline[None, int])
    assert_type(p1 | tf.flat_map(words), tf.Pipeline[None, str])
    assert_type(p1 | tf.flat_map(awords), tf.Pipeline[None, str])
    assert_type(p1 | tf.flat_map(chars), tf.Pipeline[None, str])

    batched = ints | tf.batch(10, 1.0)
    assert_type(batched, tf.Pipeline[None, list[int]])
    assert_type(await tf.collect(batched), list[list[int]])
    assert_type(p1 | batcher, tf.Pipeline[None, list[str]])
    assert_type(batched | tf.unbatch(), tf.Pipeline[None, int])
    assert_type(batched | splitter | tf.process(to_str), tf.Pipeline[None, str])
    assert_type(ints | limiter, tf.Pipeline[None, int])
    assert_type(ints | tf.batch(10, key=lambda x: x % 2), tf.Pipeline[None, list[int]])

    assert_type(p1 | tf.batch(10) | tf.sink(save_all), tf.Pipeline[None, None])
    assert_type(p1 | tf.batch(10) | tf.sink(save_batch), tf.Pipeline[None, None])
    assert_type(p1 | tf.sink(save_one), tf.Pipeline[None, None])
    assert_type(ints | tf.sink(takes_object), tf.Pipeline[None, None])

    # plain functions on the right of | are processors, async generator functions flat_maps
    assert_type(ints | double | to_str, tf.Pipeline[None, str])
    assert_type(p1 | chars, tf.Pipeline[None, str])

    # iterables, async iterables and async generator functions left of the first |
    assert_type([1, 2] | tf.process(to_str), tf.Pipeline[None, str])
    assert_type(numbers | tf.process(to_str), tf.Pipeline[None, str])
    assert_type(numbers() | tf.process(to_str), tf.Pipeline[None, str])
    assert_type(await tf.collect(tf.from_aiter(numbers())), list[int])

    send, receive = trio.open_memory_channel[int](10)
    async with send:
        assert_type(tf.from_channel(receive) | tf.process(to_str), tf.Pipeline[None, str])

    merged = tf.merge(tf.from_iterable([1]), [2, 3])
    assert_type(await tf.collect(merged | tf.process(double)), list[int])

    # fragments: a pipeline without a source, e.g. a route branch
    fragment = tf.process(double) | tf.process(to_str)
    assert_type(fragment, tf.Pipeline[int, str])
    assert_type(ints | fragment, tf.Pipeline[None, str])
    routed = ints | tf.route(is_even, {True: tf.sink(takes_object), False: fragment})
    assert_type(await tf.collect(routed), list[Any])  # a route's output is not typed

    handled = (p1 | tf.sink(save_one)).on_failure(print)
    assert_type(handled, tf.Pipeline[None, None])
    report = await handled.run()
    assert_type(report, tf.RunReport)
