"""Headless Chromium driven over the Chrome DevTools Protocol (a WebSocket; trio-websocket).

Enough of the protocol to open a page, evaluate JavaScript in it, type into a field and click
an element the way a user does (mouse events at the element's position, not ``el.click()``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: a headless Chromium that stays off the network (test_dashboard.py runs it with these too)
QUIET_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLAGS = [
    *QUIET_FLAGS,
    "--window-size=1200,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class Page:
    """One tab, attached with a flat session."""

    def __init__(self, ws: WebSocketConnection, session: str) -> None:
        self.ws = ws
        self.session = session
        self.next_id = 1000
        self.waiting: dict[int, Any] = {}

    async def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        ident = self.next_id
        got: list[Any] = []
        done = trio.Event()
        self.waiting[ident] = (got, done)
        message = {"id": ident, "method": method, "params": params, "sessionId": self.session}
        await self.ws.send_message(json.dumps(message))
        with trio.fail_after(20):
            await done.wait()
        reply = got[0]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")

    async def js(self, expression: str) -> Any:
        """The value of ``expression`` (awaited if it is a promise) in the page."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        with trio.fail_after(timeout):
            while not (value := await self.js(expression)):  # noqa: ASYNC110 - in the page
                await trio.sleep(0.05)
        return value

    async def click(self, selector: str) -> None:
        """Scroll ``selector`` into view and click its middle with the mouse."""
        box = await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type_into(self, selector: str, text: str) -> None:
        """Focus ``selector``, select what it holds, and type ``text`` over it."""
        await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            "e.focus(); e.select(); return true; })()"
        )
        await self.call("Input.insertText", text=text)


@asynccontextmanager
async def browser_page(url: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own profile) with one tab open at ``url``."""
    assert CHROMIUM is not None
    # Chromium's helper processes may still write to the profile as it is removed: they are in
    # the browser's own process group (killed together below), and a file they leave is no error
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = await trio.lowlevel.open_process(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            with trio.fail_after(30):
                while not active.exists() or len(active.read_text().splitlines()) < 2:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            port, path = active.read_text().splitlines()[:2]
            async with (
                open_websocket_url(
                    f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024
                ) as ws,
                trio.open_nursery() as nursery,
            ):
                page = Page(ws, "")
                nursery.start_soon(_dispatch, ws, page)
                page.session = ""
                target = await _browser_call(page, "Target.createTarget", url="about:blank")
                attached = await _browser_call(
                    page, "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                page.session = attached["sessionId"]
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                yield page
                nursery.cancel_scope.cancel()
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await proc.wait()


async def _browser_call(page: Page, method: str, **params: Any) -> Any:
    """A command to the browser itself (no session)."""
    page.next_id += 1
    ident = page.next_id
    got: list[Any] = []
    done = trio.Event()
    page.waiting[ident] = (got, done)
    await page.ws.send_message(json.dumps({"id": ident, "method": method, "params": params}))
    with trio.fail_after(20):
        await done.wait()
    if "error" in got[0]:
        raise RuntimeError(f"{method}: {got[0]['error']}")
    return got[0]["result"]


async def _dispatch(ws: WebSocketConnection, page: Page) -> None:
    while True:
        message = json.loads(await ws.get_message())
        waiter = page.waiting.pop(message.get("id", -1), None)
        if waiter is not None:
            waiter[0].append(message)
            waiter[1].set()
