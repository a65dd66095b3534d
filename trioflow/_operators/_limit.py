"""The adaptive concurrency limit of ``n=Adaptive(...)``: a latency-gradient controller.

The algorithm is the gradient controller of Envoy's adaptive concurrency filter (itself after
Netflix's concurrency-limits ``GradientLimit``), written from their documentation:

* the *no-load latency* ``min_rtt`` is measured from the first :data:`PROBE_SAMPLES` calls of
  the stage (their median), run at its starting limit (``Adaptive.initial``, by default ``min``,
  so with no load), then again by letting only ``min`` calls run at once every
  :func:`probe_interval` seconds, or sooner once the limit sat at ``min`` for
  :data:`STUCK_WINDOWS` windows (the downstream's own latency may have changed); in between, a
  window whose median is lower lowers it (the first calls of a run may pay for connections);
* between probes, calls' latencies are gathered in *windows*; a window holds only calls started
  after the previous update (so it sees the effect of the current limit) and closes after
  :func:`window_samples` of them; its median ``sample`` gives the gradient
  ``g = clamp(min_rtt * (1 + BUFFER) / sample, 0.5, 2.0)``, and the new limit is
  ``g * limit + HEADROOM * sqrt(limit)``, kept within ``[min, max]``;
* until the first window whose median is more than ``SLOW_START_TOLERANCE`` above ``min_rtt``
  (the first queueing seen), the limit doubles each window instead (TCP's slow start), so a
  stage reaches a large limit in a few round trips.

Against a downstream whose latency is flat up to ``C`` calls and grows in proportion beyond, the
limit settles where ``limit = (1 + BUFFER) * C + HEADROOM * sqrt(limit)``: a little above ``C``
(full throughput) with latency a little above the base; a halved ``C`` halves the gradient at
once (one window). While the stage is starved of input (fewer than half the limit in calls), the
limit does not grow, so an idle stage does not drift to ``max``.

Everything here is plain arithmetic on numbers given by the caller (the trio clock), so it is
tested without a loop.
"""

from __future__ import annotations

import math
from typing import final

from .._flow import Adaptive

__all__ = ["BUFFER", "HEADROOM", "GradientLimit"]

#: latency above ``min_rtt`` tolerated before the limit shrinks (a share of ``min_rtt``)
BUFFER = 0.1
#: the queue the limit keeps above the estimate, in units of ``sqrt(limit)``
HEADROOM = 0.5
#: calls measured at ``min`` concurrency for one ``min_rtt``
PROBE_SAMPLES = 8
#: windows in a row at ``min`` after which ``min_rtt`` is measured again
STUCK_WINDOWS = 5
#: slow start goes on while a window's median latency is within this share of ``min_rtt``
SLOW_START_TOLERANCE = 0.05
#: the gradient's bounds per window: at most halve, at most double
MIN_GRADIENT, MAX_GRADIENT = 0.5, 2.0


def window_samples(limit: float) -> int:
    """Calls per window: a round of the limit, and never fewer than 4."""
    return max(4, math.ceil(limit))


def probe_interval(min_rtt: float) -> float:
    """Seconds between ``min_rtt`` measurements: 30 s, or longer for slow calls, so a probe
    (``PROBE_SAMPLES`` calls at ``min`` concurrency) costs at most about 2% of the time."""
    return max(30.0, 400.0 * min_rtt)


@final
class GradientLimit:
    """The limit of one stage. Workers call :meth:`started` as a call begins (it returns the
    call's *epoch*) and :meth:`finished` as it ends; :attr:`limit` is the current limit.

    ``on_change(limit)`` is called whenever the integer limit changes.
    """

    __slots__ = (
        "epoch",
        "max",
        "min",
        "min_rtt",
        "next_probe",
        "peak",
        "probing",
        "restore",
        "samples",
        "slow_start",
        "stuck",
        "value",
        "warmup",
    )

    def __init__(self, spec: Adaptive, now: float) -> None:
        self.min = spec.min
        self.max = spec.max
        #: the limit as a real number (the integer part is what workers obey)
        self.value = float(spec.start)
        self.restore = self.value  # where to go after a probe
        self.min_rtt = 0.0
        self.epoch = 0
        self.samples: list[float] = []
        self.probing = True
        self.next_probe = math.inf
        self.stuck = 0
        #: doubling the limit each window until the first sign of queueing
        self.slow_start = True
        #: the first window after a probe is not judged: its calls started while the stage
        #: refilled from ``min`` calls, so they saw less queueing than the limit makes
        self.warmup = False
        #: most calls in flight seen during the current window
        self.peak = 0

    @property
    def limit(self) -> int:
        """The number of calls that may be in flight now."""
        return int(self.value)

    def started(self, in_flight: int) -> int:
        """A call starts with ``in_flight`` calls (itself included) running: its epoch."""
        if in_flight > self.peak:
            self.peak = in_flight
        return self.epoch

    def finished(self, epoch: int, rtt: float, now: float) -> bool:
        """A call of ``epoch`` took ``rtt`` seconds; whether the limit changed."""
        if epoch != self.epoch:
            return False  # started under an earlier limit: says nothing about this one
        samples = self.samples
        samples.append(rtt)
        if self.probing:
            if len(samples) < PROBE_SAMPLES:
                return False
            self.min_rtt = max(_median(samples), 1e-9)
            self.probing = False
            self.next_probe = now + probe_interval(self.min_rtt)
            self.stuck = 0
            self.warmup = True
            return self._set(self.restore)
        if len(samples) < window_samples(self.value):
            return False
        if now >= self.next_probe or self.stuck >= STUCK_WINDOWS:
            return self._probe()
        if self.warmup:
            self.warmup = False
            return self._set(self.value)
        sample = _median(samples)
        if sample < self.min_rtt:
            self.min_rtt = sample  # the no-load latency is at most what a window's median was
        gradient = self.min_rtt * (1.0 + BUFFER) / sample if sample > 0 else MAX_GRADIENT
        gradient = min(MAX_GRADIENT, max(MIN_GRADIENT, gradient))
        if self.slow_start and sample <= self.min_rtt * (1.0 + SLOW_START_TOLERANCE):
            new = 2.0 * self.value
        else:
            self.slow_start = False
            new = gradient * self.value + HEADROOM * math.sqrt(self.value)
        if new > self.value and self.peak * 2 < self.value:
            new = self.value  # starved of input: no evidence that more would help
        new = min(float(self.max), max(float(self.min), new))
        self.stuck = self.stuck + 1 if int(new) <= self.min and self.min < self.max else 0
        return self._set(new)

    def _probe(self) -> bool:
        """Measure ``min_rtt`` again: ``min`` calls at once for a while, then back."""
        self.restore = self.value
        self.probing = True
        return self._set(float(self.min))

    def _set(self, value: float) -> bool:
        old = int(self.value)
        self.value = value
        self.epoch += 1
        self.samples = []
        self.peak = 0
        return int(value) != old


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
