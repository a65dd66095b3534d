"""Prometheus exposition of a running pipeline's figures (needs ``trioflow[prometheus]``).

The figures are read when Prometheus scrapes, from the pipeline's own thread: nothing is
recorded twice, and a pipeline nobody scrapes pays nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._http import HEAD_TIMEOUT, MAX_CONNECTIONS, Access, Request, check_loopback, serve_http

if TYPE_CHECKING:
    from ._report import Histogram
    from ._runner import PipelineHandle

__all__ = ["exposition", "prometheus_collector", "prometheus_text", "render", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: what ``/metrics`` answers when the scraper's ``Accept`` asks for OpenMetrics
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: the states of a stage's breaker, as the ``state`` label of ``trioflow_stage_breaker_state``
BREAKER_STATES = ("closed", "open", "half_open")
#: latency bucket bounds (seconds): Prometheus histograms, so several processes aggregate
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def _histogram(metric: Any, labels: dict[str, str], hist: Histogram) -> None:
    """Add ``hist`` to ``metric`` as Prometheus histogram samples (``le`` buckets, count, sum)."""
    name = metric.name
    for bound, count in zip(BUCKETS, hist.cumulative(BUCKETS), strict=True):
        metric.add_sample(name + "_bucket", {**labels, "le": f"{bound:g}"}, count)
    metric.add_sample(name + "_bucket", {**labels, "le": "+Inf"}, hist.count)
    metric.add_sample(name + "_count", labels, hist.count)
    metric.add_sample(name + "_sum", labels, hist.total)


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "Prometheus exposition needs 'prometheus-client': "
            "install it with pip install 'trioflow[prometheus]'"
        ) from exc
    return prometheus_client


def prometheus_collector(handle: PipelineHandle, *, pipeline: str = "") -> Any:
    """A ``prometheus_client`` collector for ``handle``: register it in your own registry.

    Every sample carries a ``pipeline`` label (``pipeline=``, default empty) so several
    pipelines can share a registry.

    Examples:
        >>> from prometheus_client import REGISTRY
        >>> REGISTRY.register(prometheus_collector(handle, pipeline="import"))
    """
    _client()
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    class _Collector:
        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Iterator[Any]:
            run = handle._run  # pyright: ignore[reportPrivateUsage]
            report = run.report()
            base = ["pipeline"]
            lv = [pipeline]

            def counter(name: str, doc: str, value: float) -> Any:
                c = CounterMetricFamily(name, doc, labels=base)
                c.add_metric(lv, value)
                return c

            yield counter("trioflow_received", "Messages handed over by sources.", report.received)
            yield counter("trioflow_acked", "Messages acked as successful.", report.acked)
            failed = CounterMetricFamily(
                "trioflow_failed", "Messages acked as failed, by reason.", labels=[*base, "reason"]
            )
            for reason, count in sorted(report.failed_by_reason.items()):
                failed.add_metric([*lv, reason], count)
            yield failed
            yield counter("trioflow_retried", "Retry calls.", report.retried)
            yield counter("trioflow_filtered", "Messages dropped by a filter.", report.filtered)
            yield counter(
                "trioflow_dead_lettered",
                "Failed messages handed to the on_failure handler.",
                report.dead_lettered,
            )
            yield counter(
                "trioflow_ack_errors",
                "Messages left un-acked because their acknowledger's ack raised.",
                report.ack_errors,
            )
            yield counter(
                "trioflow_failure_handler_errors",
                "Failed messages left un-acked because the on_failure handler raised.",
                report.failure_handler_errors,
            )
            unsettled = GaugeMetricFamily(
                "trioflow_in_flight", "Messages received and not settled yet.", labels=base
            )
            abandoned = report.ack_errors + report.failure_handler_errors
            unsettled.add_metric(lv, report.unsettled - abandoned)
            yield unsettled
            draining = GaugeMetricFamily(
                "trioflow_draining", "1 while a graceful drain is under way.", labels=base
            )
            draining.add_metric(lv, 1.0 if run.state() == "draining" else 0.0)
            yield draining
            paused = GaugeMetricFamily(
                "trioflow_paused", "1 while handle.pause() holds the sources.", labels=base
            )
            paused.add_metric(lv, 1.0 if handle.paused else 0.0)
            yield paused

            e2e = Metric(
                "trioflow_end_to_end_latency_seconds",
                "From hand-over by the source to settlement.",
                "histogram",
            )
            _histogram(e2e, {"pipeline": pipeline}, run.meter.latency)
            yield e2e

            sl = [*base, "stage"]
            items = CounterMetricFamily("trioflow_stage_items", "Items done by a stage.", labels=sl)
            stage_failed = CounterMetricFamily(
                "trioflow_stage_failed", "Items failed in a stage.", labels=sl
            )
            busy = CounterMetricFamily(
                "trioflow_stage_busy_seconds",
                "Seconds a stage's workers held work, summed over workers.",
                labels=sl,
            )
            workers = GaugeMetricFamily(
                "trioflow_stage_workers",
                "A stage's concurrency limit now (resize, Adaptive).",
                labels=sl,
            )
            breaker = GaugeMetricFamily(
                "trioflow_stage_breaker_state",
                "1 for the state a stage's breaker is in (closed, open, half_open), 0 for the "
                "others; stages without a breaker have none.",
                labels=[*sl, "state"],
            )
            rate_limit = GaugeMetricFamily(
                "trioflow_stage_rate_limit",
                "Items per second a rate_limit stage lets through now (set_rate).",
                labels=sl,
            )
            live = {entry["name"]: entry for entry in handle.snapshot()["stages"]}
            in_flight = GaugeMetricFamily(
                "trioflow_stage_in_flight", "Items in a stage: queued or worked on.", labels=sl
            )
            queued = GaugeMetricFamily(
                "trioflow_stage_queued", "Items in a stage's input buffer.", labels=sl
            )
            capacity = GaugeMetricFamily(
                "trioflow_stage_capacity", "Size of a stage's input buffer, in items.", labels=sl
            )
            lat = Metric(
                "trioflow_stage_latency_seconds",
                "Per-item time in a stage (for a batch: the wait for the batch to leave).",
                "histogram",
            )
            for label, st in report.stages.items():
                v = [*lv, label]
                items.add_metric(v, st.count)
                stage_failed.add_metric(v, st.failed)
                busy.add_metric(v, st.busy)
                entry = live.get(label, {})
                workers.add_metric(v, entry.get("workers", st.workers))
                state = entry.get("breaker")
                if state is not None:
                    for name in BREAKER_STATES:
                        breaker.add_metric([*v, name], 1.0 if name == state else 0.0)
                in_flight.add_metric(v, st.in_flight)
                queued.add_metric(v, st.queued)
                capacity.add_metric(v, st.capacity)
                _histogram(lat, {"pipeline": pipeline, "stage": label}, run.histograms[label])
            for ctx in run.contexts:
                per = getattr(ctx.control, "per", None)
                if per:
                    rate_limit.add_metric([*lv, ctx.label], ctx.control.count / per)
            yield from (items, stage_failed, busy, workers, in_flight, queued, capacity, lat)
            yield from (breaker, rate_limit)

            yield from _source_gauges(report.sources, base, lv)

    return _Collector()


def _source_gauges(
    sources: dict[str, dict[str, float]], base: list[str], lv: list[str]
) -> Iterator[Any]:
    """One gauge per figure name across the sources (``source`` label); a figure keyed
    ``name[part]`` (a Kafka source's ``lag[orders/3]``) goes to ``trioflow_source_partition_name``
    with a ``partition`` label."""
    from prometheus_client.core import GaugeMetricFamily

    families: dict[str, Any] = {}
    for source, figures in sources.items():
        for key, value in figures.items():
            part = _PART.fullmatch(key)
            if part is None:
                metric, labels, values = (
                    f"trioflow_source_{_metric_name(key)}",
                    ["source"],
                    [source],
                )
            else:
                metric = f"trioflow_source_partition_{_metric_name(part[1])}"
                labels, values = ["source", "partition"], [source, part[2]]
            family = families.get(metric)
            if family is None:
                family = families[metric] = GaugeMetricFamily(
                    metric, f"Reported by the source: {key}.", labels=[*base, *labels]
                )
            family.add_metric([*lv, *values], value)
    yield from families.values()


_PART = re.compile(r"([^\[]+)\[(.+)\]")


def _metric_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key).lower() or "value"


def prometheus_text(
    handle: PipelineHandle, *, pipeline: str = "", openmetrics: bool = False
) -> bytes:
    """The Prometheus text exposition of ``handle``'s figures and of the process (``process_*``:
    CPU, memory, descriptors), which is what ``/metrics`` serves; ``openmetrics=True``: the
    OpenMetrics text instead (counters end in ``_total``, ``# EOF`` at the end).

    Examples:
        >>> print(prometheus_text(handle).decode())
    """
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else ""
    return exposition(handle, pipeline=pipeline, accept=accept)[1]


def exposition(
    handle: PipelineHandle, *, pipeline: str = "", accept: str = ""
) -> tuple[str, bytes]:
    """Content type and body of ``/metrics`` for a scraper whose ``Accept`` header is ``accept``:
    OpenMetrics when it asks for ``application/openmetrics-text``, Prometheus text otherwise."""
    client = _client()
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(prometheus_collector(handle, pipeline=pipeline))
    # the process's own figures (CPU seconds, resident memory, open descriptors; Linux)
    client.ProcessCollector(registry=registry)
    return render(registry, accept)


def render(registry: Any, accept: str) -> tuple[str, bytes]:
    """``registry`` encoded as ``accept`` asks (prometheus_client's content negotiation)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept)
    body: bytes = encoder(registry)
    if content_type.startswith("text/plain; version=0.0.4"):
        content_type = CONTENT_TYPE
    return content_type, body


async def serve_metrics(
    handle: PipelineHandle,
    *,
    port: int = 9464,
    host: str = "127.0.0.1",
    pipeline: str = "",
    allow_remote: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    max_connections: int = MAX_CONNECTIONS,
    head_timeout: float = HEAD_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` (Prometheus text, or OpenMetrics text when the scraper's ``Accept``
    asks for ``application/openmetrics-text``) and ``/metrics.json`` (the snapshot) until
    cancelled.

    Start it next to the pipeline: ``port = await nursery.start(serve_metrics, handle)``;
    ``task_status`` gets the bound port (pass ``port=0`` for any free one). Without
    ``prometheus-client`` installed, ``/metrics.json`` still works and ``/metrics`` answers
    with the install hint.

    The server has no authentication. ``host`` must be a loopback address unless
    ``allow_remote=True`` (in a container, ``host="0.0.0.0", allow_remote=True`` lets
    Prometheus scrape from another host). Requests must name the server in ``Host``:
    ``localhost``, a loopback address, ``host``, or one of ``allowed_hosts`` (``"name"`` or
    ``"name:port"``; ``"*"``: any); with ``allow_remote=True`` and no ``allowed_hosts``, any
    ``Host``. Others get 421 (a DNS-rebinding page cannot read the figures). At most
    ``max_connections`` connections are served at once (the excess gets 503), and a client
    has ``head_timeout`` seconds to send its request.

    Raises:
        ValueError: ``host`` is not a loopback address and ``allow_remote`` is false, or an
            option is out of range.

    Examples:
        >>> async with trio.open_nursery() as nursery:
        ...     handle = await nursery.start(pipeline.serve)
        ...     await nursery.start(serve_metrics, handle)
    """
    import json

    if not allow_remote:
        check_loopback(host, "serve_metrics", hint="pass allow_remote=True to serve on it anyway")
    access = Access.build(host, allow_remote=allow_remote, allowed_hosts=allowed_hosts)

    def metrics(request: Request) -> tuple[str, bytes]:
        try:
            return exposition(handle, pipeline=pipeline, accept=request.headers.get("accept", ""))
        except ImportError as exc:
            return "text/plain; charset=utf-8", f"# {exc}\n".encode()

    def snapshot(request: Request) -> tuple[str, bytes]:
        return "application/json", json.dumps(handle.snapshot()).encode()

    routes = {"/metrics": metrics, "/metrics.json": snapshot}
    await serve_http(
        routes,
        host=host,
        port=port,
        access=access,
        max_connections=max_connections,
        head_timeout=head_timeout,
        task_status=task_status,
    )
