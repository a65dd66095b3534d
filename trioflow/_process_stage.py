"""The ``process`` and ``sink`` stages: their spec, and constructors typed for each function.

``process(fn)`` is typed from ``fn``: an async or plain function of the data, or with
``messages=True`` a function of the message (after a batch: of a ``Batch`` of messages). The
overlaps (an async function is also a plain function returning an awaitable) resolve in order,
as at run time.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, ClassVar, Literal, Self, final, overload

import attrs

from . import _validate as v
from ._batches import Batch
from ._composable import In, Item, Out, Result, Stage, fmt_options
from ._flow import Adaptive, Breaker
from ._message import Message
from ._retry import Retry
from ._validate import describe

__all__ = ["Process", "is_async_callable", "process", "sink"]


def _check_retry(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, Retry):
        raise TypeError(f"retry={value!r} must be a trioflow.Retry or None")


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
                f"{where}({describe(self.fn)}): an async generator function yields several items "
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
            raise TypeError(
                f"{where}({describe(self.fn)}): thread=True needs a plain (sync) function"
            )
        if self.parallel:
            if self.thread:
                raise ValueError(
                    f"{where}({describe(self.fn)}): thread=True and parallel=True: choose one"
                )
            if self.is_async or self.messages:
                raise TypeError(
                    f"{where}({describe(self.fn)}): parallel=True runs a plain (sync) function of "
                    "the data in worker processes"
                )
        if self.timeout is not None and not (self.thread or self.parallel or self.is_async):
            raise ValueError(
                f"{where}({describe(self.fn)}): timeout needs an async function or thread=True "
                "(a plain function called inline cannot be interrupted)"
            )
        if self.partition_by is not None and self.ordered:
            raise ValueError(
                "partition_by and ordered=True: choose one (partition_by orders per key)"
            )

    @property
    def is_async(self) -> bool:
        """Whether ``fn`` is awaited (an ``async def`` function or callable)."""
        return is_async_callable(self.fn)

    @property
    def max_n(self) -> int:
        """The most calls the stage may run at once (``n``, or an :class:`Adaptive` limit's max)."""
        return self.n.max if isinstance(self.n, Adaptive) else self.n

    @overload
    def __call__(
        self,
        *,
        n: int | Adaptive = ...,
        ordered: bool = ...,
        partition_by: Callable[[Any], Hashable] | None = ...,
        retry: Retry | None = ...,
        timeout: float | None = ...,
        buffer: int | None = ...,
        thread: bool = ...,
        messages: bool = ...,
        name: str | None = ...,
        parallel: bool = ...,
        breaker: Breaker | None = ...,
    ) -> Self: ...
    @overload
    def __call__(self, item: In, /) -> Any: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """With only option keywords, a configured copy; otherwise call ``fn`` (for tests)."""
        return self.configure_or_call(self.fn, args, kwargs)

    @property
    def label(self) -> str:
        return self.name or describe(self.fn)

    def __repr__(self) -> str:
        kind = "sink" if self.terminal else "process"
        return f"{kind}({', '.join([describe(self.fn), *fmt_options(self, ('fn',))])})"


def is_async_callable(fn: Any) -> bool:
    """Whether ``fn`` is awaited: an ``async def`` function, or a callable whose ``__call__`` is."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


@overload
def process(
    fn: Callable[[Item], Awaitable[Result]],
    n: int | Adaptive = 1,
    *,
    ordered: bool = False,
    partition_by: Callable[[Item], Hashable] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: Literal[False] = False,
    messages: Literal[False] = False,
    name: str | None = None,
    parallel: Literal[False] = False,
    breaker: Breaker | None = None,
) -> Process[Item, Result]: ...
@overload
def process(
    fn: Callable[[Item], Result],
    n: int | Adaptive = 1,
    *,
    ordered: bool = False,
    partition_by: Callable[[Item], Hashable] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: Literal[False] = False,
    name: str | None = None,
    parallel: bool = False,
    breaker: Breaker | None = None,
) -> Process[Item, Result]: ...
@overload
def process(
    fn: Callable[[Message[Item]], Awaitable[Message[Result]]]
    | Callable[[Message[Item]], Message[Result]],
    n: int | Adaptive = 1,
    *,
    ordered: bool = False,
    partition_by: Callable[[Message[Item]], Hashable] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: Literal[True],
    name: str | None = None,
    parallel: Literal[False] = False,
    breaker: Breaker | None = None,
) -> Process[Item, Result]: ...
@overload
def process(
    fn: Callable[[Batch[Message[Item]]], Awaitable[Sequence[Message[Result]]]]
    | Callable[[Batch[Message[Item]]], Sequence[Message[Result]]],
    n: int | Adaptive = 1,
    *,
    ordered: bool = False,
    partition_by: Callable[[Batch[Message[Item]]], Hashable] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: Literal[True],
    name: str | None = None,
    parallel: Literal[False] = False,
    breaker: Breaker | None = None,
) -> Process[Batch[Item], Batch[Result]]: ...
def process(
    fn: Callable[[Any], Any],
    n: int | Adaptive = 1,
    *,
    ordered: bool = False,
    partition_by: Callable[[Any], Hashable] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: bool = False,
    name: str | None = None,
    parallel: bool = False,
    breaker: Breaker | None = None,
) -> Process[Any, Any]:
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


@overload
def sink(
    fn: Callable[[Item], object],
    n: int | Adaptive = 1,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: Literal[False] = False,
    name: str | None = None,
    breaker: Breaker | None = None,
) -> Process[Item, None]: ...
@overload
def sink(
    fn: Callable[[Message[Item]], object],
    n: int | Adaptive = 1,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: Literal[True],
    name: str | None = None,
    breaker: Breaker | None = None,
) -> Process[Item, None]: ...
@overload
def sink(
    fn: Callable[[Batch[Message[Item]]], object],
    n: int | Adaptive = 1,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: Literal[True],
    name: str | None = None,
    breaker: Breaker | None = None,
) -> Process[Batch[Item], None]: ...
def sink(
    fn: Callable[[Any], Any],
    n: int | Adaptive = 1,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    buffer: int | None = None,
    thread: bool = False,
    messages: bool = False,
    name: str | None = None,
    breaker: Breaker | None = None,
) -> Process[Any, None]:
    """A terminal stage: when ``fn(item)`` returns, every message in the item is acked.

    After a :func:`batch`, the item is a list and its success acks all of its messages. Nothing
    may follow a sink.

    Examples:
        >>> pipeline = from_iterable(rows) | batch(500, 1.0) | sink(save_rows)
    """
    return Process(
        fn, n, False, None, retry, timeout, buffer, thread, messages, name, True, False, breaker
    )
