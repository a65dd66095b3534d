"""Built-in metrics against workloads whose figures are known exactly (virtual time)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.abc import Outlet, Source
from trioflow.observe import graph, prometheus_text, serve_metrics


async def sleep_1(x: int) -> int:
    await trio.sleep(1)
    return x


async def noop(batch: Any) -> None:
    pass


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 0.05 * b  # the histogram's buckets are ~4% wide


async def test_stage_latency_busy_and_rate(autojump_clock: trio.abc.Clock) -> None:
    # 20 items, 4 workers, 1 s each: 5 s in all, every worker busy all the time
    report = await (tf.from_iterable(range(20)) | tf.process(sleep_1, n=4) | tf.sink(noop)).run()
    st = report.stages["sleep_1"]
    assert report.elapsed == pytest.approx(5.0)
    assert st.count == 20
    assert st.workers == 4
    assert close(st.p50, 1.0)
    assert close(st.p99, 1.0)
    assert st.busy == pytest.approx(20.0)
    assert st.busy_fraction(report.elapsed) == pytest.approx(1.0)
    assert st.rate(report.elapsed) == pytest.approx(4.0)
    assert report.stages["noop"].count == 20


async def test_end_to_end_latency_in_order(autojump_clock: trio.abc.Clock) -> None:
    # n=1 keeps order: item k is acked k seconds after the source handed all 10 over
    report = await (tf.from_iterable(range(10)) | tf.process(sleep_1) | tf.sink(noop)).run()
    e2e = report.end_to_end
    assert e2e.count == 10
    assert close(e2e.p50, 5.0)
    assert close(e2e.p99, 10.0)


async def last_is_late() -> Any:
    for x in range(9):
        yield x
    await trio.sleep(10)
    yield 9


def truthy(x: Any) -> bool:
    return bool(x)


def check(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(x)
    return x


def key(x: int) -> str:
    return "even" if x % 2 == 0 else "odd"


async def test_batch_wait_and_failures_and_dead_letter(autojump_clock: trio.abc.Clock) -> None:
    dead: list[Any] = []
    pipeline = (
        tf.from_aiter(last_is_late()) | tf.process(check) | tf.batch(100, 2.0) | tf.sink(noop)
    ).on_failure(dead.extend)
    report = await pipeline.run()
    assert report.failed == 2
    assert report.dead_lettered == 2
    assert len(dead) == 2
    assert report.stages["check"].failed == 2
    # 7 items waited for the timeout (2 s); the late one was flushed at the end of input
    assert close(report.stages["batch(100, 2.0)"].p50, 2.0)
    assert report.stages["batch(100, 2.0)"].count == 8


async def test_live_snapshot_in_flight_rates_and_fill(autojump_clock: trio.abc.Clock) -> None:
    pipeline = tf.from_iterable(range(100)) | tf.process(sleep_1, n=2, buffer=10) | tf.sink(noop)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(10.5)
        snap = handle.snapshot()
        await trio.sleep(2.0)
        snap = handle.snapshot()  # rates over the last 2 s: a steady 2 items/s
        assert json.loads(json.dumps(snap)) == snap
        assert snap["version"] == 1
        assert snap["state"] == "running"
        work = snap["stages"][0]
        assert work["name"] == "sleep_1"
        assert work["id"] == "s0"
        assert work["kind"] == "process"
        assert work["rate"] == pytest.approx(2.0)
        assert work["busy"] == pytest.approx(1.0)
        assert work["capacity"] == 10
        assert work["queued"] == 10
        assert work["fill"] == 1.0
        # a full buffer, and what the two workers hold (a chunk of at most buffer // n each)
        assert 12 <= work["in_flight"] <= 20
        assert snap["totals"]["settle_rate"] == pytest.approx(2.0)
        assert snap["totals"]["unsettled"] == snap["totals"]["received"] - 24
        live = handle.metrics
        assert live.stages["sleep_1"].in_flight == work["in_flight"]
        handle.stop()
        final = await handle.wait()
    assert handle.state == "stopped"
    assert final.received == final.acked
    assert final.stages["sleep_1"].in_flight == 0


class Lagging(Source[int]):
    """A source that knows how far behind it is, as a broker connector would."""

    def __init__(self) -> None:
        self.left = 5

    async def produce(self, out: Outlet) -> None:
        while self.left:
            await out.send(self.left)
            self.left -= 1

    def source_metrics(self) -> dict[str, float]:
        return {"lag": self.left, "pending": 0}

    @property
    def label(self) -> str:
        return "lagging"


async def test_source_provided_figures(autojump_clock: trio.abc.Clock) -> None:
    report = await (Lagging() | tf.sink(noop)).run()
    assert report.sources == {"lagging": {"lag": 0.0, "pending": 0.0}}


async def test_prometheus_exposition(autojump_clock: trio.abc.Clock) -> None:
    pipeline = (tf.from_iterable(range(10)) | tf.process(sleep_1, n=2) | tf.sink(noop)).on_failure(
        lambda m: None
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        await trio.sleep(2.5)
        text = prometheus_text(handle, pipeline="p").decode()
        handle.stop()
    assert 'trioflow_received_total{pipeline="p"} 10.0' in text
    assert 'trioflow_stage_items_total{pipeline="p",stage="sleep_1"} 4.0' in text
    assert 'trioflow_stage_workers{pipeline="p",stage="sleep_1"} 2.0' in text
    assert 'trioflow_stage_latency_seconds_bucket{le="+Inf",pipeline="p",stage="sleep_1"}' in text
    assert "# TYPE trioflow_stage_latency_seconds histogram" in text
    assert "trioflow_end_to_end_latency_seconds_count" in text
    assert 'trioflow_draining{pipeline="p"} 0.0' in text


async def http_get(port: int, path: str) -> tuple[str, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], body


async def test_metrics_server_serves_prometheus_and_json() -> None:
    pipeline = tf.from_iterable(range(10)) | tf.process(sleep_1) | tf.sink(noop)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        port = await nursery.start(partial(serve_metrics, handle, port=0))
        status, body = await http_get(port, "/metrics")
        assert status == "HTTP/1.1 200 OK"
        assert b"trioflow_received_total" in body
        status, body = await http_get(port, "/metrics.json")
        assert json.loads(body)["totals"]["received"] == 10
        status, _ = await http_get(port, "/nope")
        assert status == "HTTP/1.1 404 Not Found"
        nursery.cancel_scope.cancel()


def test_graph_text_and_mermaid() -> None:
    pipeline = (
        tf.from_iterable(range(4))
        | tf.process(sleep_1, n=3)
        | tf.route(key, {"even": tf.sink(noop), "odd": tf.batch(2)})
        | tf.filter(truthy)
    )
    g = graph(pipeline)
    assert [n.id for n in g.nodes] == ["source", "s0", "s1", "s2", "s3", "s4", "out"]
    assert g.text().splitlines() == [
        "from_iterable(range(0, 4))",
        "  -> sleep_1  process(sleep_1, n=3)  [process, n=3, buffer=1024]",
        "  -> route(key)  route(key, {'even': sink(noop), 'odd': batch(2, 1.0)})  "
        "[route, buffer=1024]",
        "      [even]",
        "        -> noop  sink(noop)  [sink, n=1, buffer=1024]",
        "      [odd]",
        "        -> batch(2, 1.0)  [batch, buffer=1024]",
        "  -> filter(truthy)  [filter, buffer=512]",
        "  -> out  (no sink: outputs are collected or dropped)",
    ]
    assert g.mermaid().splitlines() == [
        "flowchart LR",
        '    source(["from_iterable"])',
        '    s0["sleep_1<br/><small>process x3</small>"]',
        '    s1{"route(key)<br/><small>route</small>"}',
        '    s2["noop<br/><small>sink</small>"]',
        '    s3["batch(2, 1.0)<br/><small>batch</small>"]',
        '    s4["filter(truthy)<br/><small>filter</small>"]',
        '    out(["out"])',
        "    source --> s0",
        "    s0 --> s1",
        '    s1 -- "even" --> s2',
        '    s1 -- "odd" --> s3',
        "    s3 --> s4",
        "    s4 --> out",
    ]
