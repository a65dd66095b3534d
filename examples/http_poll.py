"""Poll a paginated HTTP feed, decode each record, POST batches to an archive service.

Starts its own local HTTP server (a tiny trio + h11 app: a cursor-paginated ``/orders`` feed and
an ``/archive`` endpoint that answers 429 once, to show ``Retry-After``), then runs::

    HttpSource(/orders, by cursor) | decode(Order) | batch(25, 0.5) | sink(HttpSink(/archive))

Bad records (a wrong type, a missing field) fail with a reason naming the field and go to the
dead-letter list; everything else reaches the archive. Run: ``python examples/http_poll.py``.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import h11
import httpx
import trio

import trioflow as tf
from trioflow.connectors.http import HttpSink, HttpSource, cursor

ORDERS = [{"id": i, "sku": f"sku-{i % 7}", "qty": i % 5 + 1} for i in range(1, 101)]
ORDERS[16]["qty"] = "lots"  # a wrong type
del ORDERS[41]["sku"]  # a missing field
PAGE = 20


@attrs.frozen
class Order:
    id: int
    sku: str
    qty: int


class App:
    """The server side: the feed, and an archive that is briefly overloaded."""

    def __init__(self) -> None:
        self.archived: list[dict[str, Any]] = []
        self.throttled = False

    def handle(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        url = httpx.URL(target)
        if method == "GET" and url.path == "/orders":
            start = int(url.params.get("after", "0"))
            page = ORDERS[start : start + PAGE]
            more = start + PAGE < len(ORDERS)
            return 200, {}, {"orders": page, "next": str(start + PAGE) if more else None}
        if method == "POST" and url.path == "/archive":
            if not self.throttled:
                self.throttled = True
                return 429, {"retry-after": "1"}, {"error": "slow down"}
            self.archived.extend(json.loads(body))
            return 204, {}, None
        return 404, {}, {"error": "not found"}

    async def connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                head, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        head = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # the client closed the connection
                        return
                assert head is not None
                status, headers, payload = self.handle(
                    head.method.decode(), head.target.decode(), body
                )
                data = b"" if payload is None else json.dumps(payload).encode()
                hs = [*headers.items(), ("content-length", str(len(data)))]
                if payload is not None:
                    hs.append(("content-type", "application/json"))
                out = conn.send(h11.Response(status_code=status, headers=hs))
                out += conn.send(h11.Data(data=data)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()


async def main() -> None:
    app = App()
    dead: list[tf.Message[Any]] = []

    async def dead_letter(messages: list[tf.Message[Any]]) -> None:
        dead.extend(messages)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, app.connection, 0)
        port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            source = HttpSource(
                client,
                "/orders",
                records=lambda response: response.json()["orders"],
                next_page=cursor("next", "after"),
            )
            archive = HttpSink(client, "/archive")
            pipeline = (
                source | tf.decode(Order, format=None) | tf.batch(25, 0.5) | tf.sink(archive, n=2)
            ).on_failure(dead_letter)
            report = await pipeline.run()
        nursery.cancel_scope.cancel()

    print(f"received          {report.received}")
    print(f"archived          {len(app.archived)}")
    print(f"failed            {report.failed}")
    for m in dead:
        print(f"  dead letter     {m.data} -> {m.reason}")
    print(f"archive retried   {archive.retried} (after a 429 with Retry-After: 1)")
    print(f"elapsed           {report.elapsed:.2f}s")
    assert report.acked == len(app.archived) == len(ORDERS) - 2


if __name__ == "__main__":
    trio.run(main)
