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
from ._stages import BatchStage, FlatMap, Process, Route, Stage, Unbatch

__all__ = ["TERMINAL", "TERMINAL_DEMAND", "Node", "Topology", "compile_pipeline"]

TERMINAL = -1
#: what the end of a pipeline lets a source hand over at once (a source-only pipeline)
TERMINAL_DEMAND = 1024


@final
@attrs.frozen
class Node:
    """One stage in the graph."""

    stage: Stage[Any, Any]
    label: str
    buffer: int
    next: int
    branches: tuple[tuple[Any, int], ...] = ()
    #: the key of the innermost route branch the stage is in (None: not in a branch)
    branch: Any = None


@final
@attrs.frozen
class Topology:
    """Sources, the entry node they feed, and every node."""

    sources: tuple[Source[Any], ...]
    source_label: str
    entry: int
    nodes: tuple[Node, ...]

    #: settled messages that may wait for their acknowledger (the runner's ``ack_buffer``)
    ack_buffer: int = 0
    #: whether failed messages go through an ``on_failure`` handler first
    has_failure_handler: bool = False

    def in_flight_bound(self) -> int | None:
        """Most source messages that can be pulled and not yet acked at once (see docs).

        The sum of:

        * each source task: what it pulled and cannot hand over yet, at most the first stage's
          buffer (a well-behaved single source pulls only what ``demand()`` allows);
        * each stage, in items times the messages an item holds (``size`` after a ``batch``):
          its input ``buffer``, plus what its workers hold, a chunk each: ``max(buffer, n)`` for
          ``process`` (twice, and the dispatcher's chunk, with ``partition_by``), ``buffer`` for
          ``filter``, ``rate_limit`` and ``route``, ``buffer + size - 1`` for ``batch``
          (a chunk and the open batch);
        * settled messages waiting for their acknowledger: ``2 * ack_buffer`` (queued, and in the
          ``ack`` call), ``4 * ack_buffer`` with an ``on_failure`` handler (queued for it and in
          its call too). A worker that overfills the ack buffer blocks, so its chunk is counted
          in its stage.

        ``None`` when it depends on the data: a ``flat_map`` (children per parent) or a keyed
        ``batch`` (one open batch per key).
        """
        stages = _bound(self, self.entry, TERMINAL, 1)
        if stages is None:
            return None
        held, _ = stages
        first = TERMINAL_DEMAND if self.entry == TERMINAL else self.nodes[self.entry].buffer
        settled = (4 if self.has_failure_handler else 2) * self.ack_buffer
        return len(self.sources) * first + held + settled


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
    return Topology(
        source.parts(),
        source.label,
        entry,
        tuple(_unique_labels(built)),
        ack_buffer,
        pipeline.failure_handler is not None,
    )


def _chain(
    stages: tuple[Stage[Any, Any], ...],
    after: int,
    nodes: list[Node | None],
    weight: int = 1,
    branch: Any = None,
) -> int:
    """Lay out ``stages`` (whose first input items weigh ``weight`` messages) before ``after``."""
    weights: list[int] = []
    for stage in stages:
        weights.append(weight)
        weight = _weight_after(stage, weight)
    nxt = after
    for stage, w in zip(reversed(stages), reversed(weights), strict=True):
        idx = len(nodes)
        nodes.append(None)
        buffer = stage.input_buffer(w)
        if isinstance(stage, Route):
            branches = tuple(
                (key, _chain(b.stages, nxt, nodes, w, key)) for key, b in stage.branches
            )
            nodes[idx] = Node(stage, stage.label, buffer, nxt, branches, branch)
        else:
            terminal = isinstance(stage, Process) and stage.terminal
            nodes[idx] = Node(stage, stage.label, buffer, TERMINAL if terminal else nxt, (), branch)
        nxt = idx
    return nxt


def _weight_after(stage: Stage[Any, Any], weight: int) -> int:
    """Messages an item weighs after ``stage`` when it weighs ``weight`` before: a batch
    multiplies by its size; after a route, the heaviest branch that goes on counts."""
    if isinstance(stage, BatchStage):
        return weight * stage.size
    if isinstance(stage, Unbatch):
        return 1  # back to one message per item (batches of batches are not tracked)
    if isinstance(stage, Route):
        out = weight
        for _, branch in stage.branches:
            w = weight
            for inner in branch.stages:
                w = _weight_after(inner, w)
            out = max(out, w)
        return out
    return weight


def _unique_labels(nodes: list[Node]) -> list[Node]:
    seen: Counter[str] = Counter(n.label for n in nodes)
    count: Counter[str] = Counter()
    out: list[Node] = []
    for n in reversed(nodes):  # creation order was last-to-first
        if seen[n.label] > 1:
            count[n.label] += 1
            n = attrs.evolve(n, label=f"{n.label}#{count[n.label]}")
        out.append(n)
    out.reverse()
    return out


def _bound(topology: Topology, idx: int, stop: int, weight: int) -> tuple[int, int] | None:
    """Source messages held from node ``idx`` up to ``stop``, items weighing ``weight`` at
    ``idx``; and the weight of the items that reach ``stop``."""
    total = 0
    while idx not in (stop, TERMINAL):
        node = topology.nodes[idx]
        stage = node.stage
        buf = node.buffer
        if isinstance(stage, FlatMap):
            return None
        if isinstance(stage, BatchStage):
            if stage.key is not None:
                return None
            total += (2 * buf + stage.size - 1) * weight
            weight *= stage.size
        elif isinstance(stage, Route):
            total += 2 * buf * weight
            out_weight = weight
            for _, entry in node.branches:
                branch = _bound(topology, entry, node.next, weight)
                if branch is None:
                    return None
                total += branch[0]
                out_weight = max(out_weight, branch[1])
            weight = out_weight
        elif isinstance(stage, Process) and stage.partition_by is not None:
            # dispatcher chunk, per-worker queues of buffer // n, and a chunk per worker
            total += (2 * buf + 2 * max(buf, stage.max_n)) * weight
        elif isinstance(stage, Process):
            total += (buf + max(buf, stage.max_n)) * weight
        elif isinstance(stage, Unbatch):
            total += 2 * buf * weight  # its buffer and its chunk, of batches
            weight = 1
        else:  # filter, rate_limit: one task holding a chunk
            total += 2 * buf * weight
        idx = node.next
    return total, weight
