"""trioflow's guarantees, checked on generated stage graphs (the six invariants of issue 3).

Every test runs each example in a fresh ``trio.run`` under ``MockClock(autojump_threshold=0)``
with trio's scheduler made deterministic for hypothesis, so a failing example replays and
shrinks.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow import _runner
from trioflow.testing import (
    Expected,
    Graph,
    TestSource,
    Token,
    check_pipeline,
    check_pipeline_async,
    pipelines,
    record,
    stages,
    tokens,
)


@given(pipelines(), tokens())
def test_generated_graphs_keep_every_invariant(graph: Graph, items: list[Token]) -> None:
    """1-4 and 6 (size, keys): exactly-once acks, outputs and failures as the model says, bounded
    in flight, well-formed batches; for any graph, with any failure plan."""
    check_pipeline(graph, items)


@given(pipelines(), tokens(), st.integers(1, 6), st.sampled_from([0.05, 1.0]))
def test_generated_graphs_with_a_slow_acknowledger_and_a_tight_bound(
    monkeypatch: pytest.MonkeyPatch,
    graph: Graph,
    items: list[Token],
    ack_buffer: int,
    ack_delay: float,
) -> None:
    """Invariant 4 where it bites: a small ack buffer and a slow broker back everything up."""
    monkeypatch.setattr(_runner, "ACK_BUFFER", ack_buffer)
    check_pipeline(
        lambda src: graph(TestSource(src.iterable, ack_delay=ack_delay)), items, model=graph.model
    )


@given(pipelines(source="single", with_failures=False), tokens())
def test_single_source_graphs_without_failures(graph: Graph, items: list[Token]) -> None:
    """Invariant 2 where order is promised: a chain of order-keeping stages keeps input order."""
    result = check_pipeline(graph, items)
    # only a route without a branch for a key can fail an item here
    assert all(isinstance(reason, KeyError) for _, reason in result.failed)


@given(
    pipelines(),
    tokens(),
    st.one_of(
        st.tuples(st.just("pulled"), st.integers(0, 20)),
        st.tuples(st.just("time"), st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5])),
    ),
)
def test_stop_at_a_random_moment_settles_everything_pulled(
    graph: Graph, items: list[Token], when: tuple[str, float]
) -> None:
    """Invariant 5: a graceful drain finishes, and everything pulled is settled as modelled."""
    kind, at = when
    if kind == "pulled":
        check_pipeline(graph, items, stop_after_pulled=int(at))
    else:
        check_pipeline(graph, items, stop_at=at)


async def _slow(x: Any) -> Any:
    await trio.sleep(0.01)
    return x


@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.sampled_from([None, 1, 2, 3, 7]), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 120),
    st.integers(1, 8),
    st.sampled_from([0.0, 0.05, 1.0]),
)
def test_in_flight_stays_within_the_documented_bound(
    monkeypatch: pytest.MonkeyPatch,
    layers: list[tuple[int, int | None, bool]],
    count: int,
    ack_buffer: int,
    ack_delay: float,
) -> None:
    """Invariant 4 under real pressure: slow stages, small buffers and a slow acknowledger fill
    every queue, with an ack buffer small enough that the bound is tight."""
    monkeypatch.setattr(_runner, "ACK_BUFFER", ack_buffer)
    fragment: Any = None
    for n, buffer, slow in layers:
        stage = tf.process(_slow if slow else (lambda x: x), n, buffer=buffer)
        fragment = stage if fragment is None else fragment | stage
    fragment = fragment | tf.sink(_slow, buffer=1)
    result = check_pipeline(
        lambda _: TestSource(range(count), ack_delay=ack_delay) | fragment,
        [],
        model=lambda xs: Expected(acked=list(xs)),
    )
    assert result.in_flight_bound is not None
    assert result.peak_in_flight <= result.in_flight_bound
    assert result.report.received == count


@given(
    st.integers(1, 6),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.one_of(st.none(), st.integers(2, 3)),
    st.lists(st.tuples(st.integers(0, 9), st.sampled_from([0.0, 0.1, 0.7, 1.5, 3.0])), max_size=25),
)
def test_batches_leave_within_their_timeout(
    size: int, timeout: float, key_mod: int | None, arrivals: list[tuple[int, float]]
) -> None:
    """Invariant 6: at most ``size`` items, one key each, and no older than ``timeout``.

    Items arrive after random (virtual) delays, straight from the source; a batch's age runs from
    the moment its first item was handed to the batch stage to the moment the (idle) sink
    receives it.
    """
    handed: dict[int, float] = {}
    seen: list[tuple[float, list[tuple[int, int]]]] = []

    async def arrive() -> Any:
        for i, (value, delay) in enumerate(arrivals):
            await trio.sleep(delay)
            handed[i] = trio.current_time()
            yield (i, value)

    def save(batch: list[tuple[int, int]]) -> None:
        seen.append((trio.current_time(), batch))

    key = (lambda x: x[1] % key_mod) if key_mod is not None else None
    pipeline = record(arrive) | tf.batch(size, timeout, key=key) | tf.sink(save)
    check_pipeline(pipeline, None, model=lambda xs: Expected(acked=list(xs)))
    assert sorted(i for _, b in seen for i, _ in b) == list(range(len(arrivals)))
    for at, batch in seen:
        assert 0 < len(batch) <= size
        if key_mod is not None:
            assert len({v % key_mod for _, v in batch}) == 1, batch
        opened = min(handed[i] for i, _ in batch)
        # one scheduling step costs no virtual time under autojump
        assert at - opened <= timeout + 1e-9, (at - opened, batch)


@given(st.lists(stages(), min_size=1, max_size=4), st.lists(st.integers(), max_size=30))
def test_neutral_stages_change_nothing_but_order(around: list[Any], xs: list[int]) -> None:
    """The ``stages()`` palette passes data through: any chain of it is the identity."""
    fragment: Any = around[0]
    for s in around[1:]:
        fragment = fragment | s
    check_pipeline(fragment, xs, model=lambda pulled: Expected(outputs=pulled, acked=pulled))


@pytest.mark.parametrize("n", [1, 3])
@given(xs=st.lists(st.integers(), max_size=30))
async def test_under_pytest_trio_with_autojump_clock(
    n: int, xs: list[int], autojump_clock: trio.testing.MockClock
) -> None:
    """The async variant runs in pytest-trio's trio run (deterministic per example)."""
    src = TestSource(xs)
    pipeline = src | tf.process(lambda x: x * 2, n) | tf.batch(4, 1.0) | tf.flat_map(list)
    result = await check_pipeline_async(
        pipeline, None, model=lambda pulled: [2 * x for x in pulled]
    )
    assert sorted(result.outputs) == sorted(2 * x for x in xs)
