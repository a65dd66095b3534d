"""Core bugs the properties found, as minimal reproductions (fixed; kept as regressions)."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import example, given
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import Expected, check_pipeline


@example(delays=[0.0, 0.0, 0.7])
@given(delays=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), max_size=8))
def test_a_finished_item_is_not_held_behind_a_slower_one(delays: list[float]) -> None:
    """Found by the batch-age property: an item done at t=0 reached its batch at t=0.7."""
    finished: dict[int, float] = {}
    received: dict[int, float] = {}

    async def work(item: tuple[int, float]) -> int:
        i, delay = item
        await trio.sleep(delay)
        finished[i] = trio.current_time()
        return i

    def save(batch: list[int]) -> None:
        for i in batch:
            received[i] = trio.current_time()

    items = list(enumerate(delays))
    fragment: Any = tf.process(work) | tf.batch(1, 0.5) | tf.sink(save)
    check_pipeline(fragment, items, model=lambda xs: Expected(acked=list(xs)))
    late = {i: received[i] - finished[i] for i in finished if received[i] > finished[i]}
    assert not late, f"items held back after their call finished (seconds): {late}"
