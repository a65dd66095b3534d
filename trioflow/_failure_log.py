"""Failure log records that cannot flood a log: the first few in full, then counts.

Every failed item is counted by (stage, reason) as ``failed_by_reason`` counts it. The first
:data:`FIRST` failures of each (stage, reason) are logged in full on the ``"trioflow"`` logger
(level WARNING): the stage, an excerpt of the item and the exception with its traceback. Later
ones are only counted, and every :data:`EVERY` seconds (and when the run ends) one record per
(stage, reason) says how many more failed. A million failures of one kind write a few lines a
minute, not a million. Failures are still handed to ``on_failure`` and counted in the report;
the log is for the operator.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, final

import trio

from ._message import reason_key, reason_text
from ._validate import excerpt

__all__ = ["EVERY", "FIRST", "FailureLog"]

logger = logging.getLogger("trioflow")

#: failures of one (stage, reason) logged in full
FIRST = 3
#: seconds between the count records of later failures
EVERY = 10.0


@final
class FailureLog:
    """Log records of failed items for one run; see the module docs."""

    __slots__ = ("_last", "_pending", "_seen")

    def __init__(self) -> None:
        self._seen: Counter[tuple[str, str]] = Counter()
        self._pending: Counter[tuple[str, str]] = Counter()
        self._last: float | None = None

    def failed(self, stage: str, value: Any, reason: BaseException | str) -> None:
        """Item ``value`` failed in ``stage`` with ``reason``."""
        key = (stage, reason_key(reason))
        self._seen[key] += 1
        seen = self._seen[key]
        now = trio.current_time()
        if self._last is None:
            self._last = now
        if seen <= FIRST:
            error = reason if isinstance(reason, BaseException) else None
            logger.warning(
                "trioflow: stage %r failed an item: %s%s; the item: %s",
                stage,
                reason_text(reason),
                f" (the first {FIRST} such failures are logged, later ones counted every "
                f"{EVERY:g} s)"
                if seen == FIRST
                else "",
                excerpt(value),
                exc_info=error,
            )
            return
        self._pending[key] += 1
        if now - self._last >= EVERY:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the counts of the failures not logged yet (the run's end calls it too)."""
        for (stage, reason), count in sorted(self._pending.items()):
            logger.warning(
                "trioflow: stage %r: %d more item(s) failed with %s (%d in all)",
                stage,
                count,
                reason,
                self._seen[(stage, reason)],
            )
        self._pending.clear()
        if now is not None:
            self._last = now
