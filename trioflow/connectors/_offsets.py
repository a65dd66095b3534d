"""Safe commit positions for partitioned logs (Kafka): never past unfinished work.

A :class:`PartitionOffsets` follows one partition: the offsets handed to the pipeline, in log
order, and which of them are settled (acked, or failed and handled). Its :attr:`commit` is the
offset a consumer may commit: the lowest offset not yet settled, or one past the last handed
over when all are. Settling out of order (``process(n=64, partition_by=key)`` finishes calls
in any order) only moves the position when the oldest outstanding offset settles, so a crash
redelivers at most what was in flight. Offsets may have gaps (compacted topics, transaction
markers): the position jumps over them, since only handed-over offsets are tracked.

A revoked partition (a rebalance gave it to another consumer) ignores later settlements: its
old owner must not commit for it any more.
"""

from __future__ import annotations

from collections import deque
from typing import final

__all__ = ["PartitionOffsets"]


@final
class PartitionOffsets:
    """Handed-over and settled offsets of one partition; see the module docs.

    Examples:
        >>> p = PartitionOffsets()
        >>> p.handed([10, 11, 12])
        >>> p.settle(11); p.commit
        10
        >>> p.settle(10); p.commit
        12
    """

    __slots__ = ("_done", "_next", "_open", "committed", "revoked")

    def __init__(self) -> None:
        self._open: deque[int] = deque()  # handed over, oldest first, not known settled
        self._done: set[int] = set()  # settled while an older offset was still open
        self._next = -1  # one past the last offset handed over (-1: none yet)
        #: the last position committed (set by the committer), -1 if none
        self.committed = -1
        self.revoked = False

    def handed(self, offsets: list[int]) -> None:
        """Offsets handed to the pipeline, in log order (each greater than the last)."""
        if not offsets:
            return
        if offsets[0] < self._next:
            raise ValueError(
                f"offset {offsets[0]} handed over again (the last was {self._next - 1})"
            )
        self._open.extend(offsets)
        self._next = offsets[-1] + 1

    def settle(self, offset: int) -> None:
        """``offset`` is settled; ignored once the partition is revoked."""
        if self.revoked:
            return
        opened = self._open
        if opened and opened[0] == offset:
            opened.popleft()
            done = self._done
            while opened and opened[0] in done:
                done.discard(opened.popleft())
        else:
            self._done.add(offset)

    @property
    def in_flight(self) -> int:
        """Offsets handed over and not settled."""
        return len(self._open) - len(self._done)

    @property
    def commit(self) -> int:
        """The offset to commit: the oldest unsettled one, or one past the last handed over;
        -1 if nothing was handed over yet."""
        return self._open[0] if self._open else self._next

    def __repr__(self) -> str:
        return (
            f"PartitionOffsets(commit={self.commit}, in_flight={self.in_flight}, "
            f"revoked={self.revoked})"
        )
