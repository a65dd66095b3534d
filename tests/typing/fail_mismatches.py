"""Stages that do not fit: each line marked ``# E`` must be reported by both checkers.

tests/test_typing.py runs mypy --strict and pyright (strict) over this folder and checks that the
errors fall exactly on the marked lines (no more, no fewer).
"""

from collections.abc import AsyncIterator

import trioflow as tf


def takes_int(x: int) -> int:
    return x


async def to_str(x: int) -> str:
    return str(x)


def takes_str(x: str) -> bool:
    return bool(x)


def save_ints(rows: list[int]) -> None: ...


def save_int(row: int) -> None: ...


async def tag(message: tf.Message[str]) -> tf.Message[str]:
    return message


@tf.stage
async def numbers() -> AsyncIterator[int]:
    yield 1


@tf.stage
async def shout(text: str) -> str:
    return text.upper()


@tf.stage(n=4)
def parse(text: str) -> int:
    return int(text)


async def main() -> None:
    ints = tf.from_iterable([1, 2])
    texts = ints | tf.process(to_str)
    tf.from_iterable(["a"]) | tf.process(takes_int)  # E
    texts | tf.sink(save_int)  # E
    texts | tf.process(to_str)  # E
    texts | tf.batch(10) | tf.sink(save_ints)  # E
    ints | tf.batch(10) | tf.process(takes_int)  # E
    ints | tf.unbatch()  # E
    ints | tf.filter(takes_str)  # E
    ints | tf.flat_map(str.split)  # E
    ints | tf.process(tag, messages=True)  # E
    ints | takes_str  # E
    numbers | shout  # E
    ints | (tf.process(takes_str) | tf.sink(print))  # E
    tf.merge(ints, [3]) | tf.sink(takes_str)  # E
    [1, 2] | tf.process(takes_str)  # E
    counts: list[int] = await tf.collect(texts)  # E
    await tf.collect(tf.process(takes_int))  # E
    tf.process(takes_int, n="many")  # E
    tf.batch("ten")  # E
    ints | parse(n=8)  # E
    parse(bufer=3)  # E
    tf.sink(save_int, messages=True)  # E
    (ints | tf.sink(save_int)).on_failure(42)  # E
    print(counts)
