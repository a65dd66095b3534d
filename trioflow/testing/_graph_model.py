"""The model of a generated :class:`~trioflow.testing.Graph`: what a sequential run over the
pulled items gives (outputs, failures and their reasons, retries), given the batches the batch
stages formed, and the checks only the model can make (batch sizes and keys, ``partition_by``
order and exclusivity, what every sink received)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, cast, final

import attrs

from .._retry import Retry
from ._check import Expected, InvariantViolation
from ._graph import (
    BatchSpec,
    FilterSpec,
    FlatMapSpec,
    Graph,
    Ident,
    PlannedFailure,
    ProcessSpec,
    RouteSpec,
    Spec,
    Token,
    fault_times,
    ident_of,
)

__all__ = ["GraphModel", "ReasonIs"]


@final
class ReasonIs:
    """Matches the :class:`PlannedFailure` of stage ``sid`` for ``ident`` (or a ``KeyError``)."""

    def __init__(self, sid: int, ident: Ident | None) -> None:
        self.sid = sid
        self.ident = ident

    def __call__(self, reason: Any) -> bool:
        if self.ident is None:
            return isinstance(reason, KeyError)
        return (
            isinstance(reason, PlannedFailure)
            and reason.sid == self.sid
            and reason.ident == self.ident
        )

    def __repr__(self) -> str:
        if self.ident is None:
            return f"KeyError from route #{self.sid}"
        return f"PlannedFailure(#{self.sid}, {self.ident!r})"


class GraphModel:
    """A sequential run of a :class:`Graph` over what was pulled, given the batches formed."""

    def __init__(self, graph: Graph, pulled: list[Any]) -> None:
        self.graph = graph
        self.trace = graph.trace
        self.faults = graph.faults
        self.pulled = pulled
        self.reasons: dict[int, list[ReasonIs]] = defaultdict(list)
        # a token's failure fails these source items: its own, and after an un-batching flat_map
        # those of the whole batch (the batch is the children's parent)
        self.fate: dict[Ident, frozenset[int]] = {}
        self.retried = 0
        self.saved: dict[int, list[Any]] = defaultdict(list)
        self.sink_order: dict[int, bool] = {}

    def violation(self, invariant: str, detail: str) -> InvariantViolation:
        return InvariantViolation(f"{invariant}: {detail}\n  graph: {self.graph!r}")

    def fate_of(self, t: Token) -> frozenset[int]:
        return self.fate.get(t.ident) or frozenset((t.src,))

    def fail(self, x: Any, reason: ReasonIs) -> None:
        srcs: set[int] = set()
        for t in cast("list[Token]", x) if isinstance(x, list) else [x]:
            srcs |= self.fate_of(t)
        for src in srcs:
            self.reasons[src].append(reason)

    def expected(self) -> Expected:
        if self.trace.violations:
            raise self.violation("invariant 2 (partition_by)", self.trace.violations[0])
        by_src = {t.src: t for t in self.pulled}
        ordered = self.graph.merge == 1
        outputs, in_order = self.chain(self.graph.chain, list(self.pulled), ordered)
        for sid, expect in self.saved.items():
            got = self.trace.saved.get(sid, [])
            diff = _diff(expect, got)
            if diff:
                raise self.violation("invariant 2 (sink inputs)", f"sink #{sid}: {diff}")
            if self.sink_order.get(sid) and got != sorted(got, key=_order_key):
                raise self.violation(
                    "invariant 2 (order)", f"sink #{sid} saw {got!r}, out of input order"
                )
        unsaved = set(self.trace.saved) - set(self.saved)
        if unsaved:
            raise self.violation(
                "invariant 2 (sink inputs)", f"sinks {unsaved} got unexpected items"
            )
        failed = {by_src[s]: tuple(r) for s, r in self.reasons.items()}
        acked = [t for t in self.pulled if t.src not in self.reasons]
        if in_order:
            outputs.sort(key=_order_key)
        return Expected(
            outputs=outputs, ordered=in_order, acked=acked, failed=failed, retried=self.retried
        )

    def attempts_ok(self, sid: int, x: Any, retry: Retry | None, role: str = "call") -> bool:
        """Whether the call succeeds (counting retries); on failure, record the reason."""
        found, times = fault_times(self.faults, sid, x)
        if not found:
            return True
        attempts = retry.attempts if retry is not None and role == "call" else 1
        if role == "call" and times is not None and times < attempts:
            self.retried += times
            return True
        if role == "call":
            self.retried += attempts - 1
        self.fail(x, ReasonIs(sid, ident_of(x)))
        return False

    def chain(
        self, chain: tuple[Spec, ...], xs: list[Any], in_order: bool
    ) -> tuple[list[Any], bool]:
        for i, s in enumerate(chain):
            if isinstance(s, ProcessSpec):
                if s.key_sid is not None:
                    kept: list[Any] = []
                    for x in xs:
                        if self.attempts_ok(s.key_sid, x, None, "key"):
                            kept.append(x)
                    xs = kept
                    if s.n > 1 and in_order:
                        self.check_partition_order(s)
                out: list[Any] = []
                for x in xs:
                    if self.attempts_ok(s.sid, x, s.retry):
                        out.append(_bump(x, s.delta))
                if s.sink:
                    self.saved[s.sid].extend(out)
                    self.sink_order[s.sid] = in_order and s.n == 1
                    return [], False
                xs = out
                if s.n > 1 and not s.ordered:
                    in_order = False
            elif isinstance(s, FilterSpec):
                out = []
                for x in xs:
                    if self.attempts_ok(s.sid, x, None, "pred"):
                        v = len(cast("list[Token]", x)) if isinstance(x, list) else x.value
                        if v % s.mod != s.rem:
                            out.append(x)
                xs = out
            elif isinstance(s, FlatMapSpec):
                out = []
                for x in xs:
                    if self.attempts_ok(s.sid, x, None, "fn"):
                        if s.kind == "list":
                            shared = frozenset[int]().union(*(self.fate_of(t) for t in x))
                            for t in x:
                                self.fate[t.ident] = shared
                            out.extend(x)
                        else:
                            for j in range(x.value % (s.fanout + 1)):
                                child = Token(x.src, (*x.path, j), x.value + j)
                                self.fate[child.ident] = self.fate_of(x)
                                out.append(child)
                xs = out
            elif isinstance(s, BatchSpec):
                if s.key_mod is not None:
                    xs = [x for x in xs if self.attempts_ok(s.sid, x, None, "key")]
                    in_order = False
                xs = self.batches(s, chain[i + 1], xs)
            elif isinstance(s, RouteSpec):
                in_order = False
                parts: dict[int, list[Any]] = defaultdict(list)
                keys = {k for k, _ in s.branches}
                for x in xs:
                    if not self.attempts_ok(s.sid, x, None, "key"):
                        continue
                    k = x.value % s.mod
                    if k not in keys:
                        self.fail(x, ReasonIs(s.sid, None))
                        continue
                    parts[k].append(x)
                out = []
                for k, sub in s.branches:
                    got, _ = self.chain(sub, parts.get(k, []), False)
                    out.extend(got)
                xs = out
        return xs, in_order

    def batches(self, s: BatchSpec, observer: Any, xs: list[Any]) -> list[Any]:
        seen = [b for b, _ in self.trace.calls.get(observer.sid, [])]
        for b in seen:
            batch = cast("list[Token]", b) if isinstance(b, list) else None
            if batch is None or not 0 < len(batch) <= s.size:
                raise self.violation(
                    "invariant 6 (batch size)", f"batch #{s.sid} (size={s.size}) emitted {b!r}"
                )
            if s.key_mod is not None and len({t.value % s.key_mod for t in batch}) > 1:
                raise self.violation(
                    "invariant 6 (batch keys)",
                    f"batch #{s.sid} (key=mod{s.key_mod}) mixed keys in {b!r}",
                )
        diff = _diff(xs, [t for b in seen for t in b])
        if diff:
            raise self.violation(
                "invariant 1 (batch contents)", f"batch #{s.sid}: items in vs batched out: {diff}"
            )
        return list(seen)

    def check_partition_order(self, s: ProcessSpec) -> None:
        per_key: dict[int, list[Token]] = defaultdict(list)
        for x, _ in self.trace.calls.get(s.sid, []):
            per_key[x.value % s.key_mod].append(x)
        for key, seq in per_key.items():
            if seq != sorted(seq, key=_order_key):
                raise self.violation(
                    "invariant 2 (partition_by order)",
                    f"stage #{s.sid} called key {key} out of input order: {seq!r}",
                )


def _bump(x: Any, delta: int) -> Any:
    if isinstance(x, list):
        return [attrs.evolve(t, value=t.value + delta) for t in cast("list[Token]", x)]
    return attrs.evolve(x, value=x.value + delta)


def _order_key(x: Any) -> Any:
    return (
        ident_of(x[0])
        if isinstance(x, list) and x
        else ident_of(x)
        if not isinstance(x, list)
        else ()
    )


def _diff(expected: list[Any], actual: list[Any]) -> str:
    def h(v: Any) -> Any:
        return tuple(cast("list[object]", v)) if isinstance(v, list) else v

    e, a = Counter(map(h, expected)), Counter(map(h, actual))
    missing, extra = e - a, a - e
    if not missing and not extra:
        return ""
    return f"missing {list(missing.elements())[:8]!r}, unexpected {list(extra.elements())[:8]!r}"
