"""PostgreSQL batch sink against a real PostgreSQL 15 on 127.0.0.1."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.postgres import PostgresSink

from .servers import PostgresServer

psycopg = pytest.importorskip("psycopg")
_tables = itertools.count()


def make_table(server: PostgresServer, ddl: str = "id int PRIMARY KEY, name text, n int") -> str:
    name = f"t{next(_tables)}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} ({ddl})")
    return name


def query(server: PostgresServer, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


async def test_upsert_is_idempotent(postgres_server: PostgresServer) -> None:
    table = make_table(postgres_server)
    rows = [{"id": i, "name": f"n{i}", "n": i} for i in range(1000)]
    async with PostgresSink(postgres_server.dsn, table, key="id") as save:
        pipeline = tf.from_iterable(rows) | tf.batch(200) | tf.sink(save)
        first = await pipeline.run()
        again = [{"id": i, "name": f"m{i}", "n": -i} for i in range(500)]
        second = await (tf.from_iterable(again) | tf.batch(200) | tf.sink(save)).run()
    assert (first.acked, second.acked) == (1000, 500)
    assert query(postgres_server, f"SELECT count(*), sum(n) FROM {table}") == [
        (1000, sum(range(500, 1000)) - sum(range(500)))
    ]
    assert query(postgres_server, f"SELECT name FROM {table} WHERE id = 7") == [("m7",)]


async def test_copy_mode(postgres_server: PostgresServer) -> None:
    table = make_table(postgres_server)
    rows = [{"id": i, "name": "x", "n": i} for i in range(20_000)]
    async with PostgresSink(postgres_server.dsn, table, mode="copy", pool_size=2) as save:
        report = await (tf.from_iterable(rows) | tf.batch(1000) | tf.sink(save, n=2)).run()
    assert report.acked == 20_000
    assert query(postgres_server, f"SELECT count(*) FROM {table}") == [(20_000,)]


async def test_permanent_error_fails_only_that_batch(postgres_server: PostgresServer) -> None:
    table = make_table(postgres_server)
    rows: list[dict[str, Any]] = [{"id": i, "name": "x", "n": i} for i in range(30)]
    rows[15]["n"] = "not a number"
    failed: list[tf.Message[Any]] = []
    async with PostgresSink(postgres_server.dsn, table, key="id") as save:
        pipeline = (tf.from_iterable(rows) | tf.batch(10) | tf.sink(save)).on_failure(failed.extend)
        report = await pipeline.run()
    assert (report.acked, report.failed) == (20, 10)
    assert report.failed_by_reason == {"DatabaseError": 10}
    assert sorted(m.data["id"] for m in failed) == list(range(10, 20))
    reason = str(failed[0].reason)
    assert reason.startswith(f"{table}: invalid input syntax for type integer")
    assert save.retried == 0
    assert query(postgres_server, f"SELECT count(*) FROM {table}") == [(20,)]


async def test_lost_connection_is_retried_on_a_fresh_one(postgres_server: PostgresServer) -> None:
    table = make_table(postgres_server)
    async with PostgresSink(postgres_server.dsn, table, key="id", pool_size=1) as save:
        await save([{"id": 1, "name": "a", "n": 1}])
        # the server drops the pooled connection
        query(
            postgres_server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'postgres' "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        report = await (tf.from_iterable([{"id": 2, "name": "b", "n": 2}]) | tf.sink(save)).run()
    assert report.acked == 1
    assert save.retried == 1
    assert query(postgres_server, f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]


async def test_cancel_stops_the_query_on_the_server(postgres_server: PostgresServer) -> None:
    table = make_table(postgres_server, "id int PRIMARY KEY, name text, n int")
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow() RETURNS trigger AS $$ "
            "BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        conn.execute(
            f"CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION slow()"
        )
    save = PostgresSink(postgres_server.dsn, table, key="id")
    started = time.monotonic()
    with trio.move_on_after(1.0) as scope:
        await (tf.from_iterable([{"id": 1, "name": "a", "n": 1}]) | tf.sink(save)).run()
    assert scope.cancelled_caught
    assert time.monotonic() - started < 5
    await trio.sleep(0.5)
    active = query(
        postgres_server,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query LIKE 'INSERT INTO%' AND state = 'active'",
    )
    assert active == [(0,)]
    assert query(postgres_server, f"SELECT count(*) FROM {table}") == [(0,)]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^mode='upsert' needs key="):
        PostgresSink("dsn", "t")
    with pytest.raises(ValueError, match=r"^pool_size=0 must be a positive integer$"):
        PostgresSink("dsn", "t", mode="copy", pool_size=0)
