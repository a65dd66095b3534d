"""A PostgreSQL restart during a run of inserts: the sink rides it out (real server, restarted).

The server is this module's own cluster, so that stopping it cannot disturb other tests.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.postgres import PostgresSink

from .servers import PostgresServer

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.server

DOWNTIME = 3.0  # seconds between the stop and the start, as in the restart that was reported


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    d = tempfile.mkdtemp(prefix="trioflow-pg-restart-")
    os.chmod(d, 0o755)
    server = PostgresServer(Path(d) / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pg_ctl(server: PostgresServer, *args: str) -> None:
    server.pg_ctl(*args)  # as the cluster's owner (postgres when root, else the current user)


def restart(server: PostgresServer) -> float:
    """Stop the server at once (as a crash would: transactions cut), wait, start it again;
    the seconds it could not be reached."""
    started = time.monotonic()
    pg_ctl(server, "-m", "immediate", "stop")
    time.sleep(DOWNTIME)
    options = f"-p {server.port} -c listen_addresses=127.0.0.1 -k {server.dir} -c fsync=off"
    pg_ctl(server, "-l", str(server.dir / "log"), "-w", "-o", options, "start")
    return time.monotonic() - started


def query(server: PostgresServer, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


async def test_a_server_restart_during_inserts_dead_letters_nothing(
    own_server: PostgresServer,
) -> None:
    total = 6000
    with psycopg.connect(own_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE restart_rows (id int PRIMARY KEY, name text, n int)")

    async def rows() -> AsyncIterator[dict[str, Any]]:
        for i in range(total):  # about 2 s of input without the restart
            yield {"id": i, "name": f"r{i}", "n": i}
            if i % 30 == 0:
                await trio.sleep(0.01)

    dead: list[tf.Message[Any]] = []
    outage = 0.0
    # the default retry, as a user gets it
    async with PostgresSink(own_server.dsn, "restart_rows", key="id") as save:
        pipeline = (tf.from_aiter(rows()) | tf.batch(100, 0.05) | tf.sink(save, n=2)).on_failure(
            dead.extend
        )
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(pipeline.serve)
                while save.rows_written < 1000:  # noqa: ASYNC110 - the database is polled
                    await trio.sleep(0.01)
                outage = await trio.to_thread.run_sync(restart, own_server)
                written_after_restart = save.rows_written
        report = handle.report
    assert report is not None
    print(
        f"restart: {outage:.1f} s unreachable; rows {total}, acked {report.acked}, "
        f"dead-lettered {len(dead)} ({report.failed_by_reason}), retried {report.retried}"
    )
    assert written_after_restart < total  # rows were still coming when the server came back
    assert dead == []
    assert (report.received, report.acked, report.failed) == (total, total, 0)
    assert report.retried > 0
    assert report.retried == save.retried  # every retry of the sink counted in the run
    assert query(own_server, "SELECT count(*), count(DISTINCT id), sum(n) FROM restart_rows") == [
        (total, total, sum(range(total)))
    ]
