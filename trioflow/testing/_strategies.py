"""Hypothesis strategies: stages, whole stage graphs, failure plans, and inputs.

Every strategy shrinks towards fewer and simpler stages: ``n=1``, no retry, default buffers,
``process`` before the other kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

from .._pipeline import Pipeline
from .._retry import Backoff, Retry
from .._stages import Stage, batch, flat_map, process, rate_limit, route
from .._stages import filter as filter_stage
from ._graph import (
    BatchSpec,
    FailurePlan,
    Fault,
    FilterSpec,
    FlatMapSpec,
    Graph,
    Kind,
    ProcessSpec,
    RateLimitSpec,
    RouteSpec,
    Spec,
    Token,
    tokens_of,
)

__all__ = ["failures", "pipelines", "retries", "stages", "tokens"]

_BUFFERS = st.sampled_from([None, 1, 2, 3, 5, 16])


def retries() -> st.SearchStrategy[Retry | None]:
    """Retry policies (or ``None``) with short backoffs: at most three attempts.

    Example:
        >>> @given(retries())
        ... def test_policy(retry): ...
    """
    backoffs = st.sampled_from(
        [
            Backoff.constant(0.0),
            Backoff.constant(0.5),
            Backoff.exponential(0.1, max=1.0),
            Backoff.exponential(0.1, max=1.0, jitter=True),
        ]
    )
    return st.one_of(st.none(), st.builds(Retry, attempts=st.integers(1, 3), backoff=backoffs))


def _identity(x: Any) -> Any:
    return x


def _always(x: Any) -> bool:
    return True


def _single(x: Any) -> list[Any]:
    return [x]


def _zero(x: Any) -> int:
    return 0


async def _aidentity(x: Any) -> Any:
    return x


@st.composite
def stages(draw: st.DrawFn, fn: Callable[[Any], Any] | None = None) -> Stage[Any, Any] | Pipeline:
    """Any stage of the palette, configured at random, that passes items through unchanged.

    ``process`` (random ``n``, ``ordered``, ``partition_by``, ``retry``, ``buffer``; sync or
    async), ``filter`` that keeps everything, ``flat_map`` to one child, ``batch`` (random size,
    timeout, key) followed by an un-batching ``flat_map``, ``rate_limit``, and a ``route`` with one
    branch. Put them around the stage you test: the model of the whole is the model of your stage
    (as a multiset: most of these reorder). ``fn`` replaces the identity of ``process`` stages.

    Example:
        >>> @given(st.lists(stages(), max_size=3), st.lists(st.integers()))
        ... def test_mine(around, xs):
        ...     fragment = Pipeline(()) if not around else functools.reduce(operator.or_, around)
        ...     check_pipeline(fragment | my_stage, xs, model=my_model)
    """
    kind = draw(st.sampled_from(["process", "filter", "flat_map", "batch", "rate_limit", "route"]))
    buffer = draw(_BUFFERS)
    if kind == "process":
        is_async = draw(st.booleans())
        f = fn if fn is not None else (_aidentity if is_async else _identity)
        n = draw(st.integers(1, 4))
        ordered = n > 1 and draw(st.booleans())
        part = None if ordered else draw(st.sampled_from([None, hash]))
        return process(
            f, n, ordered=ordered, partition_by=part, retry=draw(retries()), buffer=buffer
        )
    if kind == "filter":
        return filter_stage(_always, buffer=buffer)
    if kind == "flat_map":
        return flat_map(_single, buffer=buffer)
    if kind == "batch":
        b = batch(
            draw(st.integers(1, 5)),
            draw(st.sampled_from([None, 0.5, 1.0, 3.0])),
            key=draw(st.sampled_from([None, _zero, hash])),
            buffer=buffer,
        )
        return b | flat_map(_identity)
    if kind == "rate_limit":
        return rate_limit(draw(st.integers(1, 4)), draw(st.sampled_from([0.5, 1.0])), buffer=buffer)
    return route(_zero, {0: process(fn or _identity)}, buffer=buffer)


def tokens(max_size: int = 20, *, values: st.SearchStrategy[int] | None = None) -> Any:
    """Lists of source :class:`Token`\\ s for :func:`pipelines` graphs (``Token(i, (), value)``).

    Example:
        >>> @given(pipelines(), tokens())
        ... def test_graph(graph, items):
        ...     check_pipeline(graph, items)
    """
    vals = values if values is not None else st.integers(0, 12)
    return st.lists(vals, max_size=max_size).map(tokens_of)


def failures(
    stages: Sequence[int] | int, items: int = 20, *, max_faults: int = 4
) -> st.SearchStrategy[FailurePlan]:
    """Plans of which source items raise in which stages, transiently or permanently.

    ``stages`` are the stage ids a fault may name (``graph.stage_ids()``, or a count); ``items``
    how many source items there may be. A transient fault (``times=k``) makes the first ``k``
    calls raise, so a stage retrying at least ``k + 1`` times succeeds; ``times=None`` always
    raises.

    Example:
        >>> @given(failures(stages=[0, 1, 2]))
        ... def test_plan(plan): ...
    """
    ids = list(range(stages)) if isinstance(stages, int) else list(stages)
    if not ids or items <= 0:
        return st.just(FailurePlan())
    fault = st.builds(
        Fault,
        stage=st.sampled_from(ids),
        item=st.integers(0, items - 1),
        times=st.one_of(st.none(), st.integers(1, 3)),
    )
    return st.lists(fault, max_size=max_faults).map(lambda fs: FailurePlan(tuple(fs)))


class _Ids:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def _list_op(draw: st.DrawFn, ids: _Ids, *, sink_ok: bool, end: bool) -> tuple[Spec, Kind]:
    """A stage that consumes batches (lists): it observes what the batch stage formed."""
    options = ["unbatch", "process", "filter"] + (["sink"] if sink_ok else [])
    choice = draw(st.sampled_from(options))
    if choice == "unbatch":
        return FlatMapSpec(ids(), "list", buffer=draw(_BUFFERS)), "item"
    if choice == "filter":
        return FilterSpec(ids(), "list", draw(st.integers(2, 3)), draw(st.integers(0, 1))), "list"
    sink = choice == "sink"
    return (
        ProcessSpec(
            ids(),
            "list",
            delta=0 if sink else draw(st.integers(0, 3)),
            n=1,
            retry=draw(retries()),
            is_async=draw(st.booleans()),
            buffer=draw(_BUFFERS),
            sink=sink,
        ),
        "list",
    )


def _process_spec(draw: st.DrawFn, ids: _Ids, *, sink: bool) -> ProcessSpec:
    n = draw(st.integers(1, 4))
    mode = "plain" if sink else draw(st.sampled_from(["plain", "ordered", "partition"]))
    return ProcessSpec(
        ids(),
        "item",
        delta=0 if sink else draw(st.integers(0, 3)),
        n=n,
        ordered=mode == "ordered",
        key_sid=ids() if mode == "partition" else None,
        key_mod=draw(st.integers(1, 3)),
        retry=draw(retries()),
        is_async=draw(st.booleans()),
        buffer=draw(_BUFFERS),
        sink=sink,
    )


def _chain(
    draw: st.DrawFn, ids: _Ids, *, depth: int, max_len: int, sink: bool | None, branch: bool
) -> tuple[Spec, ...]:
    length = draw(st.integers(0, max_len))
    specs: list[Spec] = []
    kind: Kind = "item"
    kinds = ["process", "filter", "flat_map", "batch", "rate_limit"]
    if depth > 0:
        kinds.append("route")
    i = 0
    while i < length or (kind == "list" and branch):
        i += 1
        if kind == "list":
            spec, kind = _list_op(draw, ids, sink_ok=False, end=False)
            specs.append(spec)
            continue
        choice = draw(st.sampled_from(kinds))
        buffer = draw(_BUFFERS)
        if choice == "process":
            specs.append(_process_spec(draw, ids, sink=False))
        elif choice == "filter":
            specs.append(
                FilterSpec(ids(), "item", draw(st.integers(2, 4)), draw(st.integers(0, 1)), buffer)
            )
        elif choice == "flat_map":
            specs.append(FlatMapSpec(ids(), "item", draw(st.integers(0, 3)), buffer))
        elif choice == "rate_limit":
            specs.append(
                RateLimitSpec(
                    ids(), draw(st.integers(1, 4)), draw(st.sampled_from([0.5, 1.0])), buffer
                )
            )
        elif choice == "batch":
            specs.append(
                BatchSpec(
                    ids(),
                    draw(st.integers(1, 5)),
                    draw(st.sampled_from([None, 0.5, 1.0, 3.0])),
                    draw(st.sampled_from([None, 2, 3])),
                    buffer,
                )
            )
            # the next stage consumes (and so observes) the batches
            last = i >= length and not branch
            spec, kind = _list_op(draw, ids, sink_ok=bool(sink is not False and last), end=last)
            specs.append(spec)
            if isinstance(spec, ProcessSpec) and spec.sink:
                return tuple(specs)
        else:
            mod = draw(st.integers(1, 3))
            keys = draw(
                st.lists(st.integers(0, mod - 1), min_size=1, max_size=mod, unique=True).map(sorted)
            )
            branches: list[tuple[int, tuple[Spec, ...]]] = []
            for k in keys:
                sub = _chain(draw, ids, depth=depth - 1, max_len=2, sink=None, branch=True) or (
                    ProcessSpec(ids(), "item"),
                )
                branches.append((k, sub))
            specs.append(RouteSpec(ids(), mod, tuple(branches), buffer))
    want_sink = draw(st.booleans()) if sink is None else sink
    if want_sink:
        if kind == "list":
            spec, _ = _list_op(draw, ids, sink_ok=True, end=True)
            specs.append(spec)
            if not (isinstance(spec, ProcessSpec) and spec.sink):
                specs.append(ProcessSpec(ids(), "list", sink=True))
        else:
            specs.append(_process_spec(draw, ids, sink=True))
    return tuple(specs)


@st.composite
def pipelines(
    draw: st.DrawFn,
    source: str | None = None,
    sink: bool | None = None,
    *,
    max_stages: int = 5,
    max_depth: int = 1,
    with_failures: bool = True,
    max_items: int = 20,
) -> Graph:
    """Random stage graphs with their model: draws a :class:`Graph` to pass to
    :func:`check_pipeline` with :func:`tokens` as items.

    Graphs chain ``process`` (random ``n``, ``ordered``, ``partition_by``, retries, sync or
    async), ``filter``, ``flat_map``, ``batch`` (random size, timeout, key; followed by a stage
    that takes lists), ``rate_limit`` and ``route`` (up to ``max_depth`` levels, some keys without
    a branch), with random buffer sizes. ``source``: ``"single"``, ``"merge"`` or ``None``
    (either); ``sink``: ``True`` (always end in a sink), ``False`` (never: outputs are collected)
    or ``None``. With ``with_failures`` a :class:`FailurePlan` for up to ``max_items`` items is
    drawn too.

    Example:
        >>> @given(pipelines(sink=False), tokens())
        ... def test_any_graph(graph, items):
        ...     check_pipeline(graph, items)
    """
    ids = _Ids()
    chain = _chain(draw, ids, depth=max_depth, max_len=max_stages, sink=sink, branch=False)
    if source is None:
        merge = draw(st.sampled_from([1, 2, 3]))
    else:
        merge = 1 if source == "single" else draw(st.integers(2, 3))
    graph = Graph(chain, merge=merge)
    if with_failures:
        plan = draw(failures(graph.stage_ids(), max_items))
        graph = Graph(chain, merge=merge, plan=plan)
    return graph


_ = Token
