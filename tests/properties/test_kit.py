"""The kit itself: it catches broken stages, shrinks to small graphs, and its helpers work."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow import _acking
from trioflow._operators import _batch, _context
from trioflow.testing import (
    Expected,
    Graph,
    InvariantViolation,
    PushSource,
    TestSource,
    Token,
    check_pipeline,
    failures,
    pipelines,
    record,
    test_batch,
    test_message,
    tokens,
    tokens_of,
)

# -- broken stages are caught ---------------------------------------------------------------------


def test_a_stage_that_drops_an_item_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _context.Terminal.put_many

    async def drop_first(self: Any, values: list[Any], origins: list[Any]) -> None:
        await real(self, values[1:], origins[1:])

    monkeypatch.setattr(_context.Terminal, "put_many", drop_first)
    with pytest.raises(InvariantViolation, match=r"^invariant 1 \(nothing disappears\): "):
        check_pipeline(tf.process(lambda x: x) | tf.sink(lambda x: None), [1, 2, 3])


def test_a_stage_that_acks_twice_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _acking.Settler.ok

    def twice(self: Any, origins: list[Any]) -> None:
        real(self, origins)
        real(self, origins)

    monkeypatch.setattr(_acking.Settler, "ok", twice)
    with pytest.raises(InvariantViolation, match=r"^invariant 1 \(acked exactly once\): "):
        check_pipeline(tf.process(lambda x: x + 1), [1, 2, 3])


def _mix_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _batch._add_keyed

    async def ignore_keys(*args: Any) -> None:
        open_, values, origins, size, now, timeout, key_fn, emit, ctx = args

        # a broken batch: computes the keys (and their failures) but files everything together
        def key(value: Any) -> Any:
            key_fn(value)
            return 0

        await real(open_, values, origins, size, now, timeout, key, emit, ctx)

    monkeypatch.setattr(_batch, "_add_keyed", ignore_keys)


def test_a_batch_that_mixes_keys_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    _mix_keys(monkeypatch)
    from trioflow.testing._graph import BatchSpec, FlatMapSpec

    graph = Graph((BatchSpec(0, 4, None, 2), FlatMapSpec(1, "list")))
    with pytest.raises(InvariantViolation, match=r"^invariant 6 \(batch keys\): "):
        check_pipeline(graph, tokens_of([0, 1, 2, 3]))


def test_shrinking_finds_the_smallest_graph_that_mixes_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hypothesis shrinks a failing graph to its essence: one keyed batch and two items."""
    _mix_keys(monkeypatch)

    def breaks(case: tuple[Graph, list[Token]]) -> bool:
        graph, items = case
        try:
            check_pipeline(graph, items)
        except InvariantViolation:
            return True
        return False

    graph, items = find(
        st.tuples(pipelines(with_failures=False), tokens()),
        breaks,
        settings=settings(
            max_examples=2000,
            database=None,
            deadline=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        ),
        random=random.Random(1),  # shrinking is a search: keep its outcome reproducible
    )
    # two items of different keys, or one item split into two (flat_map) before the batch
    assert len(items) <= 2
    assert "key=mod" in repr(graph)
    # a source, the batch, and a few stages to feed and observe it, out of up to a dozen drawn
    assert repr(graph).count("|") <= 5, repr(graph)


def test_a_wrong_stage_is_caught_by_the_model() -> None:
    def model(xs: list[int]) -> list[int]:
        return [x + 1 for x in xs]

    with pytest.raises(
        InvariantViolation, match=r"^invariant 2 \(outputs\): missing \[4\], unexpected \[0\]\n"
    ):
        check_pipeline(tf.process(lambda x: x + 1 if x != 3 else 0), [1, 2, 3], model=model)


def test_a_deadlock_is_caught() -> None:
    async def forever(x: Any) -> Any:
        await trio.sleep_forever()

    with pytest.raises(
        InvariantViolation, match=r"^invariant 5 \(no deadlock\): the run did not finish"
    ):
        check_pipeline(tf.process(forever), [1], max_time=60.0)


def test_breaking_the_in_flight_bound_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow import _topology

    monkeypatch.setattr(_topology.Topology, "in_flight_bound", lambda self: 2)
    with pytest.raises(InvariantViolation, match=r"^invariant 4 \(bounded in flight\): 3 items"):
        check_pipeline(tf.process(lambda x: x, buffer=3), [1, 2, 3])


def test_unexpected_failures_and_reasons_are_caught() -> None:
    def boom(x: int) -> int:
        if x == 2:
            raise ValueError(x)
        return x

    check_pipeline(tf.process(boom), [1, 2], model=lambda xs: Expected(failed={2: ValueError}))
    with pytest.raises(InvariantViolation, match=r"^invariant 3 \(failures\): item 2 failed"):
        check_pipeline(tf.process(boom), [1, 2], model=lambda xs: Expected(failed={}))
    with pytest.raises(InvariantViolation, match=r"^invariant 3 \(failure reasons\): item 2"):
        check_pipeline(tf.process(boom), [1, 2], model=lambda xs: Expected(failed={2: KeyError}))


# -- strategies ------------------------------------------------------------------------------------


@given(failures([3, 5], items=4))
def test_failure_plans_name_the_given_stages_and_items(plan: Any) -> None:
    for fault in plan.faults:
        assert fault.stage in (3, 5)
        assert 0 <= fault.item < 4
        assert fault.times is None or fault.times >= 1


@given(pipelines(sink=True), tokens(max_size=5))
def test_sink_true_graphs_end_in_a_sink(graph: Graph, items: list[Token]) -> None:
    assert check_pipeline(graph, items).outputs == []
    assert repr(graph.pipeline).rsplit("|", 1)[-1].strip().startswith("sink(")


# -- recording, pushing, fixtures -----------------------------------------------------------------


async def test_record_forwards_outcomes_to_the_sources_own_acknowledger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Broker:
        def __init__(self) -> None:
            self.outcomes: list[tuple[str, Any]] = []

        async def ack(self, ok: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
            self.outcomes += [("ok", m.metadata["id"]) for m in ok]
            self.outcomes += [("failed", m.metadata["id"]) for m in failed]

    broker = Broker()
    messages = [tf.Message(x, {"id": f"e{x}"}, broker) for x in range(4)]

    def odd_fails(x: int) -> None:
        if x % 2:
            raise ValueError(x)

    src = record(tf.merge(messages[:2], messages[2:]))
    report = await (src | tf.sink(odd_fails)).run()
    assert report.acked == 2
    assert sorted(src.acked) == [0, 2]
    assert sorted(x for x, _ in src.failed) == [1, 3]
    assert src.pulled == 4
    assert not src.unsettled()
    assert sorted(broker.outcomes) == [
        ("failed", "e1"),
        ("failed", "e3"),
        ("ok", "e0"),
        ("ok", "e2"),
    ]


async def test_test_message_and_test_batch(
    push_source: PushSource[int],
    start_pipeline: Any,
    autojump_clock: trio.testing.MockClock,
) -> None:
    saved: list[list[int]] = []

    async def save(batch: list[int]) -> None:
        if 13 in batch:
            raise RuntimeError("unlucky")
        saved.append(batch)

    handle = await start_pipeline(push_source | tf.batch(3, 1.0) | tf.sink(save))
    outcome = await test_message(push_source, 1)
    assert outcome.ok
    assert saved == [[1]]
    assert trio.current_time() == pytest.approx(1.0)  # the batch waited for its timeout

    outcomes = await test_batch(push_source, [2, 3, 4])
    assert [o.status for o in outcomes] == ["ok"] * 3
    assert saved[-1] == [2, 3, 4]

    failed = await test_message(push_source, 13)
    assert failed.status == "failed"
    assert isinstance(failed.reason, RuntimeError)
    assert handle.metrics.failed == 1


async def test_recording_source_fixture_with_autojump_clock(
    recording_source: Any, autojump_clock: trio.testing.MockClock
) -> None:
    src: TestSource[int] = recording_source(range(5))
    out = await tf.collect(src | tf.rate_limit(1, per=1.0))
    assert out == [0, 1, 2, 3, 4]
    assert src.acked == [0, 1, 2, 3, 4]
    assert trio.current_time() == pytest.approx(4.0)


def test_check_pipeline_async_refuses_a_real_clock() -> None:
    from trioflow.testing import check_pipeline_async

    async def main() -> None:
        await check_pipeline_async(tf.process(lambda x: x), [1])

    with pytest.raises(RuntimeError, match=r"^check_pipeline_async needs a trio.testing.MockClock"):
        trio.run(main)
