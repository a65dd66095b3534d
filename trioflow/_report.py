"""What a run reports: totals, per-stage figures, and the latency histogram behind them."""

from __future__ import annotations

import math
from typing import Any, final

import attrs

__all__ = ["Histogram", "RunReport", "StageStats"]


@final
class Histogram:
    """Log-bucketed latency histogram (about 4% resolution), cheap to add to in bulk.

    ``add(seconds, weight)`` records ``weight`` samples of one value: stages record a chunk's
    per-item latency once per chunk, not once per item.
    """

    __slots__ = ("buckets", "count", "total")
    _BASE = 1e-7  # 0.1 us: anything faster lands in bucket 0
    _STEP = math.log(1.04)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count: int = 0
        self.total: float = 0.0

    def add(self, seconds: float, weight: int = 1) -> None:
        b = 0 if seconds <= self._BASE else int(math.log(seconds / self._BASE) / self._STEP) + 1
        self.buckets[b] = self.buckets.get(b, 0) + weight
        self.count += weight
        self.total += seconds * weight

    def cumulative(self, bounds: tuple[float, ...]) -> list[int]:
        """Samples at or below each bound (Prometheus ``le`` buckets, cumulative; a sample
        counts at its bucket's upper edge, within the histogram's 4% resolution)."""
        counts = [0] * len(bounds)
        for b, n in self.buckets.items():
            edge = 0.0 if b == 0 else self._BASE * math.exp(self._STEP * b)
            for i, bound in enumerate(bounds):
                if edge <= bound * 1.04:  # a bucket straddling the bound counts below it
                    counts[i] += n
        return counts

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of samples lie (0.0 when empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return 0.0 if b == 0 else self._BASE * math.exp(self._STEP * (b - 0.5))
        return 0.0  # pragma: no cover


@final
@attrs.frozen
class StageStats:
    """Per-stage figures: items that went through, per-item latency quantiles (seconds), load.

    ``count`` items finished the stage; ``p50``/``p95``/``p99`` are per-item latencies (for a
    ``batch``: how long items waited for their batch to leave). ``busy`` is the seconds workers
    held a chunk, summed over the stage's ``workers``; ``failed`` the items that failed in the
    stage. ``in_flight`` (items in the stage: queued or being worked on), ``queued`` and
    ``capacity`` (its input buffer) are live figures: zero in a final report. ``workers`` is
    the stage's concurrency limit (for ``n=Adaptive(...)`` the limit it had last, after a
    ``handle.resize`` the new size); ``breaker`` the state of its circuit breaker
    (``"closed"``, ``"open"``, ``"half_open"``), or ``None`` without one.

    Examples:
        >>> report.stages["decode"].p99
        0.0021
    """

    count: int
    p50: float
    p95: float
    p99: float
    busy: float = 0.0
    workers: int = 1
    failed: int = 0
    in_flight: int = 0
    queued: int = 0
    capacity: int = 0
    breaker: str | None = None

    @classmethod
    def of(
        cls,
        histogram: Histogram,
        *,
        busy: float = 0.0,
        workers: int = 1,
        failed: int = 0,
        in_flight: int = 0,
        queued: int = 0,
        capacity: int = 0,
        breaker: str | None = None,
    ) -> StageStats:
        """The quantiles of ``histogram``, and the other figures as given."""
        return cls(
            histogram.count,
            histogram.quantile(0.50),
            histogram.quantile(0.95),
            histogram.quantile(0.99),
            busy,
            workers,
            failed,
            in_flight,
            queued,
            capacity,
            breaker,
        )

    def rate(self, elapsed: float) -> float:
        """Mean items per second over ``elapsed`` seconds (0.0 if none)."""
        return self.count / elapsed if elapsed > 0 else 0.0

    def busy_fraction(self, elapsed: float) -> float:
        """The share of ``elapsed`` the stage's workers were busy, from 0.0 to 1.0."""
        if elapsed <= 0:
            return 0.0
        return min(1.0, self.busy / (elapsed * max(1, self.workers)))


@final
@attrs.frozen
class RunReport:
    """The outcome of a run.

    ``received == acked + failed + unsettled`` always holds. ``acked`` counts source messages acked
    as successful, filtered ones included; ``failed`` those acked as failed, ``failed_by_reason``
    them by the exception's class name or the string given to ``Message.fail``; ``retried`` the
    retry calls; ``unsettled`` what a hard stop or a drain past its deadline left un-acked.
    ``elapsed`` is in seconds of the trio clock and ``throughput`` is ``received / elapsed``.
    ``ack_errors`` counts messages whose acknowledger's ``ack`` raised, and
    ``failure_handler_errors`` failed messages whose ``on_failure`` call raised: both are left
    un-acked (a broker delivers them again) and counted in ``unsettled`` too.
    ``dead_lettered`` counts the failed messages handed to the ``on_failure`` handler;
    ``end_to_end`` the latency from a message's hand-over by its source to its ack (quantiles in
    seconds, see docs/observability.md); ``sources`` what sources report about themselves (a
    Redis Streams source: the group's ``lag`` and ``pending``).

    Examples:
        >>> report = trio.run(pipeline.run)
        >>> report.received == report.acked + report.failed + report.unsettled
        True
    """

    received: int = 0
    acked: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = attrs.field(factory=dict[str, int])
    retried: int = 0
    filtered: int = 0
    unsettled: int = 0
    elapsed: float = 0.0
    throughput: float = 0.0
    stages: dict[str, StageStats] = attrs.field(factory=dict[str, StageStats])
    dead_lettered: int = 0
    end_to_end: StageStats = attrs.field(factory=lambda: StageStats(0, 0.0, 0.0, 0.0))
    sources: dict[str, dict[str, float]] = attrs.field(factory=dict[str, dict[str, float]])
    ack_errors: int = 0
    failure_handler_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (what ``trioflow run --json`` prints).

        Examples:
            >>> json.dumps(report.as_dict())
        """
        return attrs.asdict(self)
