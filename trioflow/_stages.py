"""Stage specifications: frozen values that say what a stage does, not how it runs.

A stage is built by a constructor (``process``, ``batch``, ...) that validates its arguments at
once, and composes with ``|`` into a :class:`~trioflow.Pipeline`. The runtime behaviour of each
kind lives in ``_operators``; this module is pure data.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, final, overload

import attrs

from . import _validate as v
from ._flow import Adaptive, Breaker
from ._retry import Retry

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
    "stage",
    "unbatch",
]

In = TypeVar("In")
Out = TypeVar("Out")

#: Items a stage's input holds when ``buffer`` is not given (after a batch, batches holding about
#: this many messages, see ``Stage.input_buffer``). About a thousand keeps chunks large enough to
#: amortize a task switch per hand-over (docs/performance.md: W2 at 512 and 1024) while bounding
#: memory to what a thousand items weigh.
DEFAULT_BUFFER = 1024


class Stage(Generic[In, Out]):
    """Base class of every stage: composes with ``|`` into a :class:`~trioflow.Pipeline`."""

    __slots__ = ()
    #: options a call with keywords only may set (see ``__call__``)
    _options: ClassVar[frozenset[str]] = frozenset()

    def __or__(self, other: Any) -> Pipeline:
        from ._pipeline import compose

        return compose(self, other)

    def __ror__(self, other: Any) -> Pipeline:
        from ._pipeline import compose

        return compose(other, self)

    @property
    def label(self) -> str:
        """The stage's name in reports and errors."""
        name = getattr(self, "name", None)
        return name if isinstance(name, str) else repr(self)

    def input_buffer(self, weight: int = 1) -> int:
        """Items this stage's input queue holds, when each item weighs ``weight`` messages.

        An explicit ``buffer`` is taken as given. The default holds about
        :data:`DEFAULT_BUFFER` *messages*: after ``batch(100)`` an item is a batch of 100, so
        the default there is ``DEFAULT_BUFFER // 100`` batches (at least 2).
        """
        buffer = getattr(self, "buffer", None)
        if isinstance(buffer, int):
            return buffer
        return DEFAULT_BUFFER if weight <= 1 else max(2, DEFAULT_BUFFER // weight)

    def configure_or_call(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """``stage(n=10)`` (option keywords only) configures; ``stage(item)`` calls ``fn``.

        A call with keywords only, one of them an option name, configures: a misspelt option
        next to a valid one (``n=10, bufer=5``) is named, with the valid ones, rather than
        passed to ``fn``.
        """
        if not args and kwargs and not set(kwargs).isdisjoint(self._options):
            return self.configure(**kwargs)
        return fn(*args, **kwargs)

    def configure(self, **options: Any) -> Any:
        """A copy with ``options`` changed (validated as when built)."""
        unknown = set(options) - self._options
        if unknown:
            hints = [
                f"{name} (did you mean {close[0]}?)" if close else name
                for name in sorted(unknown)
                for close in [difflib.get_close_matches(name, self._options, n=1)]
            ]
            raise TypeError(
                f"{self!r}: unknown option(s) {', '.join(hints)}; "
                f"options are {', '.join(sorted(self._options))}"
            )
        return attrs.evolve(self, **options)  # type: ignore[misc]


def _fmt_options(instance: Any, skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for a in attrs.fields(type(instance)):
        if a.name in skip or not a.repr:
            continue
        value = getattr(instance, a.name)
        if value != a.default:
            out.append(f"{a.name}={v.describe(value)}")
    return out


def _check_retry(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, Retry):
        raise TypeError(f"retry={value!r} must be a trioflow.Retry or None")


def _name(value: Any) -> str:
    return v.describe(value)


@final
@attrs.frozen(repr=False)
class Process(Stage[In, Out]):
    """``n`` concurrent calls of ``fn(item) -> item``; see :func:`process` and :func:`sink`."""

    fn: Callable[[Any], Any]
    n: int | Adaptive = 1
    ordered: bool = False
    partition_by: Callable[[Any], Hashable] | None = None
    retry: Retry | None = attrs.field(default=None, validator=_check_retry)
    timeout: float | None = None
    buffer: int | None = None
    thread: bool = False
    messages: bool = False
    name: str | None = None
    terminal: bool = attrs.field(default=False, repr=False)
    parallel: bool = False
    breaker: Breaker | None = None

    _options: ClassVar[frozenset[str]] = frozenset(
        {
            "breaker",
            "n",
            "ordered",
            "partition_by",
            "retry",
            "timeout",
            "buffer",
            "thread",
            "messages",
            "name",
            "parallel",
        }
    )

    def __attrs_post_init__(self) -> None:
        where = "sink" if self.terminal else "process"
        v.callable_("fn", self.fn, where)
        if inspect.isasyncgenfunction(self.fn):
            raise TypeError(
                f"{where}({_name(self.fn)}): an async generator function yields several items "
                "per input; use flat_map() for it (or use it as a source)"
            )
        if not isinstance(self.n, Adaptive):
            v.positive_int("n", self.n)
        if self.breaker is not None and not isinstance(self.breaker, Breaker):
            raise TypeError(f"{where}: breaker={self.breaker!r} must be a trioflow.Breaker or None")
        v.optional_callable("partition_by", self.partition_by, where)
        v.optional_positive_number("timeout", self.timeout)
        v.optional_positive_int("buffer", self.buffer)
        if self.thread and inspect.iscoroutinefunction(self.fn):
            raise TypeError(f"{where}({_name(self.fn)}): thread=True needs a plain (sync) function")
        if self.parallel:
            if self.thread:
                raise ValueError(
                    f"{where}({_name(self.fn)}): thread=True and parallel=True: choose one"
                )
            if self.is_async or self.messages:
                raise TypeError(
                    f"{where}({_name(self.fn)}): parallel=True runs a plain (sync) function of the "
                    "data in worker processes"
                )
        if self.timeout is not None and not (self.thread or self.parallel or self.is_async):
            raise ValueError(
                f"{where}({_name(self.fn)}): timeout needs an async function or thread=True "
                "(a plain function called inline cannot be interrupted)"
            )
        if self.partition_by is not None and self.ordered:
            raise ValueError(
                "partition_by and ordered=True: choose one (partition_by orders per key)"
            )

    @property
    def is_async(self) -> bool:
        """Whether ``fn`` is awaited (an ``async def`` function or callable)."""
        return _is_async_callable(self.fn)

    @property
    def max_n(self) -> int:
        """The most calls the stage may run at once (``n``, or an :class:`Adaptive` limit's max)."""
        return self.n.max if isinstance(self.n, Adaptive) else self.n

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """With only option keywords, a configured copy; otherwise call ``fn`` (for tests)."""
        return self.configure_or_call(self.fn, args, kwargs)

    @property
    def label(self) -> str:
        return self.name or _name(self.fn)

    def __repr__(self) -> str:
        kind = "sink" if self.terminal else "process"
        return f"{kind}({', '.join([_name(self.fn), *_fmt_options(self, ('fn',))])})"


def _is_async_callable(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def process(
    fn: Callable[[In], Any],
    n: int | Adaptive = 1,
    *,
    ordered: bool = False,
    partition_by: Callable[[In], Hashable] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: bool = False,
    name: str | None = None,
    parallel: bool = False,
    breaker: Breaker | None = None,
) -> Process[In, Any]:
    """Run ``n`` concurrent calls of ``fn(item) -> item``.

    ``async def`` functions are awaited; plain functions are called inline, or in a worker
    thread with ``thread=True`` (blocking calls), or in worker processes with ``parallel=True``
    (CPU-bound work over several cores, through trio-parallel: ``fn``, its items and results
    must pickle, and the entry script must start the pipeline under
    ``if __name__ == "__main__":``). An exception fails that item, not the pipeline. With ``n=1``
    input order is kept; with ``ordered=True`` it is kept for any ``n``; with
    ``partition_by=key`` items of equal keys go through one at a time, in input order.
    ``buffer`` (items, default :data:`DEFAULT_BUFFER`) bounds the stage's input queue.
    ``n=Adaptive(min, max)`` lets the limit follow the latency the calls see;
    ``breaker=Breaker(...)`` pauses the sources while the calls keep failing
    (docs/concepts/flow-control.md).

    Back-pressure: a worker that cannot hand its output on waits, holding its slot.

    Examples:
        >>> decode_stage = process(decode, n=10, retry=Retry(attempts=3))
    """
    return Process(
        fn,
        n,
        ordered,
        partition_by,
        retry,
        timeout,
        buffer,
        thread,
        messages,
        name,
        False,
        parallel,
        breaker,
    )


def sink(
    fn: Callable[[In], Any],
    n: int | Adaptive = 1,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: bool = False,
    name: str | None = None,
    breaker: Breaker | None = None,
) -> Process[In, None]:
    """A terminal stage: when ``fn(item)`` returns, every message in the item is acked.

    After a :func:`batch`, the item is a list and its success acks all of its messages. Nothing
    may follow a sink.

    Examples:
        >>> pipeline = from_iterable(rows) | batch(500, 1.0) | sink(save_rows)
    """
    return Process(
        fn, n, False, None, retry, timeout, buffer, thread, messages, name, True, False, breaker
    )


@final
@attrs.frozen(repr=False)
class Filter(Stage[In, In]):
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
        return _is_async_callable(self.pred)

    @property
    def label(self) -> str:
        return self.name or f"filter({_name(self.pred)})"

    def __repr__(self) -> str:
        return f"filter({', '.join([_name(self.pred), *_fmt_options(self, ('pred',))])})"


def filter(
    pred: Callable[[In], Any], *, buffer: int | None = None, name: str | None = None
) -> Filter[In]:
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
        return self.name or f"flat_map({_name(self.fn)})"

    def __repr__(self) -> str:
        return f"flat_map({', '.join([_name(self.fn), *_fmt_options(self, ('fn',))])})"


def flat_map(
    fn: Callable[[In], Any], *, buffer: int | None = None, name: str | None = None
) -> FlatMap[In, Any]:
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
class Unbatch(Stage[Any, Any]):
    """Turn batches back into single items; see :func:`unbatch`."""

    buffer: int | None = None
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"buffer", "name"})

    def __attrs_post_init__(self) -> None:
        v.optional_positive_int("buffer", self.buffer)

    @property
    def label(self) -> str:
        return self.name or "unbatch()"

    def __repr__(self) -> str:
        return f"unbatch({', '.join(_fmt_options(self))})"


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
class BatchStage(Stage[In, list[In]]):
    """Group items into :class:`~trioflow.Batch` lists; see :func:`batch`."""

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
        args += _fmt_options(self, ("size", "timeout"))
        return f"batch({', '.join(args)})"


def batch(
    size: int,
    timeout: float | None = DEFAULT_BATCH_TIMEOUT,
    *,
    key: Callable[[In], Hashable] | None = None,
    weight: Callable[[In], float] | None = None,
    max_weight: float | None = None,
    buffer: int | None = None,
    name: str | None = None,
) -> BatchStage[In]:
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
class RateLimit(Stage[In, In]):
    """Let at most ``count`` items through per ``per`` seconds; see :func:`rate_limit`."""

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
        args = [repr(self.count), *_fmt_options(self, ("count",))]
        return f"rate_limit({', '.join(args)})"


def rate_limit(
    count: int, per: float = 1.0, *, buffer: int | None = None, name: str | None = None
) -> RateLimit[In]:
    """At most ``count`` items pass in any window of ``per`` seconds (a sliding window).

    Items wait in the stage (and back-pressure builds behind it) until they may pass.

    Examples:
        >>> polite = rate_limit(10, per=1.0)
    """
    return RateLimit(count, per, buffer, name)


def _branches(value: Mapping[Any, Any]) -> tuple[tuple[Any, Pipeline], ...]:
    from ._pipeline import as_fragment

    if not isinstance(value, Mapping) or not value:
        raise TypeError(f"route: branches={value!r} must be a non-empty dict of key -> pipeline")
    return tuple((k, as_fragment(b, where=f"route branch {k!r}")) for k, b in value.items())


@final
@attrs.frozen(repr=False)
class Route(Stage[In, Any]):
    """Send each item to one branch by key; see :func:`route`."""

    key: Callable[[Any], Hashable]
    branches: tuple[tuple[Any, Pipeline], ...] = attrs.field(converter=_branches)
    buffer: int | None = None
    name: str | None = None
    _options: ClassVar[frozenset[str]] = frozenset({"buffer", "name"})

    def __attrs_post_init__(self) -> None:
        v.callable_("key_fn", self.key, "route")
        v.optional_positive_int("buffer", self.buffer)

    @property
    def label(self) -> str:
        return self.name or f"route({_name(self.key)})"

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {b!r}" for k, b in self.branches)
        extra = "".join(f", {o}" for o in _fmt_options(self, ("key", "branches")))
        return f"route({_name(self.key)}, {{{inner}}}{extra})"


def route(
    key_fn: Callable[[In], Hashable],
    branches: Mapping[Any, Any],
    *,
    buffer: int | None = None,
    name: str | None = None,
) -> Route[In]:
    """Send each item to the branch named by ``key_fn(item)``.

    A branch is a pipeline without a source, or a single stage. An item whose key has no branch
    fails with a ``KeyError`` naming the key. Outputs of a branch that does not end in a sink
    continue after the route (in no particular order across branches).

    Examples:
        >>> branches = {"a": process(enrich) | sink(save_a), "b": sink(save_b)}
        >>> by_kind = route(lambda e: e.kind, branches)
    """
    return Route(key_fn, branches, buffer, name)


@overload
def stage(fn: Callable[..., Any], /) -> Any: ...
@overload
def stage(fn: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Any]: ...
def stage(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Turn a user function into a stage: ``@stage`` or ``@stage(n=10, ...)``.

    An async generator function becomes a source; an async or sync function a processor
    (:func:`process`, whose options it takes). The result stays callable: with only option keywords
    it returns a configured copy (``decode(n=10)``), with an item it calls the function
    (``await decode(raw)``, for unit tests).

    Examples:
        >>> @stage
        ... async def source():
        ...     for i in range(10):
        ...         yield i
        >>> @stage(n=4)
        ... async def double(x):
        ...     return 2 * x
        >>> pipeline = source | double(n=8) | sink(print)
    """
    if fn is None:
        return lambda f: stage(f, **options)
    if inspect.isasyncgenfunction(fn):
        from ._sources import AsyncGenSource

        src: AsyncGenSource[Any] = AsyncGenSource(fn)
        return src.configure(**options) if options else src
    return process(fn, **options)
