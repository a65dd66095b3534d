"""Bulk hand-over (``Outlet.send_bulk``, ``BulkAcknowledger.ack_ids``): messages that cost little.

Every message of a bulk is settled exactly once: successful unchanged ones by ``ack_ids``, every
other one by ``ack``; stages, failure handling and metadata behave as for ``send_many``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow.abc import BulkAcknowledger, Outlet, Source


class BulkRecorder:
    """Records every call; ``ids`` of ``ack_ids``, messages of ``ack``."""

    def __init__(self) -> None:
        self.by_id: list[Any] = []
        self.acked: list[tf.Message[Any]] = []
        self.failed: list[tf.Message[Any]] = []
        self.calls = 0

    async def ack_ids(self, ids: list[Any]) -> None:
        self.calls += 1
        self.by_id += ids

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        self.calls += 1
        self.acked += successful
        self.failed += failed

    def settled_ids(self) -> Counter[Any]:
        ids = Counter(self.by_id)
        ids.update(m.metadata["id"] for m in [*self.acked, *self.failed])
        return ids


class PlainRecorder:
    """An acknowledger without ``ack_ids``: bulk messages reach it as messages."""

    def __init__(self) -> None:
        self.acked: list[tf.Message[Any]] = []
        self.failed: list[tf.Message[Any]] = []

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        self.acked += successful
        self.failed += failed


class Bulk(Source[Any]):
    """Hands ``data`` over in bulk chunks as demand allows, ids ``"e<i>"``."""

    def __init__(
        self, data: list[Any], acker: Any, *, metadata: Any = None, chunk: int = 1000
    ) -> None:
        self.data = data
        self.acker = acker
        self.metadata = metadata
        self.chunk = chunk
        self.lots: Any = None

    async def produce(self, out: Outlet) -> None:
        self.lots = out._settler.lots  # to check that nothing is left registered
        i = 0
        while i < len(self.data):
            room = min(await out.demand(), self.chunk)
            part = self.data[i : i + room]
            ids = [f"e{j}" for j in range(i, i + len(part))]
            meta = self.metadata
            if isinstance(meta, list):
                meta = meta[i : i + len(part)]
            await out.send_bulk(part, acknowledger=self.acker, ids=ids, metadata=meta)
            i += len(part)


async def ident(x: Any) -> Any:
    return x


def test_the_protocol_is_exported_and_checkable() -> None:
    assert isinstance(BulkRecorder(), BulkAcknowledger)
    assert not isinstance(PlainRecorder(), BulkAcknowledger)


async def test_successful_bulk_messages_are_acked_by_id_in_few_calls() -> None:
    rec = BulkRecorder()
    src = Bulk(list(range(5000)), rec)
    report = await (src | tf.process(ident, n=4) | tf.sink(ident)).run()
    assert report.acked == 5000
    assert report.received == 5000
    assert sorted(rec.by_id, key=lambda s: int(s[1:])) == [f"e{i}" for i in range(5000)]
    assert rec.acked == []
    assert rec.failed == []
    assert rec.calls < 100  # in groups, not per message
    assert src.lots.by_number == {}  # every lot left the registry


async def test_failed_bulk_messages_go_through_failure_handling_with_their_metadata() -> None:
    rec = BulkRecorder()
    handled: list[tf.Message[Any]] = []

    async def parse(x: int) -> int:
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        return x * 2

    src = Bulk(list(range(100)), rec)
    report = await (src | tf.process(parse) | tf.sink(ident)).on_failure(handled.extend).run()
    assert report.failed == 10
    assert report.acked == 90
    assert [m.data for m in handled] == [x for x in range(100) if x % 10 == 3]  # source data
    assert [m.metadata for m in handled] == [{"id": f"e{x}"} for x in range(100) if x % 10 == 3]
    # the failed ones reach the acknowledger as failed messages, with their reasons
    assert [(m.metadata["id"], type(m.reason)) for m in rec.failed] == [
        (f"e{x}", ValueError) for x in range(100) if x % 10 == 3
    ]
    counts = rec.settled_ids()
    assert set(counts) == {f"e{i}" for i in range(100)}
    assert set(counts.values()) == {1}
    assert src.lots.by_number == {}


async def test_an_acknowledger_without_ack_ids_gets_built_messages() -> None:
    rec = PlainRecorder()
    src = Bulk(["a", "b", "c"], rec, metadata=lambda ident: {"id": ident, "stream": "s"})
    await (src | tf.sink(ident)).run()
    assert [(m.data, m.metadata) for m in rec.acked] == [
        ("a", {"id": "e0", "stream": "s"}),
        ("b", {"id": "e1", "stream": "s"}),
        ("c", {"id": "e2", "stream": "s"}),
    ]
    assert all(m.acknowledger is rec for m in rec.acked)


async def test_a_messages_stage_sees_the_metadata_and_a_change_reaches_the_acknowledger() -> None:
    rec = BulkRecorder()
    seen: list[dict[str, Any]] = []
    calls: list[Any] = []

    def meta(ident: str) -> dict[str, Any]:
        calls.append(ident)
        return {"id": ident, "n": int(ident[1:])}

    async def look(m: tf.Message[int]) -> tf.Message[int]:
        seen.append(dict(m.metadata))
        if m.data == 2:
            return m.with_metadata(flag=True)
        return m

    async def again(m: tf.Message[int]) -> tf.Message[int]:
        return m

    src = Bulk([0, 1, 2, 3], rec, metadata=meta)
    pipeline = src | tf.process(look, messages=True) | tf.process(again, messages=True)
    await (pipeline | tf.sink(ident)).run()
    assert seen == [{"id": f"e{i}", "n": i} for i in range(4)]
    assert calls == ["e0", "e1", "e2", "e3"]  # built once per message, not per stage
    assert sorted(rec.by_id) == ["e0", "e1", "e3"]  # unchanged: by id
    assert [(m.data, m.metadata) for m in rec.acked] == [(2, {"id": "e2", "n": 2, "flag": True})]
    assert src.lots.by_number == {}


async def test_per_item_metadata_list_and_default_metadata() -> None:
    rec = PlainRecorder()
    await (Bulk([1, 2], rec, metadata=[{"k": "a"}, {"k": "b"}]) | tf.sink(ident)).run()
    assert [m.metadata for m in rec.acked] == [{"k": "a"}, {"k": "b"}]
    rec2 = PlainRecorder()
    await (Bulk([1], rec2) | tf.sink(ident)).run()
    assert rec2.acked[0].metadata == {"id": "e0"}


async def test_a_batch_sink_fails_only_the_messages_it_fails() -> None:
    rec = BulkRecorder()

    async def save(batch: tf.Batch[tf.Message[int]]) -> list[tf.Message[int]]:
        return [m.fail("rejected", action="dead_letter") if m.data % 4 == 0 else m for m in batch]

    src = Bulk(list(range(40)), rec)
    report = await (src | tf.batch(10) | tf.sink(save, messages=True)).run()
    assert report.failed == 10
    assert report.acked == 30
    assert sorted(m.data for m in rec.failed) == list(range(0, 40, 4))
    assert {m.action for m in rec.failed} == {"dead_letter"}
    assert len(rec.by_id) == 30
    assert src.lots.by_number == {}


async def test_bulk_items_through_flat_map_unbatch_filter_and_route() -> None:
    rec = BulkRecorder()

    async def split(x: int) -> list[int]:
        return [x, -x]

    async def check(x: int) -> int:
        if x == -7:
            raise ValueError("seven")
        return x

    pipeline = (
        Bulk(list(range(20)), rec)
        | tf.filter(lambda x: x != 5)
        | tf.flat_map(split)
        | tf.batch(4)
        | tf.unbatch()
        | tf.process(check)
        | tf.sink(ident)
    )
    report = await pipeline.run()
    assert report.received == 20
    assert report.acked == 19
    assert report.failed == 1
    assert [m.data for m in rec.failed] == [7]
    assert rec.settled_ids() == Counter(f"e{i}" for i in range(20))


async def test_merged_bulk_sources_with_different_acknowledgers() -> None:
    a, b, c = BulkRecorder(), BulkRecorder(), PlainRecorder()
    src = tf.merge(Bulk(list(range(300)), a), Bulk(list(range(300)), b), Bulk([9], c))
    report = await (src | tf.process(ident, n=3) | tf.batch(7) | tf.sink(ident)).run()
    assert report.acked == 601
    assert len(a.by_id) == 300
    assert len(b.by_id) == 300
    assert len(c.acked) == 1


async def test_an_ack_ids_error_is_contained_and_reported() -> None:
    class Broken(BulkRecorder):
        async def ack_ids(self, ids: list[Any]) -> None:
            raise ConnectionError("redis went away")

    rec = Broken()
    seen: list[tuple[Any, list[Any]]] = []

    class Hooks(tf.abc.Instrument):
        def ack_error(self, acknowledger: Any, messages: list[Any], exc: BaseException) -> None:
            seen.append((acknowledger, [m.data for m in messages]))

    report = await (Bulk([1, 2, 3], rec) | tf.sink(ident)).run(telemetry=Hooks())
    assert report.ack_errors == 3
    assert report.unsettled == 3
    assert report.acked == 0
    assert seen
    assert seen[0][0] is rec
    assert sorted(d for _, ds in seen for d in ds) == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"data": (1, 2)}, "send_bulk: data must be a list, not tuple"),
        ({"data": [1, 2], "ids": ["a"]}, "send_bulk: 1 ids for 2 data items"),
        ({"data": [1], "metadata": [{}, {}]}, "send_bulk: 2 metadata dicts for 1 data items"),
        ({"data": [1], "acknowledger": object()}, "has no ack(successful, failed) method"),
    ],
)
async def test_a_bulk_that_does_not_line_up_is_refused_naming_the_problem(
    kwargs: dict[str, Any], error: str
) -> None:
    class Bad(Source[Any]):
        async def produce(self, out: Outlet) -> None:
            await out.send_bulk(**{"acknowledger": PlainRecorder(), **kwargs})

    with pytest.raises(tf.PipelineError, match="Bad") as info:
        await (Bad() | tf.sink(ident)).run()
    assert error in str(info.value.__cause__)


async def test_a_hard_stop_leaves_bulk_messages_unsettled_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = BulkRecorder()

    async def slow(x: int) -> int:
        await trio.sleep(1)
        return x

    src = Bulk(list(range(50)), rec)
    with trio.move_on_after(10.5):
        report = None
        report = await (src | tf.process(slow) | tf.sink(ident)).run()
    assert report is None
    assert 9 <= len(rec.by_id) <= 11


async def test_a_drain_acks_what_was_handed_over(autojump_clock: trio.testing.MockClock) -> None:
    rec = BulkRecorder()
    stop = trio.Event()

    async def slow(x: int) -> int:
        await trio.sleep(0.01)
        if x == 20:
            stop.set()
        return x

    src = Bulk(list(range(10_000)), rec, chunk=50)
    report = await (src | tf.process(slow) | tf.sink(ident)).run(stop=stop)
    assert report.received == report.acked + report.failed + report.unsettled
    assert report.unsettled == 0
    assert report.acked == len(rec.by_id)
    assert report.received < 10_000
    assert src.lots.by_number == {}


# -- plain data that are tuples: their origins are wrapped, never taken for bulk refs ----------


async def test_plain_tuple_data_fail_with_their_own_data() -> None:
    handled: list[tf.Message[Any]] = []

    async def check(pair: tuple[int, int]) -> int:
        if pair[0] == 2:
            raise ValueError("two")
        return pair[0] + pair[1]

    data: list[Any] = [(1, 2), (2, 3), 4, (5, 6, 7), ()]

    async def add(x: Any) -> Any:
        return x if not isinstance(x, tuple) else await check(x[:2] if x else (0, 0))

    report = (
        await (tf.from_iterable(data) | tf.process(add) | tf.sink(ident))
        .on_failure(handled.extend)
        .run()
    )
    assert report.acked == 4
    assert report.failed == 1
    assert [m.data for m in handled] == [(2, 3)]


async def test_plain_tuples_beside_messages_in_one_chunk() -> None:
    rec = PlainRecorder()
    handled: list[tf.Message[Any]] = []

    async def check(x: Any) -> Any:
        if x == (1, 2):
            raise ValueError("pair")
        return x

    class Mixed(Source[Any]):
        async def produce(self, out: Outlet) -> None:
            await out.send_many([(1, 2), tf.Message((3, 4), {"id": 1}, rec), (5, 6)])

    pipeline = Mixed() | tf.process(check) | tf.sink(ident)
    report = await pipeline.on_failure(handled.extend).run()
    assert report.acked == 2
    assert [m.data for m in handled] == [(1, 2)]
    assert [m.data for m in rec.acked] == [(3, 4)]


async def test_plain_tuple_data_through_a_batch_and_a_messages_stage() -> None:
    got: list[Any] = []

    async def save(batch: tf.Batch[tf.Message[tuple[int, int]]]) -> list[Any]:
        got.extend(m.data for m in batch)
        return [m.fail("odd") if m.data[0] % 2 else m for m in batch]

    handled: list[tf.Message[Any]] = []
    pipeline = tf.from_iterable([(i, i) for i in range(6)]) | tf.batch(3)
    report = await (pipeline | tf.sink(save, messages=True)).on_failure(handled.extend).run()
    assert got == [(i, i) for i in range(6)]
    assert sorted(m.data for m in handled) == [(1, 1), (3, 3), (5, 5)]
    assert report.acked == 3


# -- the invariant, for any failures and shapes ---------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    bad=st.sets(st.integers(0, 299)),
    changed=st.sets(st.integers(0, 299)),
    size=st.integers(1, 9),
    batched=st.booleans(),
    workers=st.integers(1, 4),
    chunk=st.integers(1, 64),
)
def test_every_bulk_message_is_settled_exactly_once(
    n: int,
    bad: set[int],
    changed: set[int],
    size: int,
    batched: bool,
    workers: int,
    chunk: int,
) -> None:
    rec = BulkRecorder()

    async def mark(m: tf.Message[int]) -> tf.Message[int]:
        if m.data in changed:
            m = m.with_metadata(changed=True)
        if m.data in bad and m.data % 2:
            return m.fail("odd and bad")
        return m

    async def check(x: int) -> int:
        if x in bad:
            raise ValueError(x)
        return x

    async def save(batch: Any) -> None:
        pass

    src = Bulk(list(range(n)), rec, chunk=chunk)
    pipeline: Any = src | tf.process(mark, n=workers, messages=True)
    pipeline = pipeline | tf.process(check, n=workers)
    pipeline = pipeline | tf.batch(size) | tf.sink(save) if batched else pipeline | tf.sink(save)
    report = trio.run(pipeline.run)
    assert report.received == n
    assert report.unsettled == 0
    assert report.failed == len(bad & set(range(n)))
    counts = rec.settled_ids()
    assert set(counts) == {f"e{i}" for i in range(n)}
    assert set(counts.values()) <= {1}
    assert sorted(m.data for m in rec.failed) == sorted(bad & set(range(n)))
    assert {m.metadata["id"] for m in rec.acked} == {
        f"e{i}" for i in changed & set(range(n)) if i not in bad
    }
    assert n == 0 or src.lots.by_number == {}


# -- review findings --------------------------------------------------------------------------


class SlowAcker(BulkRecorder):
    async def ack_ids(self, ids: list[Any]) -> None:
        await trio.sleep(1)  # a slow broker round trip: settled messages back up
        await super().ack_ids(ids)

    async def ack(self, successful: list[tf.Message[Any]], failed: list[tf.Message[Any]]) -> None:
        await trio.sleep(1)
        await super().ack(successful, failed)


async def test_poison_and_good_messages_of_one_pull_are_never_separated_by_a_drain(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trioflow._runner as runner

    monkeypatch.setattr(runner, "ACK_BUFFER", 4)
    rec = SlowAcker()
    pulled: list[str] = []

    class Pulls(Source[Any]):
        async def produce(self, out: Outlet) -> None:
            for first in (0, 7):  # two pulls of distinct entries
                await trio.sleep(0.1)
                ids = [f"e{i}" for i in range(first, first + 7)]
                pulled.extend(ids)
                poison = [tf.Message(i, {"id": i}, rec).fail("poison") for i in ids[:4]]
                if first == 0:
                    poison = []
                await out.send_bulk(
                    list(range(len(ids) - len(poison))),
                    acknowledger=rec,
                    ids=ids[len(poison) :],
                    failed=poison,
                )
            await trio.sleep_forever()

    stop = trio.Event()

    async def stopper() -> None:
        await trio.sleep(0.5)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stopper)
        report = await (Pulls() | tf.sink(ident)).run(stop=stop)
    settled = rec.settled_ids()
    # everything pulled was handed over and settled, each once
    assert settled == Counter(pulled)
    assert len(pulled) == 14
    assert report.received == len(pulled)


async def test_settled_items_of_a_lot_still_in_flight_are_forgotten() -> None:
    nine = trio.Event()

    class Rec(BulkRecorder):
        async def ack_ids(self, ids: list[Any]) -> None:
            await super().ack_ids(ids)
            if len(self.by_id) >= 9:
                nine.set()

    rec = Rec()
    release = trio.Event()
    lots: list[Any] = []

    class One(Source[Any]):
        async def produce(self, out: Outlet) -> None:
            lots.append(out._settler.lots)
            await out.send_bulk(
                [b"x" * 100 for _ in range(10)], acknowledger=rec, ids=list(range(10))
            )

    async def wait_for_last(m: tf.Message[bytes]) -> tf.Message[bytes]:
        if m.metadata["id"] == 9:
            await release.wait()
        return m

    async with trio.open_nursery() as nursery:
        pipeline = One() | tf.process(wait_for_last, n=4, messages=True) | tf.sink(ident)
        nursery.start_soon(pipeline.run)
        await nine.wait()
        (lot,) = lots[0].by_number.values()
        assert lot.data[:9] == [None] * 9  # acked: forgotten while item 9 is in flight
        assert lot.data[9] == b"x" * 100
        release.set()
    assert sorted(rec.by_id) == list(range(10))


@pytest.mark.parametrize(
    ("acknowledger", "error"),
    [
        (type("SyncIds", (PlainRecorder,), {"ack_ids": lambda self, ids: None})(), "async"),
    ],
)
async def test_a_sync_ack_ids_is_refused(acknowledger: Any, error: str) -> None:
    class Src(Source[Any]):
        async def produce(self, out: Outlet) -> None:
            await out.send_bulk([1], acknowledger=acknowledger)

    with pytest.raises(tf.PipelineError) as info:
        await (Src() | tf.sink(ident)).run()
    assert "ack_ids must be an async function" in str(info.value.__cause__)


async def test_metadata_must_be_a_list_or_a_function() -> None:
    class Src(Source[Any]):
        async def produce(self, out: Outlet) -> None:
            await out.send_bulk([1], acknowledger=PlainRecorder(), metadata={"a": 1})  # type: ignore[arg-type]

    with pytest.raises(tf.PipelineError) as info:
        await (Src() | tf.sink(ident)).run()
    assert "metadata must be a list of dicts" in str(info.value.__cause__)


async def test_a_recorder_of_no_test_source_records_the_ids() -> None:
    from trioflow.testing import RecordingAcknowledger

    rec = RecordingAcknowledger()

    class Src(Source[Any]):
        async def produce(self, out: Outlet) -> None:
            await out.send_bulk(["a", "b"], acknowledger=rec, ids=[10, 11])

    await (Src() | tf.sink(ident)).run()
    assert sorted(rec.acked) == [10, 11]
