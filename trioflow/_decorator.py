"""``@stage``: a user function as a stage (a processor, or for an async generator a source)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Protocol, overload

from ._composable import Item, Result
from ._flow import Adaptive, Breaker
from ._retry import Retry
from ._sources import AsyncGenSource
from ._stages import Process, process

__all__ = ["StageDecorator", "stage"]


class StageDecorator(Protocol):
    """What ``@stage(...)`` with options returns: ``@stage`` with those options."""

    @overload
    def __call__(self, fn: Callable[[], AsyncIterator[Result]], /) -> AsyncGenSource[Result]: ...
    @overload
    def __call__(self, fn: Callable[[Item], Awaitable[Result]], /) -> Process[Item, Result]: ...
    @overload
    def __call__(self, fn: Callable[[Item], Result], /) -> Process[Item, Result]: ...


@overload
def stage(fn: Callable[[], AsyncIterator[Result]], /) -> AsyncGenSource[Result]: ...
@overload
def stage(fn: Callable[[Item], Awaitable[Result]], /) -> Process[Item, Result]: ...
@overload
def stage(fn: Callable[[Item], Result], /) -> Process[Item, Result]: ...
@overload
def stage(
    fn: None = None,
    /,
    *,
    n: int | Adaptive = ...,
    ordered: bool = ...,
    partition_by: Callable[[Any], Hashable] | None = ...,
    retry: Retry | None = ...,
    timeout: float | None = ...,
    buffer: int | None = ...,
    thread: bool = ...,
    name: str | None = ...,
    parallel: bool = ...,
    breaker: Breaker | None = ...,
) -> StageDecorator: ...
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

        def decorate(f: Callable[..., Any]) -> Any:
            return stage(f, **options)

        return decorate
    if inspect.isasyncgenfunction(fn):
        src: AsyncGenSource[Any] = AsyncGenSource(fn)
        return src.configure(**options) if options else src
    return process(fn, **options)
