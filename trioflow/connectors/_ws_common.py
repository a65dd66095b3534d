"""What the WebSocket connectors share: errors, the JSON decoding of a frame, logging."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Literal, final

import trio

from .._exceptions import TrioflowError

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

Format = Literal["json"] | None
MIB = 1 << 20

logger = logging.getLogger("trioflow")


class WebSocketError(TrioflowError):
    """Base of the WebSocket connectors' errors."""


@final
class WebSocketConnectError(WebSocketError, ConnectionError):
    """Connecting failed: refused, unreachable, timed out, or the handshake was rejected."""


@final
class WebSocketClosed(WebSocketError, ConnectionError):
    """The connection closed; ``code`` and ``reason`` are the close frame's (1006: abnormal)."""

    def __init__(self, message: str, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def closed_error(exc: Any, url: str) -> WebSocketClosed:
    reason = getattr(exc, "reason", None)
    code = getattr(reason, "code", None)
    text = getattr(reason, "reason", None)
    name = getattr(reason, "name", None)
    what = f"{code} {name}" if code is not None else "closed"
    return WebSocketClosed(
        f"{url}: connection closed ({what}{f': {text}' if text else ''})", code, text
    )


def connect_error(exc: BaseException, url: str) -> WebSocketConnectError:
    cause = exc.__cause__ or exc.__context__
    detail = str(exc) or (str(cause) if cause is not None else "") or type(exc).__name__
    status = getattr(exc, "status_code", None)
    if status is not None:
        detail = f"handshake rejected with HTTP {status}"
    return WebSocketConnectError(f"{url}: could not connect: {detail}")


async def release(ws: WebSocketConnection) -> None:
    # trio-websocket 0.12 leaves a client's socket open when the server closed first (it waits
    # for the server's TCP close, then never closes its own end): close it ourselves.
    stream = getattr(ws, "_stream", None)
    if ws.closed is not None and stream is not None:
        await trio.aclose_forcefully(stream)


def decode(raw: str | bytes, format: Format) -> tuple[Any, BaseException | None]:
    if format != "json":
        return raw, None
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return raw, exc
    except RecursionError as exc:  # "[[[[..." deeper than the interpreter's recursion limit
        error = ValueError("JSON nesting too deep")
        error.__cause__ = exc
        return raw, error
