"""The bottom of the composition layer: what ``|`` joins, and the types that flow through it.

:class:`Composable` is the base of stages and pipelines, :class:`Stage` the base of every stage.
The overloads of ``|`` carry the element type from left to right, so a type checker infers
``Pipeline[None, str]`` for ``from_iterable([1]) | process(to_str)`` and reports a stage whose
input does not fit. They are typing only: at run time both operators are one call of
``_pipeline.compose``, the module that knows every kind of stage (the one call up from here).
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeGuard, overload

import attrs

from ._validate import describe

if TYPE_CHECKING:
    # TypeVar defaults (PEP 696) for the checkers only: a bare ``Stage`` or ``Pipeline`` means
    # ``[Any, Any]``, as before the classes were generic (Python 3.11's TypeVar has no default)
    from typing_extensions import TypeVar

    from ._batches import Batch
    from ._pipeline import Pipeline
    from ._stages import BatchStage, RateLimit, Unbatch

    In = TypeVar("In", contravariant=True, default=Any)
    Out = TypeVar("Out", covariant=True, default=Any)
    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    In = TypeVar("In", contravariant=True)
    Out = TypeVar("Out", covariant=True)
    T = TypeVar("T")

__all__ = [
    "DEFAULT_BUFFER",
    "Composable",
    "In",
    "Item",
    "Mid",
    "Out",
    "Result",
    "Stage",
    "T",
    "fmt_options",
    "is_stage",
]

# in signatures: what flows in (Item), between the two sides of | (Mid), and out (Result)
Item = TypeVar("Item")
Mid = TypeVar("Mid")
Result = TypeVar("Result")


class Composable(Generic[In, Out]):
    """What ``|`` joins: a stage or a pipeline taking ``In`` items and giving ``Out`` items.

    ``BatchStage``, ``Unbatch`` and ``RateLimit`` are not generic (so ``batch(100, 1.0)`` needs no
    annotation): ``|`` gives them the element type of what comes before them.
    """

    __slots__ = ()

    def sole_stage(self) -> Stage[Any, Any] | None:
        """The one stage this is made of (a stage itself, a pipeline of one stage), or None."""
        return None

    @overload
    def __or__(self: Composable[Item, Mid], other: BatchStage) -> Pipeline[Item, list[Mid]]: ...
    @overload
    def __or__(self: Composable[Item, Mid], other: RateLimit) -> Pipeline[Item, Mid]: ...
    @overload
    def __or__(self: Composable[Item, Iterable[Mid]], other: Unbatch) -> Pipeline[Item, Mid]: ...
    @overload
    def __or__(
        self: Composable[Item, list[Mid]], other: Composable[Batch[Mid], Result]
    ) -> Pipeline[Item, Result]: ...
    @overload
    def __or__(
        self: Composable[Item, Mid], other: Composable[Mid, Result]
    ) -> Pipeline[Item, Result]: ...
    @overload
    def __or__(
        self: Composable[Item, Mid], other: Callable[[Mid], AsyncIterator[Result]]
    ) -> Pipeline[Item, Result]: ...
    @overload
    def __or__(
        self: Composable[Item, Mid], other: Callable[[Mid], Awaitable[Result]]
    ) -> Pipeline[Item, Result]: ...
    @overload
    def __or__(
        self: Composable[Item, Mid], other: Callable[[Mid], Result]
    ) -> Pipeline[Item, Result]: ...
    def __or__(self, other: Any) -> Any:
        from ._pipeline import compose

        return compose(self, other)

    # what may stand left of the first ``|`` besides a stage: an iterable, an async iterable or
    # an async generator function (each becomes a source)
    @overload
    def __ror__(
        self: Composable[Item, Result], other: Callable[[], AsyncIterator[Item]]
    ) -> Pipeline[None, Result]: ...
    @overload
    def __ror__(
        self: Composable[Item, Result], other: AsyncIterable[Item]
    ) -> Pipeline[None, Result]: ...
    @overload
    def __ror__(
        self: Composable[Item, Result], other: Iterable[Item]
    ) -> Pipeline[None, Result]: ...
    def __ror__(self, other: Any) -> Any:
        from ._pipeline import compose

        return compose(other, self)


#: Items a stage's input holds when ``buffer`` is not given (after a batch, batches holding about
#: this many messages, see ``Stage.input_buffer``). About a thousand keeps chunks large enough to
#: amortize a task switch per hand-over (docs/performance.md: W2 at 512 and 1024) while bounding
#: memory to what a thousand items weigh.
DEFAULT_BUFFER = 1024


class Stage(Composable[In, Out]):
    """Base class of every stage: composes with ``|`` into a :class:`~trioflow.Pipeline`.

    ``Stage[In, Out]`` takes items of type ``In`` and gives items of type ``Out``; a source is a
    ``Stage[None, Out]``.
    """

    __slots__ = ()
    #: options a call with keywords only may set (see ``__call__``)
    _options: ClassVar[frozenset[str]] = frozenset()

    def sole_stage(self) -> Stage[Any, Any]:
        """The stage itself (a stage is a pipeline of one stage)."""
        return self

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

    def configure_or_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``stage(n=10)`` (option keywords only) configures; ``stage(item)`` calls ``fn``.

        A call with keywords only, one of them an option name, configures: a misspelt option
        next to a valid one (``n=10, bufer=5``) is named, with the valid ones, rather than
        passed to ``fn``.
        """
        if not args and kwargs and not set(kwargs).isdisjoint(self._options):
            return self.configure(**kwargs)
        return fn(*args, **kwargs)

    def configure(self, **options: Any) -> Self:
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


def is_stage(obj: object) -> TypeGuard[Stage[Any, Any]]:
    """``isinstance(obj, Stage)``, seen by the checkers as ``Stage[Any, Any]``.

    (See ``_pipeline.is_pipeline``: the same for stages.)
    """
    return isinstance(obj, Stage)


def fmt_options(instance: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The ``name=value`` options of an attrs stage that differ from their defaults (for reprs)."""
    out: list[str] = []
    cls: type[attrs.AttrsInstance] = instance.__class__
    for a in attrs.fields(cls):
        if a.name in skip or not a.repr:
            continue
        value = getattr(instance, a.name)
        if value != a.default:
            out.append(f"{a.name}={describe(value)}")
    return out
