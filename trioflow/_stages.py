"""Stage specifications: frozen values that say what a stage does, not how it runs.

A stage is built by a constructor (``process``, ``batch``, ...) that validates its arguments at
once, and composes with ``|`` into a :class:`~trioflow.Pipeline`. The runtime behaviour of each
kind lives in ``_operators``; this module is pure data.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
)
from typing import TYPE_CHECKING, Any, ClassVar, final, overload

import attrs

from . import _validate as v
from ._batches import Batch
from ._composable import DEFAULT_BUFFER, Composable, In, Item, Out, Result, Stage, T, fmt_options
from ._process_stage import Process, is_async_callable, process, sink
from ._validate import describe

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = [
    "DEFAULT_BUFFER",
    "BatchStage",
    "Filter",
    "FlatMap",
    "Process",
    "RateLimit",
    "Route",
    "Stage",
    "Unbatch",
    "batch",
    "filter",
    "flat_map",
    "process",
    "rate_limit",
    "route",
    "sink",
    "unbatch",
]


@final
@attrs.frozen(repr=False)
class Filter(Stage[T, T]):
    """Keep the items for which ``pred`` is true; see :func:`filter`."""

    pred: Callable[[Any], Any]
    buffer: int | None = None
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"buffer", "name"})

    def __attrs_post_init__(self) -> None:
        v.callable_("pred", self.pred, "filter")
        v.optional_positive_int("buffer", self.buffer)

    @property
    def is_async(self) -> bool:
        return is_async_callable(self.pred)

    @property
    def label(self) -> str:
        return self.name or f"filter({describe(self.pred)})"

    def __repr__(self) -> str:
        return f"filter({', '.join([describe(self.pred), *fmt_options(self, ('pred',))])})"


def filter(
    pred: Callable[[Item], object], *, buffer: int | None = None, name: str | None = None
) -> Filter[Item]:
    """Keep items for which ``pred(item)`` (sync or async) is true.

    Dropped items count as successful: they are acked at once (and counted in ``filtered``).

    Examples:
        >>> only_paid = filter(lambda invoice: invoice.paid)
    """
    return Filter(pred, buffer, name)


@final
@attrs.frozen(repr=False)
class FlatMap(Stage[In, Out]):
    """One item to zero or more; see :func:`flat_map`."""

    fn: Callable[[Any], Any]
    buffer: int | None = None
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"buffer", "name"})

    def __attrs_post_init__(self) -> None:
        v.callable_("fn", self.fn, "flat_map")
        v.optional_positive_int("buffer", self.buffer)

    @property
    def label(self) -> str:
        return self.name or f"flat_map({describe(self.fn)})"

    def __repr__(self) -> str:
        return f"flat_map({', '.join([describe(self.fn), *fmt_options(self, ('fn',))])})"


@overload
def flat_map(
    fn: Callable[[Item], AsyncIterable[Result]],
    *,
    buffer: int | None = None,
    name: str | None = None,
) -> FlatMap[Item, Result]: ...
@overload
def flat_map(
    fn: Callable[[Item], Awaitable[Iterable[Result]]],
    *,
    buffer: int | None = None,
    name: str | None = None,
) -> FlatMap[Item, Result]: ...
@overload
def flat_map(
    fn: Callable[[Item], Iterable[Result]], *, buffer: int | None = None, name: str | None = None
) -> FlatMap[Item, Result]: ...
def flat_map(
    fn: Callable[[Any], Any], *, buffer: int | None = None, name: str | None = None
) -> FlatMap[Any, Any]:
    """Turn one item into zero or more: ``fn`` returns an iterable (sync or async function) or is
    an async generator function.

    The parent message is acked when all of its children are done, and fails (with the first
    child's reason) if any child fails. With no children it is acked at once.

    Examples:
        >>> lines = flat_map(lambda text: text.splitlines())
    """
    return FlatMap(fn, buffer, name)


@final
@attrs.frozen(repr=False)
class Unbatch(Stage[Iterable[Any], Any]):
    """Turn batches back into single items; see :func:`unbatch`.

    Not generic: ``|`` gives it the element type of the iterable items before it.
    """

    buffer: int | None = None
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"buffer", "name"})

    def __attrs_post_init__(self) -> None:
        v.optional_positive_int("buffer", self.buffer)

    @property
    def label(self) -> str:
        return self.name or "unbatch()"

    def __repr__(self) -> str:
        return f"unbatch({', '.join(fmt_options(self))})"


def unbatch(*, buffer: int | None = None, name: str | None = None) -> Unbatch:
    """Turn each batch back into its items, each settled on its own.

    After ``unbatch()`` a failure fails only that item's source message (a ``flat_map(list)``
    instead ties the items to their batch: one failure fails them all). A batch whose length no
    longer matches its messages (a stage returned a different list) is split like
    ``flat_map(list)``.

    Examples:
        >>> pipeline = src | tf.batch(100) | tf.process(lookup_many) | tf.unbatch() | tf.sink(save)
    """
    return Unbatch(buffer, name)


#: ``batch``'s default timeout (Broadway's ``batch_timeout``): a quiet service never holds a
#: partial batch longer than this
DEFAULT_BATCH_TIMEOUT = 1.0


@final
@attrs.frozen(repr=False)
class BatchStage(Stage[Any, Batch[Any]]):
    """Group items into :class:`~trioflow.Batch` lists; see :func:`batch`.

    Not generic, so ``batch(100, 1.0)`` needs no annotation: ``|`` makes a ``Batch`` of the
    items before it.
    """

    size: int
    timeout: float | None = DEFAULT_BATCH_TIMEOUT
    key: Callable[[Any], Hashable] | None = None
    buffer: int | None = None
    name: str | None = None
    weight: Callable[[Any], float] | None = None
    max_weight: float | None = None
    _options: ClassVar[frozenset[str]] = frozenset(
        {"size", "timeout", "key", "buffer", "name", "weight", "max_weight"}
    )

    def __attrs_post_init__(self) -> None:
        v.positive_int("size", self.size)
        v.optional_positive_number("timeout", self.timeout)
        v.optional_callable("key", self.key, "batch")
        v.optional_positive_int("buffer", self.buffer)
        v.optional_callable("weight", self.weight, "batch")
        v.optional_positive_number("max_weight", self.max_weight)
        if self.max_weight is not None and self.weight is None:
            raise ValueError(
                f"batch: max_weight={self.max_weight!r} needs weight= (a function giving each "
                "item's weight, e.g. weight=len for bytes)"
            )

    @property
    def label(self) -> str:
        return self.name or repr(self)

    def __repr__(self) -> str:
        args = [repr(self.size)]
        if self.timeout is not None:
            args.append(repr(self.timeout))
        else:
            args.append("timeout=None")
        args += fmt_options(self, ("size", "timeout"))
        return f"batch({', '.join(args)})"


def batch(
    size: int,
    timeout: float | None = DEFAULT_BATCH_TIMEOUT,
    *,
    key: Callable[[Any], Hashable] | None = None,
    weight: Callable[[Any], float] | None = None,
    max_weight: float | None = None,
    buffer: int | None = None,
    name: str | None = None,
) -> BatchStage:
    """Emit :class:`~trioflow.Batch` lists of at most ``size`` items.

    A partial batch is emitted ``timeout`` seconds after its first item arrived (1.0 s by
    default, as in Broadway; with ``timeout=None`` only full batches leave, and partial ones at
    the end of input). With ``key=fn`` items are batched separately per key, each batch with its
    own timer. With ``weight=fn`` and ``max_weight=w`` a batch also leaves before the item that
    would take its total weight past ``w`` (byte limits of brokers and APIs: ``weight=len``); an
    item heavier than ``w`` alone fails with a ``ValueError`` naming its weight and the limit.
    At the end of input, and on a graceful drain, every partial batch is flushed. Each batch
    carries ``batch.info`` (:class:`~trioflow.BatchInfo`): key, size, weight, what made it leave,
    and the route branch. A batch holds at most ``size`` items per open key in memory.

    Examples:
        >>> rows = batch(100, 1.0, key=lambda event: event.tenant)
        >>> requests = batch(500, weight=len, max_weight=256_000)
    """
    return BatchStage(size, timeout, key, buffer, name, weight, max_weight)


@final
@attrs.frozen(repr=False)
class RateLimit(Stage[Any, Any]):
    """Let at most ``count`` items through per ``per`` seconds; see :func:`rate_limit`.

    Not generic: ``|`` passes the element type before it through.
    """

    count: int
    per: float = 1.0
    buffer: int | None = None
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"count", "per", "buffer", "name"})

    def __attrs_post_init__(self) -> None:
        v.positive_int("count", self.count)
        v.positive_number("per", self.per)
        v.optional_positive_int("buffer", self.buffer)

    @property
    def label(self) -> str:
        return self.name or repr(self)

    def __repr__(self) -> str:
        args = [repr(self.count), *fmt_options(self, ("count",))]
        return f"rate_limit({', '.join(args)})"


def rate_limit(
    count: int, per: float = 1.0, *, buffer: int | None = None, name: str | None = None
) -> RateLimit:
    """At most ``count`` items pass in any window of ``per`` seconds (a sliding window).

    Items wait in the stage (and back-pressure builds behind it) until they may pass.

    Examples:
        >>> polite = rate_limit(10, per=1.0)
    """
    return RateLimit(count, per, buffer, name)


def _branches(value: Mapping[Any, Any]) -> tuple[tuple[Any, Pipeline[Any, Any]], ...]:
    from ._pipeline import as_fragment

    if not isinstance(value, Mapping) or not value:
        raise TypeError(f"route: branches={value!r} must be a non-empty dict of key -> pipeline")
    return tuple((k, as_fragment(b, where=f"route branch {k!r}")) for k, b in value.items())


@final
@attrs.frozen(repr=False)
class Route(Stage[T, Any]):
    """Send each item to one branch by key; see :func:`route`."""

    key: Callable[[Any], Hashable]
    branches: tuple[tuple[Any, Pipeline[Any, Any]], ...] = attrs.field(converter=_branches)
    buffer: int | None = None
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"buffer", "name"})

    def __attrs_post_init__(self) -> None:
        v.callable_("key_fn", self.key, "route")
        v.optional_positive_int("buffer", self.buffer)

    @property
    def label(self) -> str:
        return self.name or f"route({describe(self.key)})"

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {b!r}" for k, b in self.branches)
        extra = "".join(f", {o}" for o in fmt_options(self, ("key", "branches")))
        return f"route({describe(self.key)}, {{{inner}}}{extra})"


def route(
    key_fn: Callable[[Item], Hashable],
    branches: Mapping[Any, Composable[Item, Any] | Callable[[Item], Any]],
    *,
    buffer: int | None = None,
    name: str | None = None,
) -> Route[Item]:
    """Send each item to the branch named by ``key_fn(item)``.

    A branch is a pipeline without a source, or a single stage. An item whose key has no branch
    fails with a ``KeyError`` naming the key. Outputs of a branch that does not end in a sink
    continue after the route (in no particular order across branches).

    Examples:
        >>> branches = {"a": process(enrich) | sink(save_a), "b": sink(save_b)}
        >>> by_kind = route(lambda e: e.kind, branches)
    """
    return Route(key_fn, branches, buffer, name)
