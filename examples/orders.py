"""A pipeline for the ``trioflow`` command: a module-level ``pipeline`` it can run and draw.

It makes 2,000 orders, rejects the malformed ones (every 97th has no amount), prices the others
through a slow call (8 at once, retried on timeouts), and writes them to SQLite in batches of
100 (the file named by ``ORDERS_DB``, default ``orders.db``)::

    trioflow graph examples/orders.py
    trioflow run examples/orders.py --failed-exit-code 0 --metrics-port 9464

The run's report lists 21 failures, all ``KeyError 'amount'``: they fail in ``validate`` and
never reach the database.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from typing import Any

import trio

import trioflow as tf

ORDERS = 2000
DB = os.environ.get("ORDERS_DB", "orders.db")


def receive(i: int) -> dict[str, Any]:
    """Order number ``i`` as it would arrive: every 97th has lost its amount."""
    order: dict[str, Any] = {"id": i, "account": f"acct-{i % 50:02d}", "amount": i % 300}
    if i % 97 == 5:
        del order["amount"]
    return order


def validate(order: dict[str, Any]) -> dict[str, Any]:
    return {"id": order["id"], "account": order["account"], "amount": float(order["amount"])}


async def price(order: dict[str, Any]) -> dict[str, Any]:
    await trio.sleep(0.001)  # a call to a pricing service
    return {**order, "total": round(order["amount"] * 1.2, 2)}


def _write(rows: list[dict[str, Any]]) -> None:
    with closing(sqlite3.connect(DB)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, account TEXT, total REAL)"
        )
        db.executemany("INSERT OR REPLACE INTO orders VALUES (:id, :account, :total)", rows)


async def save(batch: list[dict[str, Any]]) -> None:
    await trio.to_thread.run_sync(_write, batch)


pipeline = (
    tf.from_iterable(range(ORDERS))
    | tf.process(receive, name="receive")
    | tf.process(validate, name="validate")
    | tf.process(price, n=8, retry=tf.Retry(attempts=3, on=(TimeoutError,)), name="price")
    | tf.batch(100, 0.5)
    | tf.sink(save, name="save")
)

if __name__ == "__main__":
    report = trio.run(pipeline.run)
    print(f"acked {report.acked}, failed {report.failed}")
