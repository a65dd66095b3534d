"""What a run reports: totals, per-stage figures, and the latency histogram behind them."""

from __future__ import annotations

import math
from typing import final

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
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float, weight: int = 1) -> None:
        b = 0 if seconds <= self._BASE else int(math.log(seconds / self._BASE) / self._STEP) + 1
        self.buckets[b] = self.buckets.get(b, 0) + weight
        self.count += weight
        self.total += seconds * weight

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
    """Per-stage figures: items that went through, and per-item latency quantiles (seconds)."""

    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, histogram: Histogram) -> StageStats:
        return cls(
            histogram.count,
            histogram.quantile(0.50),
            histogram.quantile(0.95),
            histogram.quantile(0.99),
        )


@final
@attrs.frozen
class RunReport:
    """The outcome of a run.

    ``received == acked + failed + unsettled`` always holds. ``acked`` counts source messages acked
    as successful, filtered ones included; ``failed`` those acked as failed, ``failed_by_reason``
    them by the exception's class name or the string given to ``Message.fail``; ``retried`` the
    retry calls; ``unsettled`` what a hard stop or a drain past its deadline left un-acked.
    ``elapsed`` is in seconds of the trio clock and ``throughput`` is ``received / elapsed``.
    """

    received: int = 0
    acked: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = attrs.field(factory=dict)
    retried: int = 0
    filtered: int = 0
    unsettled: int = 0
    elapsed: float = 0.0
    throughput: float = 0.0
    stages: dict[str, StageStats] = attrs.field(factory=dict)
