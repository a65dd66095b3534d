"""HTTP with httpx: a polling or paginated source and a batch sink, on a client you own.

The client is injected: its transport, pool limits, timeouts, auth and base URL are yours (and
tests can give it an ``httpx.MockTransport``). Install with ``pip install 'trioflow[http]'``.

:class:`HttpSource` GETs a URL and emits the records of each response: once, following
pagination (a next link or a cursor), or on an interval (polling), with conditional requests
(``If-None-Match`` / ``If-Modified-Since``) so an unchanged resource costs a 304 and emits
nothing. A page is fetched only when the pipeline has room for at least one record.

:class:`HttpSink` POSTs each item, or each batch as one JSON array (or sends a request you
build), and retries connection errors, timeouts, 5xx and 429 (honouring ``Retry-After``) with
backoff. Any other 4xx fails the batch's messages with :class:`HttpStatusError`, whose message
has the status and an excerpt of the body.

Errors of httpx are translated at the boundary (``raise ... from``)::

    TrioflowError
    └── HttpError                        base of this connector's errors
        ├── HttpTransportError (ConnectionError)   the request did not get an answer
        │   └── HttpTimeout (TimeoutError)         connect/read/write/pool timeout
        └── HttpStatusError              the server answered with an error status

Examples:
    >>> async with httpx.AsyncClient(base_url="https://api.example.com") as client:
    ...     source = HttpSource(client, "/events", next_page=cursor("next_cursor"))
    ...     out = HttpSink(client, "/archive")
    ...     await (source | tf.batch(100, 1.0) | tf.sink(out, n=4)).run()
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias, cast, final

import trio

from .._message import Message
from .._retry import Retry
from .._sources import Outlet, Source
from ._http_send import (
    DEFAULT_RETRY,
    HttpError,
    HttpStatusError,
    HttpTimeout,
    HttpTransportError,
    Sender,
    excerpt,
    parse_retry_after,
)
from ._json import items_of
from ._json import jsonable as _jsonable
from ._lazy import require
from ._trace_context import outgoing

if TYPE_CHECKING:
    import httpx

__all__ = [
    "HttpError",
    "HttpSink",
    "HttpSource",
    "HttpStatusError",
    "HttpTimeout",
    "HttpTransportError",
    "cursor",
    "link_next",
    "parse_retry_after",
    "url_field",
]

#: What ``next_page`` returns: the next URL, query parameters for the next request, or ``None``.
NextPage: TypeAlias = "str | httpx.URL | Mapping[str, Any] | None"


# --- pagination helpers --------------------------------------------------------------------------


def link_next(response: httpx.Response) -> str | None:
    """``next_page`` for APIs with an RFC 8288 ``Link: <...>; rel="next"`` header.

    Examples:
        >>> source = HttpSource(client, "https://api.github.com/repos/python/cpython/issues",
        ...                     next_page=link_next)
    """
    link = response.links.get("next")
    if link is None or "url" not in link:
        return None
    return str(response.url.join(link["url"]))


def cursor(field: str, param: str = "cursor") -> Callable[[httpx.Response], NextPage]:
    """``next_page`` for cursor pagination: the JSON body's ``field`` goes in query ``param``.

    A missing, null or empty cursor ends the pagination. ``field`` may be a dotted path
    (``"meta.next"``).

    Examples:
        >>> source = HttpSource(client, "/events", next_page=cursor("next_cursor", "after"))
    """

    def next_page(response: httpx.Response) -> NextPage:
        value = _dig(response.json(), field)
        return {param: value} if value not in (None, "") else None

    next_page.__name__ = f"cursor({field!r}, {param!r})"
    return next_page


def url_field(field: str) -> Callable[[httpx.Response], NextPage]:
    """``next_page`` for APIs that put the next page's URL in the JSON body (``"next"``).

    Examples:
        >>> source = HttpSource(client, "/items?page=1", next_page=url_field("next"))
    """

    def next_page(response: httpx.Response) -> NextPage:
        value = _dig(response.json(), field)
        return str(response.url.join(value)) if value else None

    next_page.__name__ = f"url_field({field!r})"
    return next_page


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = cast("Mapping[str, Any]", data).get(part)
    return data


def _json_records(response: httpx.Response) -> Iterable[Any]:
    return items_of(response.json())


# --- source --------------------------------------------------------------------------------------


@final
class HttpSource(Source[Any]):
    """Records of HTTP responses: one pass over the pages, or polling on an interval.

    Each response's records come from ``records(response)`` (by default the JSON body: a list
    gives its elements, anything else one record). ``next_page(response)`` says where the next
    page is (see :func:`link_next`, :func:`cursor`, :func:`url_field`): a URL, query
    parameters for the first request's URL, or ``None`` at the end.

    Without ``interval`` the source follows the pages once and ends. With ``interval`` it polls:
    after the last page (or an empty one, or a 304) it waits ``interval`` seconds, then asks again
    where it stopped: at the last cursor when ``next_page`` gave one (a feed), else at the first
    URL (a resource, with conditional requests). ``until(response, records)`` returning true ends
    the source after that page's records; so does ``max_pages``.

    Conditional requests (``conditional=True``): a response's ``ETag`` and ``Last-Modified``
    are sent back as ``If-None-Match`` and ``If-Modified-Since`` the next time the same URL is
    asked for; a 304 emits nothing.

    Connection errors, timeouts, 5xx and 429 are retried (``retry``: its attempts, backoff and
    ``deadline``; ``Retry-After`` honoured); when retries are spent, or on another 4xx, the
    source raises :class:`HttpError` and the run stops with a :class:`~trioflow.PipelineError`
    naming the source. A page whose records cannot be extracted (malformed JSON, say) is handed
    over as one failed message (its data the body excerpt) and ends that pass.

    Each message's metadata has ``url``, ``status``, ``page`` (1-based in a pass) and ``index``
    (in the page). Back-pressure: a page is asked for only when the pipeline has room; under
    cancellation (a drain or a hard stop) the request in progress is abandoned.

    Examples:
        >>> async with httpx.AsyncClient(timeout=10) as client:
        ...     source = HttpSource(client, "https://example.com/status.json", interval=30)
        ...     await (source | tf.sink(store)).run(stop=stop)
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str | httpx.URL,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        records: Callable[[httpx.Response], Iterable[Any]] | None = None,
        next_page: Callable[[httpx.Response], NextPage] | None = None,
        interval: float | None = None,
        until: Callable[[httpx.Response, list[Any]], bool] | None = None,
        max_pages: int | None = None,
        conditional: bool = True,
        retry: Retry | None = None,
        max_retry_after: float = 300.0,
        name: str | None = None,
    ) -> None:
        if interval is not None and not (
            isinstance(interval, (int, float)) and interval >= 0 and math.isfinite(interval)
        ):
            raise ValueError(f"interval={interval!r} must be a non-negative number of seconds")
        if max_pages is not None and (not isinstance(max_pages, int) or max_pages < 1):
            raise ValueError(f"max_pages={max_pages!r} must be a positive integer")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry={retry!r} must be a trioflow.Retry or None")
        self.client = client
        self.url = url
        self.params: dict[str, Any] = dict(params or {})
        self.headers: dict[str, str] = dict(headers or {})
        self.records: Callable[[Any], Iterable[Any]] = records or _json_records
        self.next_page = next_page
        self.interval = interval
        self.until = until
        self.max_pages = max_pages
        self.conditional = conditional
        self.retry: Retry = retry or DEFAULT_RETRY
        self.max_retry_after = max_retry_after
        self.name = name

    async def produce(self, out: Outlet) -> None:
        httpx_ = require("httpx", "http")
        sender = Sender(self.client, self.retry, self.max_retry_after)
        validators: dict[str, dict[str, str]] = {}
        first = httpx_.URL(str(self.url)) if not isinstance(self.url, httpx_.URL) else self.url
        url: httpx.URL | str = first
        params: dict[str, Any] = dict(self.params)
        page, pages = 0, 0
        while True:
            await out.demand()
            target = self.client.build_request("GET", url, params=params or None).url
            key = str(target)

            def build(target: httpx.URL = target, key: str = key) -> httpx.Request:
                headers = dict(self.headers)
                if self.conditional:
                    headers.update(validators.get(key, {}))
                return self.client.build_request("GET", target, headers=headers)

            response: httpx.Response = await sender.send(build)
            page += 1
            pages += 1
            records: list[Any] = []
            nxt: NextPage = None
            broken = False
            if response.status_code != 304:
                if self.conditional:
                    self._remember(validators, key, response)
                try:
                    records = list(self.records(response))
                except Exception as exc:
                    broken = True
                    reason = HttpError(
                        f"could not extract records from GET {response.url}: "
                        f"{type(exc).__name__}: {exc}"
                    )
                    meta = {"url": key, "status": response.status_code, "page": page, "index": 0}
                    await out.send(Message(excerpt(response), meta).fail(reason))
                if records:
                    meta_url, status = str(response.url), response.status_code
                    await out.send_many(
                        [
                            Message(
                                r, {"url": meta_url, "status": status, "page": page, "index": i}
                            )
                            for i, r in enumerate(records)
                        ]
                    )
                if not broken and self.next_page is not None:
                    nxt = self.next_page(response)
            if (self.until is not None and self.until(response, records)) or (
                self.max_pages is not None and pages >= self.max_pages
            ):
                return
            if nxt is not None and records:
                url, params = self._follow(first, nxt)
                continue
            if self.interval is None:
                return
            await trio.sleep(self.interval)
            page = 0
            # a feed is asked again at its last cursor; a resource from its first URL
            url, params = (
                self._follow(first, nxt) if nxt is not None else (first, dict(self.params))
            )

    def _follow(
        self, first: httpx.URL | str, nxt: NextPage
    ) -> tuple[httpx.URL | str, dict[str, Any]]:
        if isinstance(nxt, Mapping):
            return first, {**self.params, **nxt}
        return nxt, {}  # type: ignore[return-value]

    @staticmethod
    def _remember(
        validators: dict[str, dict[str, str]], key: str, response: httpx.Response
    ) -> None:
        found = {}
        etag = response.headers.get("etag")
        if etag:
            found["If-None-Match"] = etag
        modified = response.headers.get("last-modified")
        if modified:
            found["If-Modified-Since"] = modified
        if found:
            validators[key] = found

    @property
    def label(self) -> str:
        return self.name or f"HttpSource({self.url})"

    def __repr__(self) -> str:
        return f"HttpSource({str(self.url)!r})"


# --- sink ----------------------------------------------------------------------------------------


def _args(error: HttpError, more: str) -> tuple[Any, ...]:
    if isinstance(error, HttpStatusError):
        return (f"{error}{more}", error.status_code, error.body, error.retry_after)
    return (f"{error}{more}",)


def _pool_size(client: Any) -> int | None:
    # httpx keeps its limits private; read them where they live, or fall back
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    size = getattr(pool, "_max_connections", None)
    return size if isinstance(size, int) and size > 0 else None


@final
class HttpSink:
    """POST items (or batches) as JSON, or send a request you build, with retries.

    A batch (a list, from ``tf.batch``) is sent as one JSON array with ``batch="array"``, or as
    one request per item with ``batch="each"`` (concurrently, at most ``concurrency`` at a time
    across all the sink's calls). ``request(client, item_or_batch)`` builds the request yourself
    (use ``client.build_request``); it is built anew for each attempt.

    Connection errors, timeouts, 5xx and 429 are retried (``retry``: attempts, backoff and
    ``deadline``; a ``Retry-After`` longer than the backoff is waited instead, one longer than
    ``max_retry_after`` fails at once, and a retry that would start past ``retry.deadline``
    seconds after the first call is not made). A 4xx other than 429 fails every message of the
    call with :class:`HttpStatusError` (status and body excerpt); so does a retryable error that
    outlasts the retries. A POST retried after a timeout may reach the server twice: make the
    endpoint idempotent (an id in the body) for exactly-once effects.

    Each request carries a ``traceparent`` header (unless ``headers`` or ``request`` set one):
    the current span's (a stage traced by ``OpenTelemetry``), else, for
    :class:`~trioflow.Message` items (a ``messages=True`` sink, whose data is sent), the
    message's own (a batch sent as one request: its first message's).

    ``concurrency`` defaults to the client's pool size (``limits.max_connections``) when it can
    be read, else 10; ``tf.sink(out, n=...)`` workers share it. While every slot is busy a call
    waits, so back-pressure reaches the pipeline. Cancelling a call (a hard stop) abandons its
    request; httpx drops that connection from the pool.

    Examples:
        >>> async with httpx.AsyncClient(base_url="http://127.0.0.1:8000") as client:
        ...     out = HttpSink(client, "/ingest")
        ...     await (source | tf.batch(100, 1.0) | tf.sink(out, n=4)).run()
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str | httpx.URL = "",
        *,
        method: str = "POST",
        batch: Literal["array", "each"] = "array",
        request: Callable[[httpx.AsyncClient, Any], httpx.Request] | None = None,
        headers: Mapping[str, str] | None = None,
        encode: Callable[[Any], Any] | None = None,
        retry: Retry | None = None,
        max_retry_after: float = 300.0,
        concurrency: int | None = None,
    ) -> None:
        if batch not in ("array", "each"):
            raise ValueError(f"batch={batch!r} must be 'array' or 'each'")
        if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError(f"concurrency={concurrency!r} must be a positive integer")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry={retry!r} must be a trioflow.Retry or None")
        if request is None and not str(url) and not str(getattr(client, "base_url", "")):
            raise ValueError("HttpSink needs url= (or request=)")
        self.client = client
        self.url = url
        self.method: str = method.upper()
        self.batch = batch
        self.request = request
        self.headers: dict[str, str] = dict(headers or {})
        self.encode: Callable[[Any], Any] = encode or _jsonable
        self.concurrency: int = concurrency or _pool_size(client) or 10
        self._sender = Sender(client, retry or DEFAULT_RETRY, max_retry_after)
        self._slots = trio.Semaphore(self.concurrency)
        self.sent: int = 0

    @property
    def retried(self) -> int:
        """Requests retried so far."""
        return self._sender.retried

    async def __call__(self, item: Any) -> None:
        if not isinstance(item, list):
            (item,), (context,) = outgoing([item])
            await self._send_one(item, context)
            return
        items, contexts = outgoing(items_of(item))
        if self.batch == "each":
            if not items:
                return
            errors: list[HttpError] = []

            async def one(x: Any, context: dict[str, str] | None) -> None:
                try:
                    await self._send_one(x, context)
                except HttpError as error:
                    errors.append(error)

            async with trio.open_nursery() as nursery:
                for x, context in zip(items, contexts, strict=True):
                    nursery.start_soon(one, x, context)
            if errors:
                # the call fails as a whole (every message of the batch); name the first error
                first = errors[0]
                if len(errors) == 1:
                    raise first
                more = f" (and {len(errors) - 1} more of {len(items)})"
                raise type(first)(*_args(first, more)) from first
            return
        # one request for the batch: the current span's context, else its first message's
        await self._send_one(items, contexts[0] if contexts else None)

    async def _send_one(self, item: Any, context: dict[str, str] | None) -> None:
        def build() -> httpx.Request:
            if self.request is not None:
                request = self.request(self.client, item)
                if context:
                    for name, value in context.items():
                        if name not in request.headers:
                            request.headers[name] = value
                return request
            body = json.dumps(item, default=self.encode).encode()
            headers = {"Content-Type": "application/json", **self.headers}
            if context:
                for name, value in context.items():
                    headers.setdefault(name, value)
            return self.client.build_request(self.method, self.url, content=body, headers=headers)

        async with self._slots:
            await self._sender.send(build)
        self.sent += 1

    @property
    def __name__(self) -> str:  # for reprs: sink(HttpSink(...))
        return f"HttpSink({self.method} {self.url})"

    def __repr__(self) -> str:
        return f"HttpSink({str(self.url)!r})"
