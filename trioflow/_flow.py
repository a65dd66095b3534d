"""Flow-control specifications: an adaptive concurrency limit and a circuit breaker.

Like the stages, these are frozen values validated when built; the runtime that honours them
lives in ``_operators`` (see docs/concepts/flow-control.md).
"""

from __future__ import annotations

from typing import final

import attrs

from . import _validate as v

__all__ = ["Adaptive", "Breaker"]


def _check_bound(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    v.positive_int(attribute.name, value)


@final
@attrs.frozen
class Adaptive:
    """A concurrency limit that adapts to the latency the stage sees, between ``min`` and ``max``.

    Pass it as ``n`` to :func:`~trioflow.process` or :func:`~trioflow.sink`; the stage then never
    runs more than ``max`` nor fewer than ``min`` calls at once, and backs off when its calls
    slow down under load. ``initial`` is the limit it starts with (default: ``min``): its first
    calls, run at that limit, measure the no-load latency (an ``initial`` above what the
    downstream serves without queueing overestimates it until the next measurement at ``min``,
    at most ``max(30, 400 * latency)`` seconds later).

    Examples:
        >>> stage = process(fetch, n=Adaptive(min=1, max=64))
    """

    min: int = attrs.field(default=1, validator=_check_bound)
    max: int = attrs.field(default=64, validator=_check_bound)
    initial: int | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.min > self.max:
            raise ValueError(f"Adaptive(min={self.min}, max={self.max}): min must not exceed max")
        if self.initial is not None:
            v.positive_int("initial", self.initial)
            if not self.min <= self.initial <= self.max:
                raise ValueError(
                    f"Adaptive(initial={self.initial}) must lie between min={self.min} "
                    f"and max={self.max}"
                )

    @property
    def start(self) -> int:
        """The limit the stage starts with."""
        return self.min if self.initial is None else self.initial


@final
@attrs.frozen
class Breaker:
    """A circuit breaker: after ``failures`` consecutive failed calls the stage stops calling.

    While it is open the sources pause, items in flight wait (neither failed nor dead-lettered),
    and one probe call is made every ``reset`` seconds; the first success closes it and resumes
    the sources.

    Examples:
        >>> save_stage = sink(save, breaker=Breaker(failures=5, reset=30.0))
    """

    failures: int = attrs.field(default=5)
    reset: float = attrs.field(default=30.0)

    def __attrs_post_init__(self) -> None:
        v.positive_int("failures", self.failures)
        v.positive_number("reset", self.reset)
