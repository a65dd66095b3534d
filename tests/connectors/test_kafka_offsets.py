"""Commit positions never pass unfinished work, for any completion order (Kafka source)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow.connectors._offsets import PartitionOffsets


@given(
    st.lists(st.integers(1, 3), min_size=1, max_size=60).map(
        lambda steps: [sum(steps[: i + 1]) for i in range(len(steps))]  # increasing, with gaps
    ),
    st.randoms(use_true_random=False),
    st.integers(1, 10),
)
def test_the_commit_is_the_oldest_unsettled_offset_for_any_order(
    offsets: list[int], rnd: object, chunk: int
) -> None:
    p = PartitionOffsets()
    for i in range(0, len(offsets), chunk):
        p.handed(offsets[i : i + chunk])
    order = list(offsets)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    settled: set[int] = set()
    for offset in order:
        p.settle(offset)
        settled.add(offset)
        unsettled = [o for o in offsets if o not in settled]
        # never past unfinished work, and as far as it may go
        assert p.commit == (min(unsettled) if unsettled else offsets[-1] + 1)
        assert p.in_flight == len(unsettled)


def test_settlements_after_a_revoke_are_ignored() -> None:
    p = PartitionOffsets()
    p.handed([5, 6, 7])
    p.settle(5)
    p.revoked = True
    p.settle(6)
    p.settle(7)
    assert p.commit == 6


def test_an_offset_handed_over_twice_is_a_bug() -> None:
    p = PartitionOffsets()
    p.handed([1, 2])
    with pytest.raises(ValueError, match="offset 2 handed over again"):
        p.handed([2])


def test_nothing_handed_over() -> None:
    assert PartitionOffsets().commit == -1
