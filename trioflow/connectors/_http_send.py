"""The HTTP connector's errors, and its sender: one request with retries (backoff,
``Retry-After``, the policy's attempts and deadline), shared by the source and the sink. See
:mod:`trioflow.connectors.http`."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import trio

from .._exceptions import TrioflowError
from .._retry import Backoff, Retry
from ._lazy import require

if TYPE_CHECKING:
    import httpx

__all__ = [
    "HttpError",
    "HttpStatusError",
    "HttpTimeout",
    "HttpTransportError",
    "parse_retry_after",
]

EXCERPT = 200


class HttpError(TrioflowError):
    """Base of the HTTP connector's errors."""


class HttpTransportError(HttpError, ConnectionError):
    """The request got no answer: connection refused or reset, protocol error, timeout."""


@final
class HttpTimeout(HttpTransportError, TimeoutError):
    """A connect, read, write or pool timeout of the client elapsed."""


@final
class HttpStatusError(HttpError):
    """The server answered with an error status.

    Attributes:
        status_code: the HTTP status.
        body: an excerpt of the response body (at most 200 characters).
        retry_after: the delay the server asked for (``Retry-After``), in seconds, if any.
    """

    def __init__(
        self, message: str, status_code: int, body: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    ``now`` is the wall-clock time (``time.time()`` when not given) an HTTP date is measured
    from. A date in the past gives 0; an unparseable value gives ``None``.

    Examples:
        >>> parse_retry_after("120")
        120.0
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
        10.0
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:  # an undecodable body must not hide the status
        text = repr(response.content[:EXCERPT])
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


def status_error(response: httpx.Response) -> HttpStatusError:
    request = response.request
    body = excerpt(response)
    phrase = response.reason_phrase or require("httpx", "http").codes.get_reason_phrase(
        response.status_code
    )
    message = f"HTTP {response.status_code} {phrase} from {request.method} {request.url}"
    if body:
        message += f": {body}"
    return HttpStatusError(
        message, response.status_code, body, parse_retry_after(response.headers.get("retry-after"))
    )


def transport_error(exc: Exception, request: httpx.Request | None) -> HttpError:
    httpx_ = require("httpx", "http")
    where = f"{request.method} {request.url}" if request is not None else "request"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx_.TimeoutException):
        return HttpTimeout(f"{where}: {type(exc).__name__}: {text}")
    if isinstance(exc, httpx_.UnsupportedProtocol):
        return HttpError(f"{where}: {text}")
    if isinstance(exc, httpx_.TransportError):
        return HttpTransportError(f"{where}: {type(exc).__name__}: {text}")
    return HttpError(f"{where}: {type(exc).__name__}: {text}")


def transient(error: HttpError) -> bool:
    if isinstance(error, HttpStatusError):
        return error.status_code == 429 or error.status_code >= 500
    return isinstance(error, HttpTransportError)


DEFAULT_RETRY = Retry(attempts=5, backoff=Backoff.exponential(0.2, max=10.0, jitter=True))


@final
class Sender:
    """Send a request with retries; the policy shared by the source and the sink."""

    def __init__(self, client: httpx.AsyncClient, retry: Retry, max_retry_after: float) -> None:
        self.client = client
        self.retry = retry
        self.max_retry_after = max_retry_after
        self.retried = 0

    async def send(self, build: Callable[[], httpx.Request]) -> httpx.Response:
        """The response (2xx or 3xx); :class:`HttpError` when retries are spent or futile.

        ``retry.attempts`` bounds the calls; ``retry.deadline`` (if set) the seconds from the
        first call to the start of the last retry: a retry that would start later (after its
        backoff or the server's ``Retry-After``) is not made, and the last error is raised.
        """
        httpx_ = require("httpx", "http")
        attempt = 1
        started = trio.current_time()
        while True:
            request = build()
            error: HttpError
            cause: BaseException | None = None
            try:
                response = await self.client.send(request)
            except httpx_.HTTPError as exc:
                error = transport_error(exc, getattr(exc, "_request", None) or request)
                cause = exc
                if not transient(error) or attempt >= self.retry.attempts:
                    raise error from exc
            else:
                if response.status_code < 400:
                    return response
                error = status_error(response)
                if not transient(error):
                    raise error
                if attempt >= self.retry.attempts:
                    raise HttpStatusError(
                        f"{error} (after {attempt} attempts)",
                        error.status_code,
                        error.body,
                        error.retry_after,
                    )
            delay = self.retry.backoff.delay(attempt)
            if isinstance(error, HttpStatusError) and error.retry_after is not None:
                if error.retry_after > self.max_retry_after:
                    raise HttpStatusError(
                        f"{error} (Retry-After {error.retry_after:g}s exceeds "
                        f"max_retry_after={self.max_retry_after:g})",
                        error.status_code,
                        error.body,
                        error.retry_after,
                    )
                delay = max(delay, error.retry_after)
            deadline = self.retry.deadline
            spent = trio.current_time() - started
            if deadline is not None and spent + delay > deadline:
                message = (
                    f"{error} (no retry after {attempt} attempt(s) in {spent:.1f} s: the next, "
                    f"in {delay:g} s, would pass the retry deadline of {deadline:g} s)"
                )
                if isinstance(error, HttpStatusError):
                    raise HttpStatusError(message, error.status_code, error.body, error.retry_after)
                raise type(error)(message) from cause
            self.retried += 1
            attempt += 1
            await trio.sleep(delay)
