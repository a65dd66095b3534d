"""What a ``batch`` stage emits: a :class:`Batch`, a ``list`` that knows why it left.

A batch is a plain ``list`` of the items' data (so ``sum(batch)``, ``len(batch)`` and existing
sinks that take lists keep working) with one attribute, ``info``: a frozen :class:`BatchInfo`
saying which key it was made for, how many items and how much weight it holds, what made it
leave, and the route branch it was made under.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Literal, TypeVar, final

import attrs

__all__ = ["Batch", "BatchInfo", "Trigger"]

T = TypeVar("T")

#: why a batch left: full by count, full by weight, its timer, the end of input, a drain
Trigger = Literal["size", "weight", "timeout", "end", "drain"]


@final
@attrs.frozen
class BatchInfo:
    """Why and how a batch was made.

    ``key`` is the ``batch(key=...)`` value of its items (``None`` without a key); ``size`` its
    item count; ``weight`` the sum of ``weight(item)`` (its ``size`` when the stage has no
    ``weight=``); ``trigger`` one of ``"size"``, ``"weight"``, ``"timeout"``, ``"end"`` (end of
    input), ``"drain"`` (a graceful stop); ``branch`` the ``route`` key it was made under, or
    ``None``.

    Examples:
        >>> async def save(rows: tf.Batch[dict]) -> None:
        ...     log.info("%d rows (%s)", rows.info.size, rows.info.trigger)
    """

    key: Hashable | None
    size: int
    weight: float
    trigger: Trigger
    branch: Hashable | None = None


#: the info of a batch built by hand (``Batch([1, 2])``)
def _manual_info(size: int) -> BatchInfo:
    return BatchInfo(None, size, size, "end", None)


class Batch(list[T]):
    """A ``list`` of the items' data with ``info``, a :class:`BatchInfo`.

    With ``messages=True``, the stage after a batch gets a ``Batch`` of ``tf.Message``s (same
    ``info``). Equality is the list's: ``Batch([1, 2]) == [1, 2]``.

    Examples:
        >>> b = Batch([1, 2, 3])
        >>> sum(b), b.info.size
        (6, 3)
    """

    __slots__ = ("info",)

    def __init__(self, items: Iterable[T] = (), info: BatchInfo | None = None) -> None:
        super().__init__(items)
        self.info: BatchInfo = info if info is not None else _manual_info(len(self))

    def __repr__(self) -> str:
        return f"Batch({super().__repr__()}, info={self.info!r})"

    def __reduce__(self) -> Any:  # pickles (parallel=True workers) with its info
        return (Batch, (list(self), self.info))
