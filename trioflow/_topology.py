"""The compiled graph of a pipeline: pure data, checked before any task starts.

Nodes are numbered; each has the index of the node its outputs go to (``TERMINAL`` when they
leave the pipeline: acked, and collected by ``collect``). A route node also maps each key to the
entry node of its branch; a branch's last node leads to the route's own next node, unless it is a
sink. The runner turns each node into an input queue and worker tasks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, final

import attrs

from ._exceptions import InvalidPipeline
from ._pipeline import Pipeline
from ._sources import Source
from ._stages import Batch, FlatMap, Process, RateLimit, Route, Stage

__all__ = ["TERMINAL", "Node", "Topology", "compile_pipeline"]

TERMINAL = -1


@final
@attrs.frozen
class Node:
    """One stage in the graph."""

    stage: Stage[Any, Any]
    label: str
    buffer: int
    next: int
    branches: tuple[tuple[Any, int], ...] = ()


@final
@attrs.frozen
class Topology:
    """Sources, the entry node they feed, and every node."""

    sources: tuple[Source[Any], ...]
    source_label: str
    entry: int
    nodes: tuple[Node, ...]

    def in_flight_bound(self) -> int | None:
        """Most source messages that can be pulled and not yet settled at once (see docs).

        ``None`` when it depends on the data: a ``flat_map`` (children per parent) or a keyed
        ``batch`` (one open batch per key).
        """
        return _bound(self, self.entry, 1)


def compile_pipeline(pipeline: Pipeline, *, ack_buffer: int) -> Topology:
    """Check ``pipeline`` can run and lay out its graph."""
    stages = pipeline.stages
    if not stages or not isinstance(stages[0], Source):
        what = repr(pipeline) if stages else "an empty pipeline"
        raise InvalidPipeline(
            f"{what} has no source: put a source first (from_iterable(...), from_aiter(...), "
            "an async generator function, or merge(...))"
        )
    source = stages[0]
    nodes: list[Node | None] = []
    entry = _chain(stages[1:], TERMINAL, nodes)
    built = [n for n in nodes if n is not None]
    if len(built) != len(nodes):  # pragma: no cover - _chain fills every slot
        raise AssertionError("unfilled node")
    return Topology(source.parts(), source.label, entry, tuple(_unique_labels(built)))


def _chain(stages: tuple[Stage[Any, Any], ...], after: int, nodes: list[Node | None]) -> int:
    nxt = after
    for stage in reversed(stages):
        idx = len(nodes)
        nodes.append(None)
        if isinstance(stage, Route):
            branches = tuple((key, _chain(b.stages, nxt, nodes)) for key, b in stage.branches)
            nodes[idx] = Node(stage, stage.label, stage.input_buffer(), nxt, branches)
        else:
            terminal = isinstance(stage, Process) and stage.terminal
            nodes[idx] = Node(
                stage, stage.label, stage.input_buffer(), TERMINAL if terminal else nxt
            )
        nxt = idx
    return nxt


def _unique_labels(nodes: list[Node]) -> list[Node]:
    seen: Counter[str] = Counter(n.label for n in nodes)
    count: Counter[str] = Counter()
    out = []
    for n in reversed(nodes):  # creation order was last-to-first
        if seen[n.label] > 1:
            count[n.label] += 1
            n = attrs.evolve(n, label=f"{n.label}#{count[n.label]}")
        out.append(n)
    out.reverse()
    return out


def _bound(topology: Topology, idx: int, weight: int) -> int | None:
    """Bound on source messages held from node ``idx`` on, when each item weighs ``weight``."""
    if idx == TERMINAL:
        return 0
    node = topology.nodes[idx]
    stage = node.stage
    if isinstance(stage, FlatMap):
        return None
    if isinstance(stage, Batch):
        if stage.key is not None:
            return None
        held = node.buffer * weight + stage.size * weight
        rest = _bound(topology, node.next, weight * stage.size)
        return None if rest is None else held + rest
    if isinstance(stage, Route):
        total = node.buffer * weight + weight
        for _, entry in node.branches:
            b = _bound(topology, entry, weight)
            if b is None:
                return None
            total += b
        rest = _bound(topology, node.next, weight)
        return None if rest is None else total + rest
    workers = stage.n if isinstance(stage, Process) else 1
    if isinstance(stage, Process) and stage.partition_by is not None:
        # dispatcher holds a chunk; each worker has a queue of buffer // n and holds a chunk
        held = node.buffer + 2 * max(node.buffer, workers) + node.buffer
    elif isinstance(stage, RateLimit | Process):
        held = node.buffer + max(node.buffer, workers)
    else:
        held = 2 * node.buffer
    rest = _bound(topology, node.next, weight)
    return None if rest is None else held * weight + rest
