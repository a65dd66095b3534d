"""``partition_by`` in a ``messages=True`` stage: the key function sees the message (its
metadata), so a broker's record key can order the work without an extra stage."""

from __future__ import annotations

from typing import Any

import trio

import trioflow as tf


async def test_the_key_function_of_a_messages_stage_sees_the_message() -> None:
    keys: list[Any] = []
    order: dict[str, list[int]] = {}

    def by_user(m: tf.Message[int]) -> str:
        keys.append(type(m).__name__)
        return str(m.metadata["user"])

    async def handle(m: tf.Message[int]) -> tf.Message[int]:
        await trio.sleep(0.001 * (m.data % 3))
        order.setdefault(m.metadata["user"], []).append(m.data)
        return m

    src = tf.from_iterable([tf.Message(i, {"user": f"u{i % 4}"}) for i in range(40)])
    report = await (src | tf.process(handle, n=8, partition_by=by_user, messages=True)).run()
    assert report.acked == 40
    assert set(keys) == {"Message"}
    assert order == {f"u{u}": list(range(u, 40, 4)) for u in range(4)}


async def test_the_key_function_of_a_plain_stage_still_sees_the_data() -> None:
    seen: list[Any] = []

    def key(x: int) -> int:
        seen.append(x)
        return x % 2

    src = tf.from_iterable([tf.Message(i, {"k": i}) for i in range(6)])
    await (src | tf.process(lambda x: x, n=2, partition_by=key)).run()
    assert sorted(seen) == list(range(6))
