"""Exception groups: what trioflow looks for inside them.

User code that opens a nursery raises its errors wrapped in (possibly nested) exception groups,
and a task being cancelled may end with a group of ``Cancelled`` and the errors its cleanup
raised. Everywhere trioflow decides what an exception means (a ``Fatal`` stops the run, a
``Retry(on=...)`` type is retried, a failure reason is counted by class), it looks at the leaves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import trio

from ._exceptions import Fatal

__all__ = [
    "AnyGroup",
    "fatal_of",
    "group_of",
    "is_fatal",
    "leaves",
    "matches",
    "strip_cancelled",
]


#: what ``isinstance(exc, BaseExceptionGroup)`` finds (pyright leaves its argument unknown)
AnyGroup = BaseExceptionGroup[BaseException]


def group_of(exc: BaseException) -> AnyGroup | None:
    """``exc`` if it is an exception group, else None."""
    return cast(AnyGroup, exc) if isinstance(exc, BaseExceptionGroup) else None


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions in ``exc``, groups flattened (``exc`` itself if it is not a group)."""
    group = group_of(exc)
    if group is not None:
        for inner in group.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`~trioflow.Fatal` or a group holding one."""
    if isinstance(exc, Fatal):
        return True
    group = group_of(exc)
    return group is not None and group.subgroup(Fatal) is not None


def fatal_of(exc: BaseException) -> Fatal | None:
    """The first :class:`~trioflow.Fatal` in ``exc`` (itself, or a leaf of a group), or None."""
    for leaf in leaves(exc):
        if isinstance(leaf, Fatal):
            return leaf
    return None


def matches(
    exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    """Whether ``exc`` is one of ``types``, or a group whose every leaf is."""
    if isinstance(exc, types):
        return True
    group = group_of(exc)
    if group is not None:
        _, rest = group.split(types)
        return rest is None
    return False


def strip_cancelled(exc: BaseException) -> BaseException | None:
    """``exc`` without its ``trio.Cancelled`` parts (None if that is all it is).

    A group left with a single exception gives that exception, so a lone error raised in a
    nursery reads as itself.
    """
    if isinstance(exc, trio.Cancelled):
        return None
    group = group_of(exc)
    if group is None:
        return exc
    _, rest = group.split(trio.Cancelled)
    if rest is None:
        return None
    found = list(leaves(rest))
    return found[0] if len(found) == 1 else rest
