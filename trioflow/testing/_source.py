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


#: metadata key under which TestSource numbers its messages (to detect double acks)
SEQ = "test_seq"


@final
class RecordingAcknowledger:
    """Records outcomes: ``acked`` (data, in ack order) and ``failed`` (``(data, reason)``).

    Messages numbered under ``metadata["test_seq"]`` (as :class:`TestSource` numbers them) are
    checked: acking one twice raises ``AssertionError``, so the test notices.
    """

    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.failed: list[tuple[Any, BaseException | str | None]] = []
        self.calls = 0
        self._seen: set[Any] = set()

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        """Record a group of outcomes."""
        self.calls += 1
        seqs = [m.metadata.get(SEQ) for m in successful]
        seqs += [m.metadata.get(SEQ) for m in failed]
        seen = self._seen
        fresh = {s for s in seqs if s is not None} - seen
        if len(fresh) != len(seqs) - seqs.count(None):
            again = sorted(
                s for s in seqs if s is not None and (s not in fresh or seqs.count(s) > 1)
            )
            raise AssertionError(f"TestSource messages acked twice: test_seq {again[:10]}")
        seen |= fresh
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
            start = self.pulled
            chunk = [Message(x, {SEQ: i}, ack) for i, x in enumerate(islice(it, room), start)]
            if not chunk:
                return
            self.pulled += len(chunk)
            await out.send_many(chunk)

    @property
    def label(self) -> str:
        return self.name or "TestSource"

    def __repr__(self) -> str:
        return f"TestSource({describe(self.iterable)})"
