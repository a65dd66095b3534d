"""W11 tracing overhead: W2 with no instrument, and traced by ``trioflow.observe.OpenTelemetry``.

The pipeline is W2's (ints through three async stages that do not suspend, then a sink), so
each item makes four stage calls and, when traced and sampled, four spans. Rows:

* ``trioflow``: no instrument (the baseline): tracing off; no stage is wrapped;
* ``trioflow+noop``: ``OpenTelemetry(NoOpTracerProvider())`` (``OpenTelemetry()`` without an
  SDK set up is the same): the instrument declines to wrap the stages, but the seam still builds
  each item's view (a ``Message``) for them;
* ``trioflow+sdk-unsampled``: the SDK with the ``ALWAYS_OFF`` sampler: spans are made but not
  recorded (what a service pays for the calls it does not sample);
* ``trioflow+sdk``: the SDK, every span sampled and handed to a processor that drops it (the
  SDK's cost without an exporter's I/O).

The clock runs around ``trio.run`` only (OpenTelemetry's imports are excluded).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import trio

from ._common import w2_expected
from .w2_transforms import trioflow_pipeline

TITLE = "W11 tracing overhead"
DESCRIPTION = (
    "W2 ({n} ints, three non-suspending async stages, sink): no instrument vs "
    "trioflow.observe.OpenTelemetry with a no-op provider, and with the SDK (unsampled, sampled)"
)
METRIC = "time"
BASELINE = "trioflow"
SIZES = {"default": {"n": 500_000}, "quick": {"n": 2_000}}
#: the traced rows are slower: fewer items (throughput is what is compared)
PEER_SIZES = {
    "trioflow+sdk-unsampled": {"n": 50_000},
    "trioflow+sdk": {"n": 20_000},
}


def expected(p: dict[str, Any]) -> dict[str, int]:
    return w2_expected(p["n"])


def _run(n: int, instrument: Any) -> dict[str, Any]:
    import trioflow as tf

    total = {"sum": 0, "count": 0}
    pipeline = trioflow_pipeline(tf.from_iterable(range(n)), total)
    telemetry = [] if instrument is None else [instrument]
    started = time.perf_counter()
    trio.run(partial(pipeline.run, telemetry=telemetry))
    return {**total, "elapsed_s": time.perf_counter() - started}


def run_off(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p["n"], None)


def run_noop(p: dict[str, Any]) -> dict[str, Any]:
    from opentelemetry.trace import NoOpTracerProvider

    from trioflow.observe import OpenTelemetry

    return _run(p["n"], OpenTelemetry(NoOpTracerProvider()))


def _sdk(sampled: bool) -> tuple[Any, list[int]]:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    ended = [0]

    class Drop(SpanProcessor):
        def on_end(self, span: Any) -> None:
            ended[0] += 1

    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    provider.add_span_processor(Drop())
    return provider, ended


def run_sdk(p: dict[str, Any]) -> dict[str, Any]:
    from trioflow.observe import OpenTelemetry

    provider, ended = _sdk(True)
    got = _run(p["n"], OpenTelemetry(provider))
    if ended[0] != 4 * p["n"]:  # a span per item per stage
        raise AssertionError(f"{ended[0]} spans for {p['n']} items in 4 stages")
    return {**got, "spans": ended[0]}


def run_sdk_unsampled(p: dict[str, Any]) -> dict[str, Any]:
    from trioflow.observe import OpenTelemetry

    provider, ended = _sdk(False)
    got = _run(p["n"], OpenTelemetry(provider))
    if ended[0]:
        raise AssertionError(f"{ended[0]} spans recorded with the ALWAYS_OFF sampler")
    return got


IMPLS = {
    "trioflow": run_off,
    "trioflow+noop": run_noop,
    "trioflow+sdk-unsampled": run_sdk_unsampled,
    "trioflow+sdk": run_sdk,
}
NOTES = {
    "trioflow": "no instrument: tracing off, no stage wrapped",
    "trioflow+noop": "OpenTelemetry(NoOpTracerProvider()): declines to wrap (the seam's views "
    "remain)",
    "trioflow+sdk-unsampled": "SDK TracerProvider(sampler=ALWAYS_OFF)",
    "trioflow+sdk": "SDK TracerProvider, every span sampled, a processor that drops them",
}
SKIPPED: dict[str, str] = {}
