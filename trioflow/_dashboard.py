"""The live dashboard: one static page and a WebSocket feed of snapshots, served by trioflow.

``/`` is the page (the stage graph, with each stage's rate, in-flight, failures and latency),
``/ws`` the feed (trio-websocket: a ``graph`` message, then a ``snapshot`` message every
``interval`` seconds), ``/metrics.json`` one snapshot. It has no authentication, so it binds
loopback addresses unless told ``allow_remote=True``, answers only for the ``Host`` names it
knows, and its feed only pages of its own origin (see ``_http.Access``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio

from ._http import HEAD_TIMEOUT, MAX_CONNECTIONS, SEND_TIMEOUT, Access, check_loopback, serve_http

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
    allow_remote: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] = (),
    max_connections: int = MAX_CONNECTIONS,
    head_timeout: float = HEAD_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the live dashboard of ``handle`` on ``http://host:port/`` until cancelled.

    ``task_status`` gets the bound port (``port=0``: any free one). Needs ``trio-websocket``
    (``pip install 'trioflow[dashboard]'``). Each open page costs one snapshot every
    ``interval`` seconds; a page that does not take a snapshot within 10 seconds is closed
    rather than slowing the pipeline.

    The dashboard has no authentication. ``host`` must be a loopback address unless
    ``allow_remote=True``. Requests must name the server in ``Host``: ``localhost``, a
    loopback address, ``host``, or one of ``allowed_hosts`` (``"name"`` or ``"name:port"``;
    ``"*"``: any); with ``allow_remote=True`` and no ``allowed_hosts``, any ``Host``. Others get
    421. The ``/ws`` feed accepts pages of the same origin only (or without ``Origin``), plus
    ``allowed_origins`` (``"https://host:port"``); others get 403. At most
    ``max_connections`` connections are served at once (open pages included; the excess gets
    503), and a client has ``head_timeout`` seconds to send its request.

    Raises:
        ValueError: ``host`` is not a loopback address and ``allow_remote`` is false, or an
            option is out of range.
        ImportError: trio-websocket is not installed.

    Examples:
        >>> async with trio.open_nursery() as nursery:
        ...     handle = await nursery.start(pipeline.serve)
        ...     await nursery.start(serve_dashboard, handle)
    """
    if not allow_remote:
        check_loopback(host, "the dashboard", hint="pass allow_remote=True to serve on it anyway")
    access = Access.build(
        host,
        allow_remote=allow_remote,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
    )
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
        # a page that stops reading fills its socket; it is dropped rather than held forever
        with trio.fail_after(SEND_TIMEOUT):
            await ws.send_message(json.dumps({"type": "graph", "graph": graph}))
        while True:
            message = {"type": "snapshot", "snapshot": handle.snapshot()}
            with trio.fail_after(SEND_TIMEOUT):
                await ws.send_message(json.dumps(message))
            await trio.sleep(interval)

    routes = {
        "/": lambda: ("text/html; charset=utf-8", page),
        "/metrics.json": lambda: ("application/json", json.dumps(handle.snapshot()).encode()),
        "/graph.json": lambda: ("application/json", json.dumps(graph).encode()),
    }
    await serve_http(
        routes,
        host=host,
        port=port,
        access=access,
        websocket=feed,
        max_connections=max_connections,
        head_timeout=head_timeout,
        task_status=task_status,
    )
