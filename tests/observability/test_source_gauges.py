"""Source figures in Prometheus: one family per figure across sources; per-partition figures
(``name[part]``) get a ``partition`` label."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")

from trioflow._prometheus import _source_gauges


def test_one_family_per_figure_and_partitions_as_a_label() -> None:
    sources = {
        "kafka:orders/g": {"lag": 7.0, "lag[orders/0]": 3.0, "lag[orders/1]": 4.0},
        "redis:s/g": {"lag": 2.0, "pending": 1.0},
    }
    families = {f.name: f for f in _source_gauges(sources, ["pipeline"], ["p"])}
    assert set(families) == {
        "trioflow_source_lag",
        "trioflow_source_partition_lag",
        "trioflow_source_pending",
    }
    lag = {tuple(s.labels.values()): s.value for s in families["trioflow_source_lag"].samples}
    assert lag == {("p", "kafka:orders/g"): 7.0, ("p", "redis:s/g"): 2.0}
    part = families["trioflow_source_partition_lag"].samples
    assert {(s.labels["partition"], s.value) for s in part} == {
        ("orders/0", 3.0),
        ("orders/1", 4.0),
    }


def test_latencies_are_cumulative_histogram_buckets() -> None:
    from trioflow._prometheus import BUCKETS
    from trioflow._report import Histogram

    hist = Histogram()
    hist.add(0.0003, 10)  # 10 items of 0.3 ms
    hist.add(0.02, 5)
    hist.add(7.0, 1)
    counts = dict(zip(BUCKETS, hist.cumulative(BUCKETS), strict=True))
    assert counts[0.00025] == 0
    assert counts[0.0005] == 10
    assert counts[0.01] == 10
    assert counts[0.025] == 15
    assert counts[5.0] == 15
    assert counts[10.0] == 16
    assert list(counts.values()) == sorted(counts.values())  # cumulative


async def test_metrics_text_has_the_process_figures() -> None:
    import trio

    import trioflow as tf
    from trioflow._prometheus import prometheus_text

    pipeline = tf.from_iterable(range(10)) | tf.sink(lambda x: None)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        text = prometheus_text(handle, pipeline="p").decode()
    assert "process_resident_memory_bytes" in text
    assert "process_open_fds" in text
    assert 'trioflow_received_total{pipeline="p"}' in text
