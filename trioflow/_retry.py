"""Retry policies: how often a failing call is tried again, and how long to wait in between."""

from __future__ import annotations

import math
import random
from typing import final

import attrs

__all__ = ["Backoff", "Retry"]


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name}={value!r} must be a non-negative number")


@final
@attrs.frozen
class Backoff:
    """How long to wait before retry ``k`` (``k`` = 1 for the first retry).

    Build one with :meth:`exponential` or :meth:`constant`.

    Examples:
        >>> b = Backoff.exponential(0.1, max=5.0)
        >>> [b.delay(k) for k in (1, 2, 3)]
        [0.1, 0.2, 0.4]
    """

    base: float
    factor: float = 1.0
    max: float = math.inf
    jitter: bool = False

    @classmethod
    def exponential(
        cls, base: float, *, factor: float = 2.0, max: float = math.inf, jitter: bool = False
    ) -> Backoff:
        """Wait ``min(max, base * factor**(k-1))`` before retry k; ``jitter`` draws in [0, that]."""
        _non_negative("base", base)
        _non_negative("max", max)
        if not isinstance(factor, (int, float)) or not factor >= 1:
            raise ValueError(f"factor={factor!r} must be a number >= 1")
        return cls(float(base), float(factor), float(max), bool(jitter))

    @classmethod
    def constant(cls, seconds: float) -> Backoff:
        """Wait ``seconds`` before every retry."""
        _non_negative("seconds", seconds)
        return cls(float(seconds))

    def delay(self, k: int) -> float:
        """Seconds to wait before retry ``k`` (1-based)."""
        try:
            d = min(self.max, self.base * self.factor ** (k - 1))
        except OverflowError:
            d = self.max
        return random.uniform(0.0, d) if self.jitter else d

    def __repr__(self) -> str:
        if self.factor == 1.0 and not self.jitter and self.max == math.inf:
            return f"Backoff.constant({self.base!r})"
        opts = [repr(self.base)]
        if self.factor != 2.0:
            opts.append(f"factor={self.factor!r}")
        if self.max != math.inf:
            opts.append(f"max={self.max!r}")
        if self.jitter:
            opts.append("jitter=True")
        return f"Backoff.exponential({', '.join(opts)})"


def _check_on(instance: object, attribute: object, value: tuple[type[BaseException], ...]) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, Exception) for t in value
    ):
        raise TypeError(f"on={value!r} must be a tuple of Exception subclasses")


def _to_tuple(value: object) -> object:
    return value if isinstance(value, tuple) else (value,)


def _check_attempts(instance: object, attribute: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"attempts={value!r} must be a positive integer")


@final
@attrs.frozen(repr=False)
class Retry:
    """Retry a failing call in place before the item fails.

    ``attempts`` counts every call, the first included: ``Retry(attempts=3)`` calls at most three
    times and waits ``backoff.delay(1)`` then ``backoff.delay(2)`` in between. Only exceptions that
    are instances of ``on`` are retried; others fail the item at once, and :class:`~trioflow.Fatal`
    is never retried. The worker keeps its slot while it waits, so back-pressure holds.

    Examples:
        >>> policy = Retry(attempts=5, backoff=Backoff.constant(0.5), on=(ConnectionError,))
    """

    attempts: int = attrs.field(default=3, validator=_check_attempts)
    backoff: Backoff = attrs.field(
        factory=lambda: Backoff.exponential(0.1, max=5.0, jitter=True),
        validator=attrs.validators.instance_of(Backoff),
    )
    on: tuple[type[Exception], ...] = attrs.field(
        default=(Exception,), converter=_to_tuple, validator=_check_on
    )

    def __repr__(self) -> str:
        parts = [f"attempts={self.attempts}"]
        if self.backoff != Backoff.exponential(0.1, max=5.0, jitter=True):
            parts.append(f"backoff={self.backoff!r}")
        if self.on != (Exception,):
            names = [t.__name__ for t in self.on]
            parts.append(f"on=({', '.join(names)}{',' if len(names) == 1 else ''})")
        return f"Retry({', '.join(parts)})"
