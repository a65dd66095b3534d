"""The dashboard's controls over plain HTTP: a request without the run's token, with another
token, from a foreign ``Origin`` or marked cross-site is refused and changes nothing; the token
is in the page and nowhere else; bad arguments get a 400 that names them."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

import trioflow as tf
from trioflow._dashboard import _History
from trioflow.observe import serve_dashboard


async def noop(item: Any) -> None:
    pass


@asynccontextmanager
async def dashboard(**options: Any) -> AsyncIterator[tuple[tf.PipelineHandle, str, str]]:
    """A running pipeline, its dashboard, and the token read from the served page."""
    _send, receive = trio.open_memory_channel[int](10)
    pipeline = (
        tf.from_channel(receive)
        | tf.process(noop, n=2, name="work")
        | tf.rate_limit(10, name="throttle")
        | tf.sink(noop, name="save")
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        port = await nursery.start(
            partial(serve_dashboard, handle, port=0, pipeline="guarded", **options)
        )
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            page = (await client.get(base + "/")).text
        found = re.search(r'<meta name="trioflow-token" content="([^"]+)">', page)
        assert found is not None
        yield handle, base, found.group(1)
        nursery.cancel_scope.cancel()


async def post(url: str, body: Any = None, **headers: str) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=content, headers=headers)


async def test_without_the_token_or_with_another_nothing_changes() -> None:
    async with dashboard() as (handle, base, token):
        assert len(token) >= 40
        for headers in ({}, {"X-Trioflow-Token": "x" * len(token)}, {"X-Trioflow-Token": ""}):
            refused = await post(base + "/api/pause", **headers)
            assert refused.status_code == 403
            assert refused.json() == {"error": "missing or wrong x-trioflow-token (see the page)"}
        assert not handle.paused
        done = await post(base + "/api/pause", **{"X-Trioflow-Token": token})
        assert done.status_code == 200
        assert done.json()["paused"] is True
        assert handle.paused


async def test_a_foreign_origin_is_refused_even_with_the_token() -> None:
    async with dashboard() as (handle, base, token):
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": "http://127.0.0.1:1"},  # same host, another port: another origin
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ):
            refused = await post(base + "/api/pause", **{"X-Trioflow-Token": token, **headers})
            assert refused.status_code == 403, headers
        assert not handle.paused
        # the page's own origin, as a browser sends it, is fine
        same = {"Origin": base, "Sec-Fetch-Site": "same-origin", "X-Trioflow-Token": token}
        assert (await post(base + "/api/pause", **same)).status_code == 200
        assert handle.paused
        assert (await post(base + "/api/resume", **same)).status_code == 200
        assert not handle.paused


async def test_allowed_origins_may_steer() -> None:
    other = "https://grafana.example:3000"
    async with dashboard(allowed_origins=[other]) as (handle, base, token):
        done = await post(base + "/api/pause", **{"Origin": other, "X-Trioflow-Token": token})
        assert done.status_code == 200
        assert handle.paused


async def test_resize_and_set_rate_and_their_errors() -> None:
    async with dashboard() as (handle, base, token):
        auth = {"X-Trioflow-Token": token}
        ok = await post(base + "/api/resize", {"stage": "work", "n": 6}, **auth)
        assert ok.status_code == 200
        stages = {s["name"]: s for s in handle.snapshot()["stages"]}
        assert stages["work"]["workers"] == 6
        ok = await post(base + "/api/rate", {"stage": "throttle", "count": 3, "per": 2}, **auth)
        assert ok.status_code == 200
        assert ok.json()["rates"] == {"throttle": {"count": 3, "per": 2.0}}

        unknown = await post(base + "/api/resize", {"stage": "nope", "n": 2}, **auth)
        assert unknown.status_code == 400
        assert "'nope'" in unknown.json()["error"]
        missing = await post(base + "/api/rate", {"count": 3}, **auth)
        assert (missing.status_code, missing.json()) == (400, {"error": "stage"})
        not_json = await post(base + "/api/resize", **auth, **{"Content-Type": "application/json"})
        assert not_json.status_code == 400  # an empty body is not a JSON object
        async with httpx.AsyncClient() as client:
            form = await client.post(
                base + "/api/resize",
                content=b"stage=work&n=1",
                headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
            )
            garbage = await client.post(
                base + "/api/resize",
                content=b"{nope",
                headers={**auth, "Content-Type": "application/json"},
            )
            read = await client.get(base + "/api/pause")
        assert form.status_code == 415
        assert garbage.status_code == 400
        assert garbage.json()["error"].startswith("the body is not JSON")
        assert read.status_code == 405  # a GET (a link, an <img>) never steers
        assert {s["name"]: s for s in handle.snapshot()["stages"]}["work"]["workers"] == 6


async def test_token_is_per_run_and_only_in_the_page() -> None:
    async with dashboard() as (_, base, first), dashboard() as (_, _base2, second):
        assert first != second
        async with httpx.AsyncClient() as client:
            snapshot = (await client.get(base + "/metrics.json")).text
            graph = (await client.get(base + "/graph.json")).text
        assert first not in snapshot
        assert first not in graph


async def test_history_is_kept_by_the_server_for_pages_opened_late() -> None:
    async with dashboard(history=1.0, history_step=0.05) as (_, base, _token):
        await trio.sleep(0.6)
        url = base.replace("http://", "ws://") + "/ws"
        async with open_websocket_url(url) as ws:
            graph = json.loads(await ws.get_message())
            info = json.loads(await ws.get_message())
            snap = json.loads(await ws.get_message())
    assert graph["type"] == "graph"
    assert info["type"] == "info"
    assert info["pipeline"] == "guarded"
    assert info["keep"] == 1.0
    assert 8 <= len(info["history"]) <= 21  # one point every 0.05 s, at most 1 s of them
    assert set(info["history"][0]) == {"t", "throughput", "p99", "in_flight"}
    times = [p["t"] for p in info["history"]]
    assert times == sorted(times)
    assert snap["type"] == "snapshot"
    assert snap["paused"] is False
    assert snap["rates"] == {"throttle": {"count": 10, "per": 1.0}}


async def test_history_points_under_a_mock_clock(autojump_clock: trio.abc.Clock) -> None:
    send, receive = trio.open_memory_channel[int](10)

    async def slow(item: int) -> None:
        await trio.sleep(0.4)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start((tf.from_channel(receive) | tf.sink(slow)).serve)
        kept = _History(handle, step=1.0, keep=10.0)
        nursery.start_soon(kept.run)
        # sent at 0, 1.1, 1.2 and 2.9 s: settled at 0.4, 1.5, 1.9 (after the one before) and 3.3
        for at in (0.0, 1.1, 1.2, 2.9):
            await trio.sleep_until(at)
            await send.send(0)
        await trio.sleep_until(5.5)
        nursery.cancel_scope.cancel()
    points = list(kept.points)
    assert [p["t"] for p in points] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [p["throughput"] for p in points] == [1.0, 2.0, 0.0, 1.0, 0.0]
    assert [p["in_flight"] for p in points] == [0.0, 0.0, 1.0, 0.0, 0.0]
    # p99 over each step (a histogram of 4% buckets): 0.4 s, then 0.4 and 0.7 s, ...
    p99 = [p["p99"] for p in points]
    assert abs(p99[0] - 0.4) <= 0.016
    assert abs(p99[1] - 0.7) <= 0.028
    assert p99[2] == p99[4] == 0.0
    assert abs(p99[3] - 0.4) <= 0.016


async def test_no_page_of_the_server_may_be_framed_by_another_site() -> None:
    # a framed dashboard carries its token: one click there would pass every guard
    async with dashboard() as (_, base, _token), httpx.AsyncClient() as client:
        for path in ("/", "/metrics.json", "/graph.json"):
            got = await client.get(base + path)
            assert got.status_code == 200
            assert got.headers["x-frame-options"] == "DENY"
            assert got.headers["content-security-policy"] == "frame-ancestors 'none'"
            assert got.headers["x-content-type-options"] == "nosniff"


async def test_a_control_request_naming_a_foreign_host_is_refused() -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1
    async with dashboard() as (handle, base, token):
        refused = await post(
            base + "/api/pause", {}, **{"X-Trioflow-Token": token, "Host": "evil.example"}
        )
        assert refused.status_code == 421
        assert not handle.paused
