"""The live dashboard: one page, a WebSocket feed of snapshots, and controls, served by trioflow.

``/`` is the page (the pipeline's name, the stage graph with each stage's rate, in-flight,
failures, latency, concurrency limit and breaker state, charts of the last minutes, and
controls), ``/ws`` the feed (trio-websocket: a ``graph`` message, an ``info`` message with the
history kept so far, then a ``snapshot`` message every ``interval`` seconds), ``/metrics.json``
one snapshot.

Controls are ``POST`` requests: ``/api/pause``, ``/api/resume``, ``/api/resize`` (JSON
``{"stage": name, "n": workers}``) and ``/api/rate`` (JSON ``{"stage": name, "count": n,
"per": seconds}``). The dashboard has no user accounts, so what may steer the pipeline is
guarded against other web pages (cross-site request forgery, DNS rebinding):

* it binds loopback addresses unless told ``allow_remote=True`` and answers only for the
  ``Host`` names it knows (see ``_http.Access``);
* each control request must carry the run's token in ``X-Trioflow-Token``: a random value made
  when the server starts, written into the page it serves (a page of another origin cannot read
  it) and nowhere else;
* a request whose ``Origin`` is another origin, or whose ``Sec-Fetch-Site`` says
  ``cross-site``/``same-site``, is refused (403) whatever it carries; a request body must be
  ``application/json`` (which a cross-site form cannot send).
"""

from __future__ import annotations

import hmac
import html
import importlib
import json
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import trio

from ._http import (
    HEAD_TIMEOUT,
    MAX_CONNECTIONS,
    SEND_TIMEOUT,
    Access,
    Request,
    check_loopback,
    serve_http,
)
from ._report import Histogram

if TYPE_CHECKING:
    from ._runner import PipelineHandle

__all__ = ["serve_dashboard"]

#: the header a control request carries the run's token in
TOKEN_HEADER = "x-trioflow-token"
_JSON = "application/json"


def _page(token: str, pipeline: str) -> bytes:
    template = resources.files("trioflow").joinpath("_dashboard.html").read_text("utf-8")
    return (
        template.replace("__TRIOFLOW_TOKEN__", html.escape(token))
        .replace("__TRIOFLOW_PIPELINE__", html.escape(pipeline or "pipeline"))
        .encode()
    )


def _window_quantile(before: dict[int, int], now: dict[int, int], q: float) -> float:
    """Quantile ``q`` of the samples a latency histogram gained between two copies of it."""
    gained = Histogram()
    for bucket, count in now.items():
        extra = count - before.get(bucket, 0)
        if extra > 0:
            gained.buckets[bucket] = extra
            gained.count += extra
    return gained.quantile(q)


class _History:
    """One point every ``step`` seconds for the last ``keep`` seconds: messages settled per
    second, end-to-end p99 over the step, messages in flight."""

    def __init__(self, handle: PipelineHandle, step: float, keep: float) -> None:
        self.handle = handle
        self.step = step
        self.points: deque[dict[str, float]] = deque(maxlen=max(2, int(keep / step) + 1))

    async def run(self) -> None:
        run = self.handle._run  # pyright: ignore[reportPrivateUsage] - the run's own counters
        settler, latency = run.settler, run.meter.latency
        settled = settler.acked + settler.failed
        buckets = dict(latency.buckets)
        before = trio.current_time()
        while True:
            await trio.sleep(self.step)
            now = trio.current_time()
            settled_now = settler.acked + settler.failed
            buckets_now = dict(latency.buckets)
            self.points.append(
                {
                    "t": run.elapsed(),
                    "throughput": (settled_now - settled) / max(now - before, 1e-9),
                    "p99": _window_quantile(buckets, buckets_now, 0.99),
                    "in_flight": float(settler.received - settled_now),
                }
            )
            settled, buckets, before = settled_now, buckets_now, now

    def since(self, t: float) -> list[dict[str, float]]:
        return [p for p in self.points if p["t"] > t]


def _live(handle: PipelineHandle) -> dict[str, Any]:
    """What the controls need besides the snapshot: paused, and each rate_limit's setting."""
    rates: dict[str, dict[str, float]] = {}
    for ctx in handle._run.contexts:  # pyright: ignore[reportPrivateUsage]
        control = ctx.control
        if getattr(control, "per", None):
            rates[ctx.label] = {"count": control.count, "per": control.per}
    return {"paused": handle.paused, "rates": rates}


def _reply(status: int, data: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, _JSON, json.dumps(data).encode()


def _controls(
    handle: PipelineHandle, access: Access, token: str
) -> dict[str, Callable[[Request], tuple[int, str, bytes]]]:
    """The POST actions, each behind the guard (token, Origin, Sec-Fetch-Site, JSON body)."""

    def refused(request: Request) -> tuple[int, str, bytes] | None:
        origin = request.headers.get("origin")
        if origin is not None and not access.origin_allowed(origin, request.headers["host"]):
            return _reply(403, {"error": f"cross-origin request from {origin} refused"})
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return _reply(403, {"error": "cross-site request refused"})
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _reply(403, {"error": f"missing or wrong {TOKEN_HEADER} (see the page)"})
        if request.body:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != _JSON:
                return _reply(415, {"error": "the body must be application/json"})
        return None

    def body(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return cast("dict[str, Any]", data)

    def guarded(act: Callable[[dict[str, Any]], None]) -> Callable[[Request], Any]:
        def action(request: Request) -> tuple[int, str, bytes]:
            refusal = refused(request)
            if refusal is not None:
                return refusal
            try:
                act(body(request))
            except (ValueError, KeyError, TypeError) as exc:
                message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                return _reply(400, {"error": str(message)})
            return _reply(200, {"ok": True, **_live(handle)})

        return action

    def pause(_: dict[str, Any]) -> None:
        handle.pause()

    def resume(_: dict[str, Any]) -> None:
        handle.resume()

    def resize(data: dict[str, Any]) -> None:
        handle.resize(data["stage"], data["n"])

    def rate(data: dict[str, Any]) -> None:
        handle.set_rate(data["stage"], data["count"], data.get("per", 1.0))

    return {
        "/api/pause": guarded(pause),
        "/api/resume": guarded(resume),
        "/api/resize": guarded(resize),
        "/api/rate": guarded(rate),
    }


async def serve_dashboard(
    handle: PipelineHandle,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    pipeline: str = "",
    interval: float = 0.5,
    history: float = 300.0,
    history_step: float = 1.0,
    allow_remote: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] = (),
    max_connections: int = MAX_CONNECTIONS,
    head_timeout: float = HEAD_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the live dashboard of ``handle`` on ``http://host:port/`` until cancelled.

    ``task_status`` gets the bound port (``port=0``: any free one). Needs ``trio-websocket``
    (``pip install 'trioflow[dashboard]'``). The page shows ``pipeline`` as the pipeline's
    name, and charts of the last ``history`` seconds (a point every ``history_step`` seconds,
    kept by the server, so a page opened late sees them too). Each open page costs one snapshot
    every ``interval`` seconds; a page that does not take a snapshot within 10 seconds is
    closed rather than slowing the pipeline.

    The page has controls: pause/resume, resize a ``process``/``sink`` stage, set a
    ``rate_limit`` stage's rate (``POST /api/...``; see the module docs). A control request
    must carry the token the served page holds (``X-Trioflow-Token``), and is refused when its
    ``Origin`` is another origin (or ``Sec-Fetch-Site`` says it is cross-site): another web page
    cannot steer the pipeline.

    The dashboard has no user accounts. ``host`` must be a loopback address unless
    ``allow_remote=True``. Requests must name the server in ``Host``: ``localhost``, a
    loopback address, ``host``, or one of ``allowed_hosts`` (``"name"`` or ``"name:port"``;
    ``"*"``: any); with ``allow_remote=True`` and no ``allowed_hosts``, any ``Host``. Others get
    421. The ``/ws`` feed and the controls accept pages of the same origin only (or without
    ``Origin``), plus ``allowed_origins`` (``"https://host:port"``); others get 403. At most
    ``max_connections`` connections are served at once (open pages included; the excess gets
    503), and a client has ``head_timeout`` seconds to send its request.

    Raises:
        ValueError: ``host`` is not a loopback address and ``allow_remote`` is false, or an
            option is out of range.
        ImportError: trio-websocket is not installed.

    Examples:
        >>> async with trio.open_nursery() as nursery:
        ...     handle = await nursery.start(pipeline.serve)
        ...     await nursery.start(partial(serve_dashboard, handle, pipeline="orders"))
    """
    if not allow_remote:
        check_loopback(host, "the dashboard", hint="pass allow_remote=True to serve on it anyway")
    access = Access.build(
        host,
        allow_remote=allow_remote,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
    )
    for name, value in (
        ("interval", interval),
        ("history", history),
        ("history_step", history_step),
    ):
        if not (isinstance(value, int | float) and value > 0):
            raise ValueError(f"{name}={value!r} must be a positive number of seconds")
    try:
        importlib.import_module("trio_websocket")
    except ImportError as exc:
        raise ImportError(
            "the dashboard needs 'trio-websocket': install it with pip install "
            "'trioflow[dashboard]'"
        ) from exc
    token = secrets.token_urlsafe(32)
    page = _page(token, pipeline)
    graph = handle.graph.as_dict()
    kept = _History(handle, history_step, history)

    async def feed(ws: Any) -> None:
        # a page that stops reading fills its socket; it is dropped rather than held forever
        with trio.fail_after(SEND_TIMEOUT):
            await ws.send_message(json.dumps({"type": "graph", "graph": graph}))
            points = kept.since(-1.0)
            info = {"type": "info", "pipeline": pipeline, "history": points, "keep": history}
            await ws.send_message(json.dumps(info))
        last = points[-1]["t"] if points else -1.0
        while True:
            points = kept.since(last)
            if points:
                last = points[-1]["t"]
            message = {
                "type": "snapshot",
                "snapshot": handle.snapshot(),
                "points": points,
                **_live(handle),
            }
            with trio.fail_after(SEND_TIMEOUT):
                await ws.send_message(json.dumps(message))
            await trio.sleep(interval)

    def index(_: Request) -> tuple[str, bytes]:
        return "text/html; charset=utf-8", page

    def snapshot(_: Request) -> tuple[str, bytes]:
        return _JSON, json.dumps(handle.snapshot()).encode()

    def stages(_: Request) -> tuple[str, bytes]:
        return _JSON, json.dumps(graph).encode()

    routes = {"/": index, "/metrics.json": snapshot, "/graph.json": stages}
    serve = partial(
        serve_http,
        routes,
        host=host,
        port=port,
        access=access,
        actions=_controls(handle, access, token),
        websocket=feed,
        max_connections=max_connections,
        head_timeout=head_timeout,
    )
    bound: int | None = None
    try:
        async with trio.open_nursery() as nursery:
            bound_port: int = await nursery.start(serve)
            bound = bound_port
            nursery.start_soon(kept.run)
            task_status.started(bound_port)
    except BaseExceptionGroup as group:
        # binding failed (a port in use): raise it as serve_http does, not in a group
        first = group.exceptions[0]
        if bound is None and len(group.exceptions) == 1 and isinstance(first, OSError):
            raise first from None
        raise
