"""``/metrics`` speaks OpenMetrics to a scraper that asks for it, Prometheus text to others, and
exports each stage's concurrency limit, breaker state and rate limit as gauges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_prom

import trioflow as tf
from trioflow.observe import serve_metrics

# what Prometheus 2.5x sends (scrape_protocols default)
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


async def noop(item: Any) -> None:
    pass


@asynccontextmanager
async def scraped(pipeline: tf.Pipeline[Any]) -> AsyncIterator[tuple[tf.PipelineHandle, str]]:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        port = await nursery.start(partial(serve_metrics, handle, port=0, pipeline="orders"))
        yield handle, f"http://127.0.0.1:{port}/metrics"
        nursery.cancel_scope.cancel()


def samples(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


async def test_openmetrics_when_asked_prometheus_text_otherwise() -> None:
    send, receive = trio.open_memory_channel[int](10)
    pipeline = tf.from_channel(receive) | tf.process(noop, n=3, name="work") | tf.sink(noop)
    async with scraped(pipeline) as (_, url), httpx.AsyncClient() as client:
        await send.send(1)
        om = await client.get(url, headers={"Accept": PROMETHEUS_ACCEPT})
        plain = await client.get(url)
        plain_too = await client.get(url, headers={"Accept": "text/plain"})

    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    got = samples(parse_om(om.text))  # the OpenMetrics parser accepts it as it is
    assert got[("trioflow_received_total", (("pipeline", "orders"),))] == 1.0
    assert got[("trioflow_stage_workers", (("pipeline", "orders"), ("stage", "work")))] == 3.0
    assert ("process_cpu_seconds_total", ()) in got

    for response in (plain, plain_too):
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# EOF" not in response.text
        got = samples(parse_prom(response.text))
        assert got[("trioflow_received_total", (("pipeline", "orders"),))] == 1.0


async def test_paused_and_rate_limit_gauges_follow_the_handle() -> None:
    _send, receive = trio.open_memory_channel[int](10)
    pipeline = tf.from_channel(receive) | tf.rate_limit(10, per=2.0, name="polite") | tf.sink(noop)
    async with scraped(pipeline) as (handle, url), httpx.AsyncClient() as client:
        key = ("trioflow_stage_rate_limit", (("pipeline", "orders"), ("stage", "polite")))
        paused = ("trioflow_paused", (("pipeline", "orders"),))
        before = samples(parse_prom((await client.get(url)).text))
        handle.set_rate("polite", 30, per=1.0)
        handle.pause()
        after = samples(parse_prom((await client.get(url)).text))
    assert (before[key], before[paused]) == (5.0, 0.0)
    assert (after[key], after[paused]) == (30.0, 1.0)


async def test_breaker_state_is_one_gauge_per_state() -> None:
    _send, receive = trio.open_memory_channel[int](10)
    guarded = tf.sink(noop, breaker=tf.Breaker(failures=3, reset=30.0), name="save")
    pipeline = tf.from_channel(receive) | tf.process(noop, name="work") | guarded
    async with scraped(pipeline) as (handle, url), httpx.AsyncClient() as client:
        snapshot = {s["name"]: s for s in handle.snapshot()["stages"]}
        if "breaker" not in snapshot["save"]:
            pytest.fail("the snapshot has no 'breaker' key yet (PipelineHandle.snapshot)")
        got = samples(parse_prom((await client.get(url)).text))
    states = {
        labels[2][1]: value
        for (name, labels), value in got.items()
        if name == "trioflow_stage_breaker_state"
    }
    assert states == {"closed": 1.0, "open": 0.0, "half_open": 0.0}
    # a stage without a breaker has no breaker series
    assert not any(
        name == "trioflow_stage_breaker_state" and ("stage", "work") in labels
        for name, labels in got
    )
