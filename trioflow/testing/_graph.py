"""Generated stage graphs: a spec per stage, the trioflow pipeline it builds, and its model.

Data are :class:`Token` values that remember which source item they descend from, so a
failure plan can name items and the model can say exactly which source items fail, with which
reason. Stage functions are small callable objects (:class:`Op`) whose reprs name what they do,
so a shrunk failing example prints a readable pipeline. They log their calls in a
:class:`Trace`; the model reads the batches the batch stages formed from that log (what a
sequential model cannot know in advance) and checks everything else against its own run.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, cast, final

import attrs
import trio
import trio.lowlevel

from .._exceptions import InvalidPipeline
from .._pipeline import Pipeline, compose
from .._retry import Backoff, Retry
from .._sources import merge
from .._stages import batch, flat_map, process, rate_limit, route, sink
from .._stages import filter as filter_stage
from ._check import Expected
from ._source import TestSource

__all__ = [
    "FailurePlan",
    "Fault",
    "Graph",
    "PlannedFailure",
    "Token",
    "tokens_of",
]

Kind = Literal["item", "list"]
Ident: TypeAlias = tuple[Any, ...]


@final
@attrs.frozen(order=True)
class Token:
    """A datum of a generated graph: source item ``src``, its path through ``flat_map`` children,
    and an integer ``value`` that stages change and that filters, keys and fan-outs read.

    Example:
        >>> Token(3, (), 7).value
        7
    """

    src: int
    path: tuple[int, ...] = ()
    value: int = 0

    @property
    def ident(self) -> Ident:
        """What tells this token apart from every other one in a run."""
        return (self.src, self.path)

    def __repr__(self) -> str:
        path = "".join(f".{p}" for p in self.path)
        return f"T{self.src}{path}={self.value}"


def tokens_of(values: Sequence[int]) -> list[Token]:
    """Source tokens for ``values``: ``Token(i, (), v)`` for the ``i``-th value.

    Example:
        >>> tokens_of([5, 6])
        [T0=5, T1=6]
    """
    return [Token(i, (), v) for i, v in enumerate(values)]


@final
class PlannedFailure(Exception):
    """The exception a failure plan makes a stage function raise."""

    def __init__(self, sid: int, ident: Ident, attempt: int) -> None:
        super().__init__(f"planned failure in stage #{sid} for {ident!r} (attempt {attempt})")
        self.sid = sid
        self.ident = ident
        self.attempt = attempt


@final
@attrs.frozen
class Fault:
    """Source item ``item`` fails in stage ``stage``: its first ``times`` calls raise
    (``None``: every call). A key function given a fault always raises.

    Example:
        >>> Fault(stage=2, item=0, times=1)  # one transient failure, a retry succeeds
        Fault(stage=2, item=0, times=1)
    """

    stage: int
    item: int
    times: int | None = None


@final
@attrs.frozen
class FailurePlan:
    """Which source items raise in which stages (see :func:`failures`)."""

    faults: tuple[Fault, ...] = ()

    def lookup(self) -> dict[tuple[int, int], int | None]:
        """``(stage, item) -> times``; several faults on one pair: the most severe wins."""
        out: dict[tuple[int, int], int | None] = {}
        for f in self.faults:
            key = (f.stage, f.item)
            if key in out:
                old = out[key]
                out[key] = None if old is None or f.times is None else max(old, f.times)
            else:
                out[key] = f.times
        return out

    def __repr__(self) -> str:
        return f"FailurePlan({list(self.faults)!r})"


# -- stage specs ----------------------------------------------------------------------------------


@attrs.frozen
class ProcessSpec:
    sid: int
    kind: Kind
    delta: int = 0
    n: int = 1
    ordered: bool = False
    key_sid: int | None = None  # partition_by key function's stage id
    key_mod: int = 2
    retry: Retry | None = None
    is_async: bool = False
    buffer: int | None = None
    sink: bool = False


@attrs.frozen
class FilterSpec:
    sid: int
    kind: Kind
    mod: int = 2
    rem: int = 0
    buffer: int | None = None


@attrs.frozen
class FlatMapSpec:
    sid: int
    kind: Kind  # "item": children by value; "list": un-batch
    fanout: int = 2
    buffer: int | None = None


@attrs.frozen
class BatchSpec:
    sid: int
    size: int
    timeout: float | None = None
    key_mod: int | None = None
    buffer: int | None = None


@attrs.frozen
class RateLimitSpec:
    sid: int
    count: int = 1
    per: float = 1.0
    buffer: int | None = None


@attrs.frozen
class RouteSpec:
    sid: int
    mod: int
    branches: tuple[tuple[int, tuple[Any, ...]], ...]
    buffer: int | None = None


Spec: TypeAlias = ProcessSpec | FilterSpec | FlatMapSpec | BatchSpec | RateLimitSpec | RouteSpec


# -- runtime: the calls log and the stage functions -----------------------------------------------


@final
class Trace:
    """What the stage functions of one run saw: first-attempt calls, attempts, sink inputs."""

    def __init__(self) -> None:
        self.calls: dict[int, list[tuple[Any, float]]] = defaultdict(list)
        self.attempts: Counter[tuple[int, Ident]] = Counter()
        self.saved: dict[int, list[Any]] = defaultdict(list)
        self.active: set[tuple[int, Any]] = set()
        self.violations: list[str] = []


def ident_of(x: Any) -> Ident:
    """The ident of a token, or of a batch: its members' idents, sorted."""
    if isinstance(x, list):
        return tuple(sorted(t.ident for t in cast("list[Token]", x)))
    assert isinstance(x, Token), x
    return x.ident


def _srcs(x: Any) -> list[int]:
    return [t.src for t in cast("list[Token]", x)] if isinstance(x, list) else [x.src]


def fault_times(
    faults: Mapping[tuple[int, int], int | None], sid: int, x: Any
) -> tuple[bool, int | None]:
    """(has a fault, times) for the call of stage ``sid`` on ``x`` (a batch: its worst member)."""
    found = False
    times: int | None = 0
    for src in _srcs(x):
        if (sid, src) in faults:
            t = faults[(sid, src)]
            found = True
            times = None if t is None or times is None else max(times, t)
    return found, times


class Op:
    """A generated stage function: ``role`` says what it does, ``sid`` which stage it is."""

    def __init__(
        self,
        sid: int,
        role: str,
        arg: int,
        trace: Trace,
        faults: Mapping[tuple[int, int], int | None],
        *,
        arg2: int = 0,
        key_of: int | None = None,
    ) -> None:
        self.sid = sid
        self.role = role
        self.arg = arg
        self.arg2 = arg2
        self.trace = trace
        self.faults = faults
        self.key_of = key_of  # partition key modulus, to check one call at a time per key
        # what reprs of stages show (trioflow names functions by __qualname__)
        self.__qualname__ = repr(self)

    def __repr__(self) -> str:
        name = {
            "bump": f"add{self.arg}",
            "keep": f"drop_mod{self.arg}_eq{self.arg2}",
            "split": f"split{self.arg}",
            "unbatch": "unbatch",
            "key": f"mod{self.arg}",
            "save": "save",
        }[self.role]
        return f"{name}#{self.sid}"

    def _enter(self, x: Any) -> None:
        trace = self.trace
        ident = ident_of(x)
        key = (self.sid, ident)
        trace.attempts[key] += 1
        attempt = trace.attempts[key]
        if attempt == 1:
            trace.calls[self.sid].append((x, trio.current_time()))
        found, times = fault_times(self.faults, self.sid, x)
        if found and (self.role == "key" or times is None or attempt <= times):
            raise PlannedFailure(self.sid, ident, attempt)

    def _result(self, x: Any) -> Any:
        role = self.role
        if role == "bump":
            if isinstance(x, list):
                return [attrs.evolve(t, value=t.value + self.arg) for t in cast("list[Token]", x)]
            return attrs.evolve(x, value=x.value + self.arg)
        if role == "keep":
            v = len(cast("list[Token]", x)) if isinstance(x, list) else x.value
            return v % self.arg != self.arg2
        if role == "split":
            return [
                Token(x.src, (*x.path, j), x.value + j) for j in range(x.value % (self.arg + 1))
            ]
        if role == "unbatch":
            return list(x)
        if role == "key":
            return x.value % self.arg
        if role == "save":
            self.trace.saved[self.sid].append(x)
            return None
        raise AssertionError(role)  # pragma: no cover

    def __call__(self, x: Any) -> Any:
        self._enter(x)
        return self._result(x)


class AsyncOp(Op):
    """An ``async def`` stage function: it yields once, so calls interleave."""

    async def __call__(self, x: Any) -> Any:
        self._enter(x)
        busy = None
        if self.key_of is not None:
            busy = (self.sid, x.value % self.key_of)
            if busy in self.trace.active:
                self.trace.violations.append(
                    f"stage #{self.sid}: two calls at once for partition key {busy[1]}"
                )
            self.trace.active.add(busy)
        try:
            await trio.lowlevel.checkpoint()
            return self._result(x)
        finally:
            if busy is not None:
                self.trace.active.discard(busy)


def _op(
    spec_is_async: bool,
    sid: int,
    role: str,
    arg: int,
    trace: Trace,
    faults: Mapping[tuple[int, int], int | None],
    **kw: Any,
) -> Op:
    return (AsyncOp if spec_is_async else Op)(sid, role, arg, trace, faults, **kw)


def _build_chain(
    chain: tuple[Spec, ...], trace: Trace, faults: Mapping[tuple[int, int], int | None]
) -> list[Any]:
    out: list[Any] = []
    for s in chain:
        if isinstance(s, ProcessSpec):
            role = "save" if s.sink else "bump"
            fn = _op(s.is_async, s.sid, role, s.delta, trace, faults, key_of=_pkey(s))
            if s.sink:
                out.append(sink(fn, s.n, retry=s.retry, buffer=s.buffer))
            else:
                key = (
                    Op(s.key_sid, "key", s.key_mod, trace, faults)
                    if s.key_sid is not None
                    else None
                )
                out.append(
                    process(
                        fn, s.n, ordered=s.ordered, partition_by=key, retry=s.retry, buffer=s.buffer
                    )
                )
        elif isinstance(s, FilterSpec):
            out.append(
                filter_stage(Op(s.sid, "keep", s.mod, trace, faults, arg2=s.rem), buffer=s.buffer)
            )
        elif isinstance(s, FlatMapSpec):
            role = "split" if s.kind == "item" else "unbatch"
            out.append(flat_map(Op(s.sid, role, s.fanout, trace, faults), buffer=s.buffer))
        elif isinstance(s, BatchSpec):
            key = Op(s.sid, "key", s.key_mod, trace, faults) if s.key_mod is not None else None
            out.append(batch(s.size, s.timeout, key=key, buffer=s.buffer))
        elif isinstance(s, RateLimitSpec):
            out.append(rate_limit(s.count, s.per, buffer=s.buffer))
        else:
            branches: dict[Any, Any] = {}
            for k, sub in s.branches:
                stages = _build_chain(sub, trace, faults)
                branches[k] = Pipeline(tuple(stages))
            out.append(route(Op(s.sid, "key", s.mod, trace, faults), branches, buffer=s.buffer))
    return out


def _pkey(s: ProcessSpec) -> int | None:
    return s.key_mod if s.key_sid is not None and s.n > 1 else None


# -- the graph: factory and model -----------------------------------------------------------------


@final
class Graph:
    """A generated stage graph: call it with a :class:`TestSource` to build a fresh pipeline;
    :meth:`model` predicts the last run's outcome. Drawn by :func:`pipelines`.

    Example:
        >>> @given(pipelines(), st.lists(st.integers(-9, 9)))
        ... def test_graph(graph, values):
        ...     check_pipeline(graph, tokens_of(values))
    """

    def __init__(
        self, chain: tuple[Spec, ...], *, merge: int = 1, plan: FailurePlan = FailurePlan()
    ) -> None:
        self.chain = chain
        self.merge = merge
        self.plan = plan
        self.trace: Trace = Trace()
        #: ``(stage, item) -> times`` of the plan (see :meth:`FailurePlan.lookup`)
        self.faults: dict[tuple[int, int], int | None] = plan.lookup()
        self.pipeline: Pipeline | None = None

    def stage_ids(self) -> list[int]:
        """Ids of the stages a fault can name (every stage with a function)."""
        return sorted(_sids(self.chain))

    def fragment(self) -> Pipeline:
        """The graph's stages as a pipeline without a source (with a fresh trace)."""
        self.trace = Trace()
        stages = _build_chain(self.chain, self.trace, self.faults)
        return Pipeline(tuple(stages))

    def __call__(self, source: TestSource[Any]) -> Pipeline:
        """Build a fresh pipeline fed by ``source`` (split into a merge, for a merge graph)."""
        fragment = self.fragment()
        src: Any = source if self.merge == 1 else merge(*source.split(self.merge))
        if not fragment.stages:
            self.pipeline = compose(src, None)
        else:
            self.pipeline = compose(src, fragment)
        return self.pipeline

    def __repr__(self) -> str:
        try:
            text = repr(self.fragment())
        except (InvalidPipeline, TypeError) as exc:  # pragma: no cover - generator bug
            text = f"<invalid: {exc}>"
        src = "TestSource" if self.merge == 1 else f"merge(TestSource x{self.merge})"
        plan = f", {self.plan!r}" if self.plan.faults else ""
        return f"Graph({src} | {text}{plan})" if text else f"Graph({src}{plan})"

    def model(self, pulled: list[Any]) -> Expected:
        """What a sequential run of the graph over ``pulled`` gives, given the batches formed.

        Raises :class:`InvariantViolation` for what it checks itself: batch sizes and keys,
        per-key order and exclusivity of ``partition_by``, sink inputs and their order.
        """
        from ._graph_model import GraphModel

        return GraphModel(self, pulled).expected()


def _sids(chain: tuple[Any, ...]) -> set[int]:
    out: set[int] = set()
    for s in chain:
        if isinstance(s, RateLimitSpec):
            continue
        if isinstance(s, BatchSpec):
            if s.key_mod is not None:
                out.add(s.sid)
            continue
        out.add(s.sid)
        if isinstance(s, ProcessSpec) and s.key_sid is not None:
            out.add(s.key_sid)
        if isinstance(s, RouteSpec):
            for _, sub in s.branches:
                out |= _sids(sub)
    return out


def neutral_backoff() -> Backoff:
    """A short constant backoff for generated retries."""
    return Backoff.constant(0.25)


_ = (math, Callable)
