"""``@tf.stage`` in every form, ``messages=True`` stages and consumers: inferred types."""

from collections.abc import AsyncIterator
from typing import Any, assert_type

import trioflow as tf


@tf.stage
async def source() -> AsyncIterator[int]:
    for i in range(250):
        yield i


@tf.stage
async def triple(item: int) -> int:
    return item * 3


@tf.stage
def label(item: int) -> str:
    return f"#{item}"


@tf.stage(n=4, retry=tf.Retry(attempts=3))
async def fetch(key: str) -> bytes:
    return key.encode()


@tf.stage(name="numbers")
async def named_source() -> AsyncIterator[int]:
    yield 1


@tf.stage
async def save(items: list[int]) -> None: ...


async def tag(message: tf.Message[int]) -> tf.Message[str]:
    return message.replace(str(message.data))


def tag_sync(message: tf.Message[int]) -> tf.Message[str]:
    return message.replace(str(message.data))


async def settle(batch: tf.Batch[tf.Message[str]]) -> list[tf.Message[str]]:
    return [m if m.data else m.fail("empty") for m in batch]


async def save_messages(batch: tf.Batch[tf.Message[str]]) -> None: ...


async def log_message(message: tf.Message[str]) -> None: ...


def save_int(row: int) -> None: ...


class Payments(tf.Consumer):
    topic = "payments"

    async def handle(self, data: object, ctx: tf.ConsumerContext) -> None: ...


class Orders(tf.Consumer):
    """Typed methods override the untyped ones of ``Consumer``."""

    topic = "orders"
    batch_size = 10
    concurrency = 4

    def handle(self, data: bytes, ctx: tf.ConsumerContext) -> dict[str, int]:
        return {"size": len(data)}

    async def handle_batch(self, batch: list[dict[str, int]], ctx: tf.ConsumerContext) -> None:
        if not batch:
            ctx.fail(0, "empty")

    async def handle_failed(self, messages: list[tf.Message[Any]]) -> None: ...


async def main() -> None:
    # the design card, literally
    pipeline = source | triple(n=10) | tf.batch(100, 1.0) | save
    assert_type(pipeline, tf.Pipeline[None, None])
    assert_type(source | triple | label | fetch, tf.Pipeline[None, bytes])
    assert_type(named_source | triple, tf.Pipeline[None, int])
    assert_type(source(name="other") | label, tf.Pipeline[None, str])

    # the stage objects still call their functions (unit tests of a stage)
    assert_type(source | triple(n=2, ordered=True), tf.Pipeline[None, int])
    assert_type(label | fetch(n=2), tf.Pipeline[int, bytes])
    assert_type(await triple(2), Any)
    assert_type(source(), AsyncIterator[int])

    ints = tf.from_iterable([1, 2])
    assert_type(ints | tf.process(tag, messages=True), tf.Pipeline[None, str])
    assert_type(ints | tf.process(tag_sync, messages=True), tf.Pipeline[None, str])
    texts = ints | tf.process(tag, messages=True) | tf.batch(10)
    assert_type(texts | tf.process(settle, messages=True), tf.Pipeline[None, tf.Batch[str]])
    assert_type(texts | tf.sink(save_messages, messages=True), tf.Pipeline[None, None])
    assert_type(texts | tf.unbatch() | tf.sink(log_message, messages=True), tf.Pipeline[None, None])

    # lambdas: mypy gives their parameters Any; a route's key takes its type from the branches
    assert_type(
        ints | tf.route(lambda x: x % 2, {0: tf.sink(save_int), 1: tf.sink(save_int)}),
        tf.Pipeline[None, Any],
    )

    consumer = Payments()
    assert_type(consumer.pipeline(lambda topic: [topic]), tf.Pipeline[None, None])
    assert_type(Orders().pipeline(lambda topic: [topic.encode()]), tf.Pipeline[None, None])
    manager = tf.ConsumerManager([consumer, Orders], source_factory=lambda topic: [topic])
    assert_type(manager.status(), dict[str, tf.ConsumerStatus])
