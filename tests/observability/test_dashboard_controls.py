"""The dashboard's controls, clicked in headless Chromium (driven over the DevTools protocol:
real mouse events on the page's buttons, text typed into its fields), change the running
pipeline; the page shows the pipeline's name, each stage's workers, and charts of its history.

Skipped when Chromium is missing, except in CI (``CI`` set), where .ci/run installs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial

import pytest
import trio

import trioflow as tf
from trioflow._dashboard import _live
from trioflow.observe import serve_dashboard

from .cdp import CHROMIUM, browser_page
from .pipelines import steerable

pytestmark = pytest.mark.server

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have chromium (see .ci/run)")
    pytest.skip("chromium is not installed", allow_module_level=True)


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not check():  # noqa: ASYNC110 - the browser acts on the pipeline from outside
            await trio.sleep(0.02)


def workers(handle: tf.PipelineHandle, stage: str) -> int:
    return int({s["name"]: s for s in handle.snapshot()["stages"]}[stage]["workers"])


def row(stage: str, part: str) -> str:
    return f'tr[data-control-stage="{stage}"] {part}'


def text_of(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)}).textContent"


async def test_clicking_the_controls_steers_the_pipeline() -> None:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(steerable().serve)
        port = await nursery.start(
            partial(
                serve_dashboard,
                handle,
                port=0,
                pipeline="steer-test",
                interval=0.1,
                history_step=0.2,
            )
        )
        async with browser_page(f"http://127.0.0.1:{port}/") as page:
            await page.wait_for("window.__trioflow && window.__trioflow.controls === 3")
            assert await page.js(text_of("#pipeline")) == "steer-test"
            assert await page.js("document.title") == "trioflow: steer-test"
            assert await page.wait_for(f"{text_of(row('work', '.workers'))} === '2'")

            await page.click("#pause")
            await until(lambda: handle.paused, "paused")
            await page.wait_for(f"{text_of('#state')} === 'paused'")
            await trio.sleep(0.2)  # a hand-over under way when the pause came may finish
            received = handle.metrics.received
            await trio.sleep(0.3)
            assert handle.metrics.received == received  # the sources pull nothing new

            await page.click("#resume")
            await until(lambda: not handle.paused, "resumed")
            await until(lambda: handle.metrics.received > received, "pulling again")
            await page.wait_for(f"{text_of('#state')} === 'running'")

            await page.type_into(row("throttle", "input.count"), "50")
            await page.type_into(row("throttle", "input.per"), "0.5")
            await page.click(row("throttle", "button.set-rate"))
            await until(
                lambda: _live(handle)["rates"]["throttle"] == {"count": 50, "per": 0.5}, "rate"
            )
            await page.wait_for(f"{text_of(row('throttle', '.breaker'))} === '50 per 0.5 s'")

            await page.type_into(row("work", "input.n"), "5")
            await page.click(row("work", "button.resize"))
            await page.wait_for(f"{text_of('#control-status')}.startsWith('resize work: ')")
            assert await page.js(text_of("#control-status")) == "resize work: done"
            await until(lambda: workers(handle, "work") == 5, "resized")
            await page.wait_for(f"{text_of(row('work', '.workers'))} === '5'")

            # a few points of history, drawn as polylines
            await page.wait_for("window.__trioflow.points >= 5")
            for chart in ("throughput", "p99", "in_flight"):
                points = await page.js(
                    f"document.querySelector('#chart-{chart} polyline').getAttribute('points')"
                )
                assert len(points.split()) >= 5, (chart, points)
            assert float(await page.js("window.__trioflow.last.totals.acked")) > 0
        nursery.cancel_scope.cancel()
