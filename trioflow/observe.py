"""Observability: metrics exposition, the live dashboard, and the stage graph.

Every run keeps its figures (see docs/observability.md); this module serves and draws them.

* :func:`serve_metrics`: ``/metrics`` (Prometheus, needs ``trioflow[prometheus]``) and
  ``/metrics.json`` (the snapshot of :meth:`~trioflow.PipelineHandle.snapshot`) on a port.
* :func:`prometheus_collector`, :func:`prometheus_text`: the same figures for your own registry.
* :func:`serve_dashboard`: the live web page (needs ``trioflow[dashboard]``), loopback only.
* :func:`graph`: the stage graph, as data, text (:meth:`Graph.text`) or Mermaid
  (:meth:`Graph.mermaid`).
* :class:`OpenTelemetry`: an instrument tracing each message through each stage (needs
  ``trioflow[otel]``; see docs/tracing.md).

Examples:
    >>> from trioflow.observe import serve_dashboard, serve_metrics
    >>> async with trio.open_nursery() as nursery:
    ...     handle = await nursery.start(pipeline.serve)
    ...     await nursery.start(serve_metrics, handle)
    ...     await nursery.start(serve_dashboard, handle)
"""

from ._dashboard import serve_dashboard as serve_dashboard
from ._graph import Graph as Graph
from ._graph import GraphEdge as GraphEdge
from ._graph import GraphNode as GraphNode
from ._graph import graph as graph
from ._metrics import SNAPSHOT_VERSION as SNAPSHOT_VERSION
from ._prometheus import prometheus_collector as prometheus_collector
from ._prometheus import prometheus_text as prometheus_text
from ._prometheus import serve_metrics as serve_metrics
from ._tracing import OpenTelemetry as OpenTelemetry

__all__ = [
    "SNAPSHOT_VERSION",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "OpenTelemetry",
    "graph",
    "prometheus_collector",
    "prometheus_text",
    "serve_dashboard",
    "serve_metrics",
]
