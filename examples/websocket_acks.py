"""End-to-end acknowledgement over WebSocket: a producer learns the fate of each event it sent.

A pipeline listens with ``WebSocketServerSource`` (127.0.0.1, a free port); a producer connects
and pushes 30 payment events as ``{"id": ..., "data": ...}``. The pipeline decodes and validates
them; each event is answered ``{"id": ..., "status": "ok"}`` once stored, or ``"failed"`` with the
reason. The producer keeps what is still unanswered, and at most 8 events are in flight per
connection (``max_in_flight``). Run: ``python examples/websocket_acks.py``.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
import trio_websocket

import trioflow as tf
from trioflow.connectors.websocket import WebSocketServerSource


@attrs.frozen
class Payment:
    account: str
    cents: int


def check(payment: Payment) -> Payment:
    if payment.cents <= 0:
        raise ValueError(f"cents={payment.cents} must be positive")
    return payment


async def producer(port: int) -> dict[str, dict[str, Any]]:
    events = {
        f"p{i}": {"account": f"acct-{i % 4}", "cents": (i * 37) % 500 - 20} for i in range(30)
    }
    events["p7"] = {"account": "acct-3", "cents": "12.50"}  # a wrong type
    replies: dict[str, dict[str, Any]] = {}
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/payments") as ws:

        async def send_all() -> None:
            for ident, data in events.items():
                await ws.send_message(json.dumps({"id": ident, "data": data}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            while len(replies) < len(events):
                reply = json.loads(await ws.get_message())
                replies[reply["id"]] = reply
    return replies


async def main() -> None:
    stored: list[Payment] = []

    async def store(batch: list[Payment]) -> None:
        await trio.sleep(0.01)  # a database write
        stored.extend(batch)

    ports: list[int] = []
    source = WebSocketServerSource("127.0.0.1", 0, max_in_flight=8, on_listen=ports.append)
    pipeline = (
        source
        | tf.decode(Payment, format=None)
        | tf.process(check)
        | tf.batch(5, 0.05)
        | tf.sink(store)
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(pipeline.serve)
        replies = await producer(ports[0])
        handle.stop()

    ok = [r for r in replies.values() if r["status"] == "ok"]
    failed = [r for r in replies.values() if r["status"] == "failed"]
    print(f"sent              {len(replies)}")
    print(f"acked ok          {len(ok)}")
    print(f"failed            {len(failed)}")
    for r in failed:
        print(f"  {r['id']:<5} {r['reason']}")
    assert len(ok) == len(stored)
    assert len(ok) + len(failed) == 30


if __name__ == "__main__":
    trio.run(main)
