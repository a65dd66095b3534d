"""The live dashboard: one static page and a WebSocket feed of snapshots, served by trioflow.

``/`` is the page (the stage graph, with each stage's rate, in-flight, failures and latency),
``/ws`` the feed (trio-websocket: a ``graph`` message, then a ``snapshot`` message every
``interval`` seconds), ``/metrics.json`` one snapshot. It binds loopback addresses only: it has
no authentication.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio

from ._http import check_loopback, serve_http

if TYPE_CHECKING:
    from ._runner import PipelineHandle

__all__ = ["serve_dashboard"]


def _page() -> bytes:
    return resources.files("trioflow").joinpath("_dashboard.html").read_bytes()


async def serve_dashboard(
    handle: PipelineHandle,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    interval: float = 0.5,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the live dashboard of ``handle`` on ``http://host:port/`` until cancelled.

    ``task_status`` gets the bound port (``port=0``: any free one). Needs ``trio-websocket``
    (``pip install 'trioflow[dashboard]'``). Each open page costs one snapshot every
    ``interval`` seconds; a page that cannot keep up is closed by trio-websocket's bounded
    buffers rather than slowing the pipeline.

    Raises:
        ValueError: ``host`` is not a loopback address.
        ImportError: trio-websocket is not installed.

    Examples:
        >>> async with trio.open_nursery() as nursery:
        ...     handle = await nursery.start(pipeline.serve)
        ...     await nursery.start(serve_dashboard, handle)
    """
    check_loopback(host, "the dashboard")
    if not interval > 0:
        raise ValueError(f"interval={interval!r} must be a positive number of seconds")
    try:
        import trio_websocket  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the dashboard needs 'trio-websocket': install it with pip install "
            "'trioflow[dashboard]'"
        ) from exc
    page = _page()
    graph = handle.graph.as_dict()

    async def feed(ws: Any) -> None:
        await ws.send_message(json.dumps({"type": "graph", "graph": graph}))
        while True:
            message = {"type": "snapshot", "snapshot": handle.snapshot()}
            await ws.send_message(json.dumps(message))
            await trio.sleep(interval)

    routes = {
        "/": lambda: ("text/html; charset=utf-8", page),
        "/metrics.json": lambda: ("application/json", json.dumps(handle.snapshot()).encode()),
        "/graph.json": lambda: ("application/json", json.dumps(graph).encode()),
    }
    await serve_http(routes, host=host, port=port, websocket=feed, task_status=task_status)
