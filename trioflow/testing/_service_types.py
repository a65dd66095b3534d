"""The values of ``check_service``: what to expect, what broke, what a passing run saw."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, cast, final

import attrs

from .._report import RunReport
from ._sim_faults import BrokerFault

__all__ = [
    "BrokenInvariant",
    "Matcher",
    "ServiceExpect",
    "ServiceResult",
    "ServiceViolation",
    "matches",
]

Matcher = Collection[Any] | Callable[[Any], bool]


def matches(spec: Matcher, data: Any, mid: str) -> bool:
    """Whether message ``mid`` with ``data`` is one that ``spec`` names."""
    if callable(spec) and not isinstance(spec, Collection):
        return bool(spec(data))
    names = cast("Collection[object]", spec)
    return any(x in (mid, data) for x in names)


@final
@attrs.frozen
class ServiceExpect:
    """What must become of the published messages.

    ``dead_letters``: the messages that must end in the dead-letter topic, and no others: a
    collection of their data (or ids), or a predicate of the data. ``discarded``: the same for
    messages failed with the ``"discard"`` action. ``processed``: optional, ``processed(data) ->
    bool`` says whether a message's effect is visible (its row in your fake database); it must
    hold when the message's ack reaches the broker, and at the end.

    A plain collection or predicate given as ``expect=`` means ``ServiceExpect(dead_letters=...)``.

    Example:
        >>> ServiceExpect(dead_letters=[b"not json"], processed=lambda data: data in saved)
    """

    dead_letters: Matcher = ()
    discarded: Matcher = ()
    processed: Callable[[Any], bool] | None = None


@final
@attrs.frozen
class BrokenInvariant:
    """One broken invariant: its name and what happened."""

    invariant: str
    detail: str


class ServiceViolation(AssertionError):
    """``check_service`` found a run that breaks an invariant.

    Attributes: ``violations`` (the broken invariants of the shortest failing run), ``seed``,
    ``faults`` (the shortest fault schedule found that still fails) and ``original`` (the
    schedule given).
    """

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[BrokenInvariant],
        seed: int,
        faults: Sequence[BrokerFault],
        original: Sequence[BrokerFault],
    ) -> None:
        super().__init__(message)
        self.violations: list[BrokenInvariant] = list(violations)
        self.seed: int = seed
        self.faults: list[BrokerFault] = list(faults)
        self.original: list[BrokerFault] = list(original)


@final
@attrs.frozen
class ServiceResult:
    """What :func:`check_service` observed in a run that passed.

    Example:
        >>> result = check_service(build, broker, "orders", expect=[])
        >>> result.deliveries, result.duplicates
        (12, 2)
    """

    seed: int
    faults: tuple[BrokerFault, ...]
    published: int
    acked: int
    dead_lettered: int
    discarded: int
    deliveries: int
    #: messages whose last stage finished more than once (all explained by a fault)
    duplicates: int
    crashes: int
    elapsed: float
    reports: tuple[RunReport, ...]
    log: tuple[tuple[float, str, str], ...]
