"""Retry policies: how often a failing call is tried again, and how long to wait in between."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, cast, final

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


def _check_on(instance: object, attribute: object, value: Any) -> None:
    if callable(value) and not isinstance(value, (type, tuple)):
        return  # a predicate
    items = _as_tuple(value) if isinstance(value, tuple) else ()
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, Exception) for t in items
    ):
        raise TypeError(
            f"on={value!r} must be a tuple of Exception subclasses or a predicate fn(exc) -> bool"
        )


def _as_tuple(value: Any) -> Any:
    """``value`` (a tuple) as ``Any``: a type checker's narrowing of a union to ``tuple`` would
    lose its item type."""
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, tuple) or (callable(value) and not isinstance(value, type)):
        return cast(Any, value)
    return (value,)


def _check_deadline(instance: object, attribute: object, value: float | None) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"deadline={value!r} must be a positive number of seconds or None")


def _check_attempts(instance: object, attribute: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"attempts={value!r} must be a positive integer")


def _check_hold(instance: object, attribute: object, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"hold={value!r} must be True or False")


@final
@attrs.frozen(repr=False)
class Retry:
    """Retry a failing call before the item fails.

    ``attempts`` counts every call, the first included: ``Retry(attempts=3)`` calls at most three
    times and waits ``backoff.delay(1)`` then ``backoff.delay(2)`` in between. Only exceptions that
    are instances of ``on`` (or for which the predicate ``on(exc)`` is true) are retried; others
    fail the item at once, and :class:`~trioflow.Fatal` is never retried. ``deadline`` bounds the
    seconds from an item's first call to the start of its last retry: a retry that would start
    later is not made (the item fails with the last exception). With ``hold=True`` (the default)
    the worker keeps its slot while it waits, so back-pressure holds; with ``hold=False`` the
    slot is free for other items while this one waits for its next attempt (it still counts
    against the stage's buffer; see docs/concepts/failure-and-retry.md).

    Examples:
        >>> policy = Retry(attempts=5, backoff=Backoff.constant(0.5), on=(ConnectionError,))
        >>> transient = Retry(on=lambda exc: getattr(exc, "status", 0) >= 500, deadline=60.0)
    """

    attempts: int = attrs.field(default=3, validator=_check_attempts)
    backoff: Backoff = attrs.field(
        factory=lambda: Backoff.exponential(0.1, max=5.0, jitter=True),
        validator=attrs.validators.instance_of(Backoff),
    )
    on: tuple[type[Exception], ...] | Callable[[BaseException], bool] = attrs.field(
        default=(Exception,), converter=_to_tuple, validator=_check_on
    )
    deadline: float | None = attrs.field(default=None, validator=_check_deadline)
    hold: bool = attrs.field(default=True, validator=_check_hold)

    def should_retry(
        self, exc: BaseException, attempt: int, spent: float, *, where: str | None = None
    ) -> float | None:
        """The delay before the next call after call ``attempt`` raised ``exc`` (``spent``
        seconds after the item's first call), or ``None`` if the item fails now.

        ``exc`` is not a :class:`~trioflow.Fatal` (the caller checked). Exception groups are
        looked into: types must match every leaf; a predicate is asked about every leaf. A
        predicate that raises makes this raise ``RuntimeError`` (its cause: what the predicate
        raised) naming the predicate, ``exc`` and ``where`` (the stage and the item): the item
        fails with it.
        """
        if attempt >= self.attempts:
            return None
        try:
            retryable = _retryable(exc, self.on)
        except Exception as error:
            on = self.on
            name = getattr(on, "__qualname__", None) or repr(on)
            place = f"{where}: " if where else ""
            raise RuntimeError(
                f"{place}the retry predicate Retry(on={name}) raised "
                f"{type(error).__name__}: {error} deciding whether to retry {exc!r}"
            ) from error
        if not retryable:
            return None
        delay = self.backoff.delay(attempt)
        if self.deadline is not None and spent + delay > self.deadline:
            return None
        return delay

    def __repr__(self) -> str:
        parts = [f"attempts={self.attempts}"]
        if self.backoff != Backoff.exponential(0.1, max=5.0, jitter=True):
            parts.append(f"backoff={self.backoff!r}")
        on = self.on
        if isinstance(on, tuple):
            if on != (Exception,):
                types: tuple[type[Exception], ...] = _as_tuple(on)
                names = [t.__name__ for t in types]
                parts.append(f"on=({', '.join(names)}{',' if len(names) == 1 else ''})")
        else:
            parts.append(f"on={getattr(on, '__qualname__', None) or repr(on)}")
        if self.deadline is not None:
            parts.append(f"deadline={self.deadline!r}")
        if not self.hold:
            parts.append("hold=False")
        return f"Retry({', '.join(parts)})"


def _retryable(
    exc: BaseException, on: tuple[type[Exception], ...] | Callable[[BaseException], bool]
) -> bool:
    if isinstance(on, tuple):
        types: tuple[type[Exception], ...] = _as_tuple(on)
        if isinstance(exc, types):
            return True
        if isinstance(exc, BaseExceptionGroup):
            group = cast("BaseExceptionGroup[BaseException]", exc)
            return group.split(types)[1] is None
        return False
    return all(bool(on(leaf)) for leaf in _leaves(exc))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [exc]
