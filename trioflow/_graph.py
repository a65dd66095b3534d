"""The stage graph of a pipeline as data, as text, and as a Mermaid flowchart.

``trioflow graph`` prints it; the dashboard draws it. Node ids are stable for one pipeline:
``source``, ``s0``, ``s1``, ... in pipeline order (a route's branches after the route), and
``out`` where items leave a pipeline that does not end in a sink.
"""

from __future__ import annotations

from typing import Any, final

import attrs

from ._pipeline import Pipeline
from ._stages import BatchStage, Filter, FlatMap, Process, RateLimit, Route, Stage, Unbatch
from ._topology import TERMINAL, Topology, compile_pipeline

__all__ = [
    "Graph",
    "GraphEdge",
    "GraphNode",
    "graph",
    "graph_of",
    "stage_kind",
    "stage_order",
]


def stage_kind(stage: Stage[Any, Any]) -> str:
    """``process``, ``sink``, ``batch``, ``filter``, ``flat_map``, ``rate_limit``, ``route`` or
    ``unbatch``."""
    if isinstance(stage, Process):
        return "sink" if stage.terminal else "process"
    for cls, kind in (
        (BatchStage, "batch"),
        (Filter, "filter"),
        (FlatMap, "flat_map"),
        (RateLimit, "rate_limit"),
        (Route, "route"),
        (Unbatch, "unbatch"),
    ):
        if isinstance(stage, cls):
            return kind
    return type(stage).__name__.lower()  # pragma: no cover - every stage kind is listed


@final
@attrs.frozen
class GraphNode:
    """One box: the source, a stage, or ``out``."""

    id: str
    label: str
    kind: str
    expr: str = ""
    workers: int = 1
    buffer: int = 0
    #: for a route: where its branches rejoin ("" when every branch ends in a sink)
    join: str = ""


@final
@attrs.frozen
class GraphEdge:
    """Items flow from ``source`` to ``target`` (``label``: the route key, if any)."""

    source: str
    target: str
    label: str = ""


@final
@attrs.frozen
class Graph:
    """The stage graph: nodes in pipeline order and the edges between them.

    Examples:
        >>> print(graph(from_iterable(range(3)) | process(double) | sink(save)).text())
        from_iterable(range(0, 3))
          -> double  process(double)  [process, n=1, buffer=...]
          -> save  sink(save)  [sink, n=1, buffer=...]
    """

    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: ``{"nodes": [...], "edges": [...]}``."""
        return attrs.asdict(self)

    def text(self) -> str:
        """An indented outline, one stage a line, route branches under their route."""
        by_id = {n.id: n for n in self.nodes}
        succ = {e.source: e.target for e in self.edges if not e.label}
        branches: dict[str, list[GraphEdge]] = {}
        for e in self.edges:
            if e.label:
                branches.setdefault(e.source, []).append(e)
        lines = [by_id["source"].expr or by_id["source"].label]

        def line(indent: str, node: GraphNode) -> None:
            if node.id == "out":
                lines.append(f"{indent}-> out  (no sink: outputs are collected or dropped)")
                return
            opts = [node.kind]
            if node.kind in ("process", "sink"):
                opts.append(f"n={node.workers}")
            opts.append(f"buffer={node.buffer}")
            expr = f"  {node.expr}" if node.expr != node.label else ""
            lines.append(f"{indent}-> {node.label}{expr}  [{', '.join(opts)}]")

        def walk(nid: str, indent: str, stop: str) -> None:
            while True:
                nxt: str | None
                if nid in branches:
                    for e in branches[nid]:
                        lines.append(f"{indent}    [{e.label}]")
                        if e.target != stop:
                            line(indent + "      ", by_id[e.target])
                            walk(e.target, indent + "      ", by_id[nid].join)
                    nxt = by_id[nid].join or None
                else:
                    nxt = succ.get(nid)
                if nxt is None or nxt == stop:
                    return
                line(indent, by_id[nxt])
                nid = nxt

        walk("source", "  ", "")
        return "\n".join(lines)

    def mermaid(self) -> str:
        """A Mermaid ``flowchart LR`` (paste it into a Markdown ``mermaid`` block)."""
        lines = ["flowchart LR"]
        for n in self.nodes:
            text = _mermaid_text(n.label)
            sub = "" if n.kind in ("source", "out") else f"<br/><small>{_mermaid_text(n.kind)}"
            if n.kind in ("process", "sink") and n.workers > 1:
                sub += f" x{n.workers}"
            if sub:
                sub += "</small>"
            if n.kind in ("source", "out"):
                lines.append(f'    {n.id}(["{text}"])')
            elif n.kind == "route":
                lines.append(f'    {n.id}{{"{text}{sub}"}}')
            else:
                lines.append(f'    {n.id}["{text}{sub}"]')
        for e in self.edges:
            if e.label:
                lines.append(f'    {e.source} -- "{_mermaid_text(e.label)}" --> {e.target}')
            else:
                lines.append(f"    {e.source} --> {e.target}")
        return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    # Mermaid's entity codes: #NN; (a plain "<" or '"' would end or break the label)
    return "".join(f"#{ord(c)};" if c in '&"<>#;' else c for c in text)


def graph(pipeline: Pipeline) -> Graph:
    """The stage graph of ``pipeline`` (checked as ``run`` would check it).

    Raises:
        InvalidPipeline: the pipeline cannot run (no source, say).

    Examples:
        >>> print(graph(pipeline).mermaid())
    """
    return graph_of(compile_pipeline(pipeline, ack_buffer=0))


def stage_order(topology: Topology) -> list[int]:
    """Topology node indices in pipeline order (a route's branches right after it)."""
    order: list[int] = []

    def visit(idx: int) -> None:
        while idx != TERMINAL and idx not in order:
            order.append(idx)
            node = topology.nodes[idx]
            if isinstance(node.stage, Route):
                for _, entry in node.branches:
                    visit(entry)
            idx = node.next

    visit(topology.entry)
    return order


def graph_of(topology: Topology) -> Graph:
    """The graph of a compiled pipeline: the i-th stage of :func:`stage_order` has id ``s{i}``."""
    order = stage_order(topology)
    ids = {idx: f"s{i}" for i, idx in enumerate(order)}
    ids[TERMINAL] = "out"
    nodes = [
        GraphNode("source", topology.source_label, "source", _source_expr(topology), 1, 0),
    ]
    edges = [GraphEdge("source", ids[topology.entry])]
    has_out = topology.entry == TERMINAL
    for idx in order:
        node = topology.nodes[idx]
        stage = node.stage
        workers = stage.max_n if isinstance(stage, Process) else 1
        join = ""
        if isinstance(stage, Route) and not _all_branches_terminal(topology, idx):
            join = ids[node.next]
        nodes.append(
            GraphNode(
                ids[idx], node.label, stage_kind(stage), repr(stage), workers, node.buffer, join
            )
        )
        if isinstance(stage, Process) and stage.terminal:
            continue
        if node.branches:
            # items leave a route only into a branch; a branch's last stage leads on
            edges.extend(GraphEdge(ids[idx], ids[entry], str(key)) for key, entry in node.branches)
            continue
        edges.append(GraphEdge(ids[idx], ids[node.next]))
        has_out = has_out or node.next == TERMINAL
    if has_out:
        nodes.append(GraphNode("out", "out", "out"))
    return Graph(tuple(nodes), tuple(edges))


def _all_branches_terminal(topology: Topology, idx: int) -> bool:
    """Whether every branch of route ``idx`` ends in a sink (nothing continues after it)."""
    node = topology.nodes[idx]
    for _, entry in node.branches:
        i = entry
        while i != TERMINAL and i != node.next:
            n = topology.nodes[i]
            if isinstance(n.stage, Process) and n.stage.terminal:
                break
            i = n.next
        else:
            return False
    return True


def _source_expr(topology: Topology) -> str:
    parts = topology.sources
    if len(parts) == 1:
        return repr(parts[0])
    return f"merge({', '.join(repr(p) for p in parts)})"
