"""HttpSource and HttpSink against a real HTTP/1.1 server on 127.0.0.1 (see http_server.py).

httpx.MockTransport is used where time must be exact (``autojump_clock``: 429 with Retry-After,
polling intervals, backoff), since a real socket cannot run under a jumping clock.
"""

from __future__ import annotations

import email.utils
import json
import time
from http import HTTPStatus
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.connectors.http import (
    HttpError,
    HttpSink,
    HttpSource,
    HttpStatusError,
    HttpTimeout,
    HttpTransportError,
    cursor,
    link_next,
    parse_retry_after,
    url_field,
)
from trioflow.testing import TestSource

from .http_server import Drop, Request, Response, serve_http

NO_WAIT = tf.Retry(attempts=3, backoff=tf.Backoff.constant(0.0))


def mock_client(handler: Any, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://api.test", **options
    )


# --- source: pagination ---------------------------------------------------------------------------


async def test_source_follows_link_header_pages() -> None:
    async def handler(req: Request) -> Response:
        page = int(req.query.get("page", "1"))
        headers = {"link": f'</items?page={page + 1}>; rel="next"'} if page < 3 else {}
        return Response.json([f"p{page}-{i}" for i in range(2)], **headers)

    async with serve_http(handler) as server, httpx.AsyncClient() as client:
        source = HttpSource(client, f"{server.url}/items", next_page=link_next)
        got: list[tf.Message[str]] = []
        await (source | tf.sink(got.append, messages=True)).run()
    assert [m.data for m in got] == ["p1-0", "p1-1", "p2-0", "p2-1", "p3-0", "p3-1"]
    assert got[2].metadata == {
        "url": f"{server.url}/items?page=2",
        "status": 200,
        "page": 2,
        "index": 0,
    }
    assert [r.target for r in server.requests] == ["/items", "/items?page=2", "/items?page=3"]


async def test_source_cursor_pagination_with_records_function() -> None:
    data = list(range(7))

    async def handler(req: Request) -> Response:
        start = int(req.query.get("after", "0"))
        chunk = data[start : start + 3]
        more = start + 3 < len(data)
        return Response.json({"items": chunk, "meta": {"next": str(start + 3) if more else None}})

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        source = HttpSource(
            client,
            "/feed",
            params={"limit": 3},
            records=lambda r: r.json()["items"],
            next_page=cursor("meta.next", "after"),
        )
        assert await tf.collect(source) == data
    assert [r.target for r in server.requests] == [
        "/feed?limit=3",
        "/feed?limit=3&after=3",
        "/feed?limit=3&after=6",
    ]


async def test_source_next_url_in_body_and_stop_conditions() -> None:
    async def handler(req: Request) -> Response:
        n = int(req.query["n"])
        return Response.json({"items": [n], "next": f"/numbers?n={n + 1}"})  # endless

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        records = lambda r: r.json()["items"]  # noqa: E731
        follow = url_field("next")
        until = HttpSource(client, "/numbers?n=1", records=records, next_page=follow,
                           until=lambda response, items: 4 in items)  # fmt: skip
        assert await tf.collect(until) == [1, 2, 3, 4]
        capped = HttpSource(client, "/numbers?n=1", records=records, next_page=follow, max_pages=2)
        assert await tf.collect(capped) == [1, 2]


async def test_source_fetches_pages_as_demand_allows() -> None:
    fetched = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal fetched
        fetched += 1
        return httpx.Response(200, json=list(range(10)), headers={"link": '</next>; rel="next"'})

    release = trio.Event()

    async def slow(item: Any) -> None:
        await release.wait()

    async with mock_client(handler) as client:
        source = HttpSource(client, "/start", next_page=link_next, max_pages=1000)
        pipeline = source | tf.process(lambda x: x, buffer=5) | tf.sink(slow, buffer=5)
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(pipeline.serve)
            await trio.testing.wait_all_tasks_blocked()
            # a few pages fill the buffers, then the source waits: nothing is read ahead
            assert 1 <= fetched <= 4
            handle.stop()
            release.set()


# --- source: polling, conditional requests --------------------------------------------------------


async def test_source_polls_with_etag_and_last_modified() -> None:
    version = {"etag": '"v1"', "body": ["a"]}

    async def handler(req: Request) -> Response:
        if req.headers.get("if-none-match") == version["etag"]:
            return Response(304)
        return Response.json(
            version["body"],
            etag=str(version["etag"]),
            last_modified="Wed, 21 Oct 2015 07:28:00 GMT",
        )

    async with serve_http(handler) as server, httpx.AsyncClient() as client:
        seen: list[str] = []

        def record(item: str) -> None:
            seen.append(item)

        def until(response: httpx.Response, records: list[Any]) -> bool:
            if len(server.requests) == 3:  # the resource changes after two unchanged polls
                version.update(etag='"v2"', body=["b"])
            return "b" in records

        source = HttpSource(client, f"{server.url}/status", interval=0.01, until=until)
        await (source | tf.sink(record)).run()
    assert seen == ["a", "b"]
    statuses = [r.headers.get("if-none-match") for r in server.requests]
    assert statuses == [None, '"v1"', '"v1"', '"v1"']
    assert server.requests[1].headers["if-modified-since"] == "Wed, 21 Oct 2015 07:28:00 GMT"


async def test_source_polls_a_feed_on_the_interval_from_its_last_cursor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[tuple[float, str]] = []
    events = iter([[1, 2], [], [3], []])

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((trio.current_time(), request.url.params.get("since", "-")))
        items = next(events, None)
        if items is None:
            return httpx.Response(200, json={"items": [], "next": "end"})
        since = int(request.url.params.get("since", "0")) + len(items)
        return httpx.Response(200, json={"items": items, "next": str(since)})

    async with mock_client(handler) as client:
        source = HttpSource(
            client,
            "/events",
            records=lambda r: r.json()["items"],
            next_page=cursor("next", "since"),
            interval=5.0,
            until=lambda r, items: r.json()["next"] == "end",
        )
        start = trio.current_time()
        assert await tf.collect(source) == [1, 2, 3]
    assert [(t - start, since) for t, since in calls] == [
        (0.0, "-"),  # [1, 2]: more may follow at once
        (0.0, "2"),  # empty: wait the interval
        (5.0, "2"),  # [3]
        (5.0, "3"),  # empty
        (10.0, "3"),  # the end marker
    ]


async def test_source_retries_5xx_then_stops_on_4xx(autojump_clock: trio.testing.MockClock) -> None:
    replies = iter([503, 502, 200, 404])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(replies)
        return httpx.Response(status, json=["x"] if status == 200 else {"error": "gone"})

    async with mock_client(handler) as client:
        source = HttpSource(client, "/r", interval=1.0, retry=tf.Retry(attempts=3))
        with pytest.raises(tf.PipelineError) as info:
            await tf.collect(source)
    cause = info.value.__cause__
    assert isinstance(cause, HttpStatusError)
    assert cause.status_code == 404
    assert str(cause) == 'HTTP 404 Not Found from GET http://api.test/r: {"error":"gone"}'


async def test_source_malformed_page_fails_one_message_and_goes_on() -> None:
    async def handler(req: Request) -> Response:
        if req.query.get("page") == "2":
            return Response(200, b"{not json", {"content-type": "application/json"})
        return Response.json([1], link='</p?page=2>; rel="next"')

    failed: list[tf.Message[Any]] = []

    async def dead_letter(messages: list[tf.Message[Any]]) -> None:
        failed.extend(messages)

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        source = HttpSource(client, "/p", next_page=link_next)
        report = await (source | tf.sink(lambda x: None)).on_failure(dead_letter).run()
    assert (report.acked, report.failed) == (1, 1)
    [bad] = failed
    assert bad.data == "{not json"
    assert isinstance(bad.reason, HttpError)
    assert str(bad.reason).startswith(
        f"could not extract records from GET {server.url}/p?page=2: JSONDecodeError: "
    )


async def test_source_stalling_server_times_out() -> None:
    async def handler(req: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError

    async with serve_http(handler) as server, httpx.AsyncClient(timeout=0.2) as client:
        source = HttpSource(
            client, server.url, retry=tf.Retry(attempts=2, backoff=tf.Backoff.constant(0))
        )
        with trio.fail_after(5), pytest.raises(tf.PipelineError) as info:
            await tf.collect(source)
    cause = info.value.__cause__
    assert isinstance(cause, HttpTimeout)
    assert isinstance(cause, TimeoutError)
    assert isinstance(cause.__cause__, httpx.ReadTimeout)
    assert len(server.requests) == 2


async def test_source_drain_abandons_a_request_in_progress() -> None:
    started = trio.Event()

    async def handler(req: Request) -> Response:
        started.set()
        await trio.sleep_forever()
        raise AssertionError

    async with serve_http(handler) as server, httpx.AsyncClient(timeout=30) as client:
        stop = trio.Event()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(started.wait)
                report_box: list[tf.RunReport] = []

                async def run() -> None:
                    report_box.append(
                        await (HttpSource(client, server.url) | tf.sink(print)).run(stop=stop)
                    )

                nursery.start_soon(run)
                await started.wait()
                stop.set()
    assert report_box[0].received == 0


# --- sink -----------------------------------------------------------------------------------------


async def test_sink_posts_each_batch_as_a_json_array() -> None:
    async def handler(req: Request) -> Response:
        return Response(204)

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        out = HttpSink(client, "/ingest", headers={"x-token": "t"})
        src = TestSource(range(7))
        report = await (src | tf.batch(3) | tf.sink(out)).run()
    assert report.acked == 7
    assert [r.json() for r in server.requests] == [[0, 1, 2], [3, 4, 5], [6]]
    assert {r.headers["content-type"] for r in server.requests} == {"application/json"}
    assert {r.headers["x-token"] for r in server.requests} == {"t"}
    assert (out.sent, out.retried) == (3, 0)


async def test_sink_each_item_concurrency_bounded_by_the_pool() -> None:
    active = peak = 0

    async def handler(req: Request) -> Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.02)
        active -= 1
        return Response(200)

    async with serve_http(handler) as server:
        limits = httpx.Limits(max_connections=3)
        async with httpx.AsyncClient(base_url=server.url, limits=limits) as client:
            out = HttpSink(client, "/one", batch="each")
            assert out.concurrency == 3
            report = await (tf.from_iterable(range(20)) | tf.batch(10) | tf.sink(out, n=2)).run()
    assert report.acked == 20
    assert sorted(r.json() for r in server.requests) == list(range(20))
    assert peak == 3
    assert server.connections <= 3


async def test_sink_user_built_request() -> None:
    async def handler(req: Request) -> Response:
        return Response(200)

    def put(client: httpx.AsyncClient, batch: list[int]) -> httpx.Request:
        return client.build_request("PUT", f"/sum/{len(batch)}", content=str(sum(batch)))

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        await (
            tf.from_iterable(range(4)) | tf.batch(2) | tf.sink(HttpSink(client, request=put))
        ).run()
    assert [(r.method, r.target, r.body) for r in server.requests] == [
        ("PUT", "/sum/2", b"1"),
        ("PUT", "/sum/2", b"5"),
    ]


async def test_sink_4xx_fails_the_batch_with_status_and_body_excerpt() -> None:
    long_error = "amount must be positive " * 20

    async def handler(req: Request) -> Response:
        if 3 in req.json():
            return Response.json({"error": long_error}, 422)
        return Response(200)

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        src = TestSource(range(6))
        report = await (src | tf.batch(3) | tf.sink(HttpSink(client, "/items"))).run()
    assert src.acked == [0, 1, 2]
    assert [d for d, _ in src.failed] == [3, 4, 5]
    reason = src.failed[0][1]
    assert isinstance(reason, HttpStatusError)
    assert reason.status_code == 422
    assert len(reason.body) == 200
    assert reason.body.endswith("...")
    phrase = HTTPStatus(422).phrase  # "Unprocessable Entity"; "... Content" from Python 3.13
    assert str(reason).startswith(
        f'HTTP 422 {phrase} from POST {server.url}/items: {{"error": "amount must'
    )
    assert report.failed_by_reason == {"HttpStatusError": 3}
    assert len(server.requests) == 2  # a 4xx is not retried


async def test_sink_retries_5xx_and_fails_after_its_attempts() -> None:
    async def handler(req: Request) -> Response:
        return Response(503, b"busy")

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        src = TestSource(["a"])
        out = HttpSink(client, "/x", retry=NO_WAIT)
        await (src | tf.sink(out)).run()
    [(_, reason)] = src.failed
    assert (
        str(reason)
        == f"HTTP 503 Service Unavailable from POST {server.url}/x: busy (after 3 attempts)"
    )
    assert len(server.requests) == 3
    assert out.retried == 2


async def test_sink_429_honours_retry_after_seconds(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        if len(times) == 1:
            return httpx.Response(429, headers={"retry-after": "7"})
        return httpx.Response(200)

    async with mock_client(handler) as client:
        out = HttpSink(client, "/x", retry=tf.Retry(attempts=3, backoff=tf.Backoff.constant(0.5)))
        src = TestSource([1])
        await (src | tf.sink(out)).run()
    assert src.acked == [1]
    assert times[1] - times[0] == 7.0


async def test_sink_429_honours_retry_after_http_date(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        if len(times) == 1:
            when = email.utils.formatdate(time.time() + 30, usegmt=True)
            return httpx.Response(429, headers={"retry-after": when})
        return httpx.Response(200)

    async with mock_client(handler) as client:
        out = HttpSink(client, "/x", retry=tf.Retry(attempts=2, backoff=tf.Backoff.constant(0.1)))
        src = TestSource([1])
        await (src | tf.sink(out)).run()
    assert src.acked == [1]
    assert 28.9 <= times[1] - times[0] <= 30.0  # an HTTP date has whole seconds


async def test_sink_stops_retrying_at_the_retry_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # calls at t=0, 2, 4; a fourth would start at 6, past the 5 s deadline: the 503 is final
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(503, text="busy")

    retry = tf.Retry(attempts=10, backoff=tf.Backoff.constant(2.0), deadline=5.0)
    async with mock_client(handler) as client:
        src = TestSource([1])
        out = HttpSink(client, "/x", retry=retry)
        await (src | tf.sink(out)).run()
    assert times == [0.0, 2.0, 4.0]
    [(_, reason)] = src.failed
    assert str(reason) == (
        "HTTP 503 Service Unavailable from POST http://api.test/x: busy (no retry after 3 "
        "attempt(s) in 4.0 s: the next, in 2 s, would pass the retry deadline of 5 s)"
    )
    assert isinstance(reason, HttpStatusError)
    assert out.retried == 2


async def test_a_retry_after_past_the_deadline_is_not_waited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the server asks for 30 s, the deadline allows 10: the source fails at once, no wait
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "30"}, text="slow down")

    retry = tf.Retry(attempts=5, backoff=tf.Backoff.constant(0.1), deadline=10.0)
    async with mock_client(handler) as client:
        source = HttpSource(client, "/items", retry=retry)
        start = trio.current_time()
        with pytest.raises(tf.PipelineError) as info:
            await (source | tf.sink(print)).run()
    assert trio.current_time() - start < 1.0
    assert isinstance(info.value.__cause__, HttpStatusError)
    assert "would pass the retry deadline of 10 s" in str(info.value.__cause__)


async def test_transport_errors_stop_at_the_deadline_with_their_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(trio.current_time())
        raise httpx.ConnectError("refused", request=request)

    retry = tf.Retry(attempts=10, backoff=tf.Backoff.constant(3.0), deadline=5.0)
    async with mock_client(handler) as client:
        src = TestSource([1])
        await (src | tf.sink(HttpSink(client, "/x", retry=retry))).run()
    assert calls == [0.0, 3.0]
    [(_, reason)] = src.failed
    assert type(reason) is HttpTransportError
    assert isinstance(reason.__cause__, httpx.ConnectError)


async def test_sink_429_asking_too_long_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "3600"}, text="slow down")

    async with mock_client(handler) as client:
        src = TestSource([1])
        await (src | tf.sink(HttpSink(client, "/x", max_retry_after=60))).run()
    [(_, reason)] = src.failed
    assert str(reason) == (
        "HTTP 429 Too Many Requests from POST http://api.test/x: slow down "
        "(Retry-After 3600s exceeds max_retry_after=60)"
    )
    assert isinstance(reason, HttpStatusError)
    assert reason.retry_after == 3600.0


async def test_sink_retries_when_the_server_closes_without_answering() -> None:
    async def handler(req: Request) -> Response:
        if len(server.requests) == 1:
            raise Drop  # the connection closes half-way: no response at all
        return Response(200)

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        out = HttpSink(client, "/x", retry=NO_WAIT)
        src = TestSource(["a"])
        await (src | tf.sink(out)).run()
    assert src.acked == ["a"]
    assert out.retried == 1


async def test_sink_connection_refused_maps_to_transport_error() -> None:
    with trio.socket.socket() as sock:  # a port that nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with httpx.AsyncClient() as client:
        src = TestSource(["a"])
        await (src | tf.sink(HttpSink(client, f"http://127.0.0.1:{port}/x", retry=NO_WAIT))).run()
    [(_, reason)] = src.failed
    assert isinstance(reason, HttpTransportError)
    assert isinstance(reason, ConnectionError)
    assert isinstance(reason.__cause__, httpx.ConnectError)
    assert str(reason).startswith(f"POST http://127.0.0.1:{port}/x: ConnectError: ")


async def test_sink_stalling_server_times_out() -> None:
    async def handler(req: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError

    async with serve_http(handler) as server, httpx.AsyncClient(timeout=0.1) as client:
        src = TestSource(["a"])
        with trio.fail_after(5):
            await (src | tf.sink(HttpSink(client, server.url, retry=NO_WAIT))).run()
    [(_, reason)] = src.failed
    assert isinstance(reason, HttpTimeout)
    assert len(server.requests) == 3


async def test_sink_cancelled_mid_request_leaves_the_client_usable() -> None:
    stall = True
    arrived = trio.Event()

    async def handler(req: Request) -> Response:
        arrived.set()
        if stall:
            await trio.sleep_forever()
        return Response(200)

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        src = TestSource(["a"])
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon((src | tf.sink(HttpSink(client, "/x"))).run)
                await arrived.wait()
                nursery.cancel_scope.cancel()  # the hard stop, in the middle of the request
        assert not scope.cancelled_caught
        assert (src.acked, src.failed) == ([], [])  # left unsettled: a broker would redeliver
        stall = False
        src2 = TestSource(["b"])
        await (src2 | tf.sink(HttpSink(client, "/x"))).run()
        assert src2.acked == ["b"]


async def test_sink_large_batch() -> None:
    async def handler(req: Request) -> Response:
        return Response(200)

    big = "x" * 100_000
    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        await (
            tf.from_iterable([big] * 50) | tf.batch(50) | tf.sink(HttpSink(client, "/big"))
        ).run()
    [request] = server.requests
    assert len(request.body) > 5_000_000
    assert json.loads(request.body) == [big] * 50


async def test_sink_each_mode_failure_names_the_first_error() -> None:
    async def handler(req: Request) -> Response:
        return Response(400, b"no") if req.json() % 2 else Response(200)

    async with serve_http(handler) as server, httpx.AsyncClient(base_url=server.url) as client:
        src = TestSource(range(4))
        await (src | tf.batch(4) | tf.sink(HttpSink(client, "/x", batch="each"))).run()
    assert sorted(d for d, _ in src.failed) == [0, 1, 2, 3]  # the call fails as a whole
    reason = src.failed[0][1]
    assert isinstance(reason, HttpStatusError)
    assert str(reason).endswith(": no (and 1 more of 4)")


# --- pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("inf", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1445412470.0) == expected


def test_arguments_are_validated() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match=r"^batch='rows' must be 'array' or 'each'$"):
        HttpSink(client, "/x", batch="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^concurrency=0 must be a positive integer$"):
        HttpSink(client, "/x", concurrency=0)
    with pytest.raises(ValueError, match=r"^HttpSink needs url= \(or request=\)$"):
        HttpSink(client)
    with pytest.raises(ValueError, match=r"^interval=-1 must be a non-negative number of seconds$"):
        HttpSource(client, "/x", interval=-1)
    with pytest.raises(ValueError, match=r"^max_pages=0 must be a positive integer$"):
        HttpSource(client, "/x", max_pages=0)


def test_reprs() -> None:
    client = httpx.AsyncClient()
    out = HttpSink(client, "http://h/x")
    assert repr(HttpSource(client, "http://h/feed") | tf.batch(10) | tf.sink(out)) == (
        "HttpSource('http://h/feed') | batch(10, 1.0) | sink(HttpSink(POST http://h/x))"
    )
