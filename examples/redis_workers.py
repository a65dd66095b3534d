"""Orders from a Redis stream, shared by several worker processes: ``trioflow run --workers N``.

Every worker joins the consumer group ``pricing`` under the name ``worker-$TRIOFLOW_WORKER``
(the supervisor sets ``TRIOFLOW_WORKER`` to 0 .. N-1, the same number again when it restarts a
worker), so a restarted worker reads back at once the entries it had taken and not acked. Each
priced order is appended to ``$ORDERS_OUT/worker-<n>.jsonl`` before its entry is acked::

    trioflow run examples/redis_workers.py --workers 3 --metrics-port 9464

Settings from the environment: ``REDIS_PORT`` (6379), ``ORDERS_STREAM`` (``orders``),
``ORDERS_OUT`` (``orders-out``). Entries are fields ``id`` and ``amount``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSource

WORKER = os.environ.get("TRIOFLOW_WORKER", "0")
OUT = Path(os.environ.get("ORDERS_OUT", "orders-out"))


async def price(order: dict[str, str]) -> dict[str, Any]:
    await trio.sleep(0.002)  # a call to a pricing service
    return {"id": int(order["id"]), "total": round(float(order["amount"]) * 1.2, 2)}


def _append(lines: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"worker-{WORKER}.jsonl", "a") as f:
        f.write(lines)
        f.flush()


async def save(batch: list[dict[str, Any]]) -> None:
    await trio.to_thread.run_sync(_append, "".join(json.dumps(o) + "\n" for o in batch))


pipeline = (
    RedisStreamSource(
        os.environ.get("ORDERS_STREAM", "orders"),
        "pricing",
        f"worker-{WORKER}",
        port=int(os.environ.get("REDIS_PORT", "6379")),
        block=0.2,
    )
    | tf.process(price, n=8, name="price")
    | tf.batch(50, 0.2)
    | tf.sink(save, name="save")
)
