"""SQLite batch sink on a real database file."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import pytest

import trioflow as tf
from trioflow.connectors.sqlite import SqliteSink


@attrs.frozen
class Item:
    id: int
    name: str


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


async def test_upsert_batches_are_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    async with SqliteSink(db, "items", key="id") as save:
        p1 = tf.from_iterable(Item(i, f"a{i}") for i in range(1000)) | tf.batch(100) | tf.sink(save)
        await p1.run()
        p2 = (
            tf.from_iterable({"id": i, "name": f"b{i}"} for i in range(500))
            | tf.batch(64)
            | tf.sink(save, n=2)
        )
        report = await p2.run()
    assert report.acked == 500
    assert rows(db, "SELECT count(*) FROM items") == [(1000,)]
    assert rows(db, "SELECT name FROM items WHERE id IN (1, 999) ORDER BY id") == [
        ("b1",),
        ("a999",),
    ]
    assert save.rows_written == 1500


async def test_ignore_keeps_first_and_insert_fails_the_batch_on_duplicates(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    async with SqliteSink(db, "t", key="id", mode="ignore") as save:
        await save([{"id": 1, "name": "first"}])
        await save([{"id": 1, "name": "second"}, {"id": 2, "name": "x"}])
    assert rows(db, "SELECT id, name FROM t ORDER BY id") == [(1, "first"), (2, "x")]
    failed: list[tf.Message[Any]] = []
    async with SqliteSink(db, "t", key="id", mode="insert") as strict:
        pipeline = tf.from_iterable(
            [{"id": 3, "name": "y"}, {"id": 1, "name": "dup"}, {"id": 4, "name": "z"}]
        )
        report = await (pipeline | tf.batch(2) | tf.sink(strict)).on_failure(failed.extend).run()
    assert report.failed_by_reason == {"IntegrityError": 2}
    assert sorted(m.data["id"] for m in failed) == [1, 3]  # the whole batch, rolled back
    assert rows(db, "SELECT id FROM t ORDER BY id") == [(1,), (2,), (4,)]


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^mode='upsert' needs key="):
        SqliteSink(tmp_path / "x.db", "t")
    with pytest.raises(ValueError, match=r"^table='t; drop' must be a plain SQL identifier"):
        SqliteSink(tmp_path / "x.db", "t; drop", key="id")


async def test_rejects_rows_it_cannot_store(tmp_path: Path) -> None:
    save = SqliteSink(tmp_path / "x.db", "t", key="id")
    with pytest.raises(TypeError, match=r"^SqliteSink: cannot store int"):
        await save([1])
