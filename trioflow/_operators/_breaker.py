"""The circuit breaker of ``breaker=Breaker(failures, reset)``: its three states and timing.

``closed``: calls go through; ``failures`` failed calls in a row open it. ``open``: no call is
made, the sources are paused (through the run's gate), and after ``reset`` seconds one probe call
may start (``half_open``). A probe that succeeds closes the breaker and resumes the sources; one
that fails opens it again for another ``reset`` seconds. What happens to the items of failed
calls, and which item is the probe, is the stage's business (see ``_flowing``); this is only
the state machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, final

from .._flow import Breaker

__all__ = ["BreakerState", "State"]

State = Literal["closed", "open", "half_open"]


@final
class BreakerState:
    """The live state of one stage's breaker; ``on_change(state)`` hears every transition."""

    __slots__ = ("failures", "on_change", "probe_at", "reset", "state", "streak")

    def __init__(self, spec: Breaker, on_change: Callable[[State], None]) -> None:
        self.failures = spec.failures
        self.reset = spec.reset
        self.on_change = on_change
        self.state: State = "closed"
        #: failed calls in a row
        self.streak = 0
        #: when a probe may start (while open)
        self.probe_at = 0.0

    def may_call(self, now: float) -> bool | None:
        """Whether a call may start now: ``True``; ``None`` for a probe (the state is now
        ``half_open``: the caller must report its outcome); ``False``: wait until
        :attr:`probe_at` (open) or for the probe's outcome (half_open)."""
        if self.state == "closed":
            return True
        if self.state == "open" and now >= self.probe_at:
            self._to("half_open")
            return None
        return False

    def succeeded(self) -> bool:
        """A call succeeded; whether that closed the breaker."""
        self.streak = 0
        if self.state != "closed":
            self._to("closed")
            return True
        return False

    def failed(self, now: float) -> bool:
        """A call failed; whether the breaker is open now (it was, or this opened it)."""
        self.streak += 1
        if self.state == "half_open" or (self.state == "closed" and self.streak >= self.failures):
            self.probe_at = now + self.reset
            self._to("open")
            return True
        return self.state == "open"

    def _to(self, state: State) -> None:
        self.state = state
        self.on_change(state)
