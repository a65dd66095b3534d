"""``TestSource``: a source whose acknowledger records what happened to every item."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any, Generic, TypeVar, final

from .._message import Message
from .._sources import Outlet, Source
from .._validate import describe

__all__ = ["RecordingAcknowledger", "TestSource"]

T = TypeVar("T")


@final
class RecordingAcknowledger:
    """Records outcomes: ``acked`` (data, in ack order) and ``failed`` (``(data, reason)``).

    It raises ``AssertionError`` if a message is acked twice (by identity), so a test notices.
    """

    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.failed: list[tuple[Any, BaseException | str | None]] = []
        self.calls = 0
        self._seen: set[int] = set()
        self._keep: list[Message[Any]] = []  # keeps ids unique while recorded

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        """Record a group of outcomes."""
        self.calls += 1
        seen = self._seen
        for m in successful:
            key = id(m.metadata)
            if key in seen:
                raise AssertionError(f"message {m!r} acked twice")
            seen.add(key)
        for m in failed:
            key = id(m.metadata)
            if key in seen:
                raise AssertionError(f"message {m!r} acked twice")
            seen.add(key)
        self._keep.extend(successful)
        self._keep.extend(failed)
        self.acked.extend([m.data for m in successful])
        self.failed.extend([(m.data, m.reason) for m in failed])


class TestSource(Source[T], Generic[T]):
    """A source over ``iterable`` (which may be endless) that records every outcome.

    ``src.acked`` lists the data acked as successful, in ack order; ``src.failed`` lists
    ``(data, reason)`` pairs; ``src.pulled`` counts items pulled. Every item pulled ends in exactly
    one of the lists, unless the run was hard-cancelled or its drain timed out.

    Example:
        >>> src = TestSource([1, 2, 3])
        >>> await (src | process(double)).run()
        >>> src.acked
        [1, 2, 3]
    """

    __test__ = False  # not a pytest test class

    def __init__(self, iterable: Iterable[T], *, name: str | None = None) -> None:
        self.iterable = iterable
        self.name = name
        self.acknowledger = RecordingAcknowledger()
        self.pulled = 0

    @property
    def acked(self) -> list[T]:
        """Data acked as successful, in ack order."""
        return self.acknowledger.acked

    @property
    def failed(self) -> list[tuple[T, BaseException | str | None]]:
        """``(data, reason)`` of every item acked as failed."""
        return self.acknowledger.failed

    @property
    def settled(self) -> int:
        """Items acked either way."""
        return len(self.acknowledger.acked) + len(self.acknowledger.failed)

    async def produce(self, out: Outlet) -> None:
        """Pull chunks as demand allows; each item becomes a message with the recorder."""
        it = iter(self.iterable)
        ack = self.acknowledger
        while True:
            room = await out.demand()
            chunk = [Message(x, {}, ack) for x in islice(it, room)]
            if not chunk:
                return
            self.pulled += len(chunk)
            await out.send_many(chunk)

    @property
    def label(self) -> str:
        return self.name or "TestSource"

    def __repr__(self) -> str:
        return f"TestSource({describe(self.iterable)})"
