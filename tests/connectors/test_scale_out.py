"""Scale-out: three worker processes share one stream; one is killed; nothing is lost.

The workers are the bundled import example (``--source redis``) writing one SQLite file that
upserts by entry id. A worker killed with SIGKILL leaves entries in its pending list; the others
claim them after ``--claim-idle`` seconds. At the end every entry is in the database exactly once,
the group's pending list is empty, and nothing went to the dead letter.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio

from trioflow.connectors.redis import connect

from .servers import RedisServer

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "import_events.py"
ENTRIES = 100_000


async def fill(port: int, stream: str) -> None:
    async with connect(port=port) as client:
        for start in range(0, ENTRIES, 2000):
            pipe = client.pipeline(transaction=False)
            async with pipe:
                for i in range(start, start + 2000):
                    pipe.xadd(
                        stream,
                        {
                            "id": str(i),
                            "kind": "order",
                            "account": f"acct-{i % 300:03d}",
                            "amount": str(i % 1000 / 10),
                            "ts": str(1_700_000_000 + i),
                        },
                    )


def db_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0


async def group_state(port: int, stream: str, group: str) -> tuple[int, int]:
    async with connect(port=port) as client:
        pending = (await client.xpending(stream, group)).pending
        dead = await client.xlen(f"{stream}:dead")
    return int(pending), int(dead)


@pytest.mark.slow
async def test_three_workers_one_killed_nothing_lost(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    stream, group = "scaleout", "importers"
    await fill(redis_server.port, stream)
    db = tmp_path / "events.db"
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(3)]  # noqa: SIM115, ASYNC230
    workers = [
        subprocess.Popen(  # noqa: ASYNC220 - started once; trio.run_process would own them
            [
                sys.executable,
                str(EXAMPLE),
                "--source",
                "redis",
                "--redis-port",
                str(redis_server.port),
                "--stream",
                stream,
                "--group",
                group,
                "--consumer",
                f"w{i}",
                "--out",
                str(tmp_path),
                "--claim-idle",
                "2",
            ],
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(3)
    ]
    try:
        # kill one worker mid-run, while it certainly holds un-acked entries
        deadline = time.monotonic() + 120
        while db_count(db) < ENTRIES // 4:
            assert time.monotonic() < deadline, "workers made no progress"
            assert all(w.poll() is None for w in workers), "a worker exited early"
            await trio.sleep(0.1)
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        while True:
            count = db_count(db)
            pending, _ = await group_state(redis_server.port, stream, group)
            if count >= ENTRIES and pending == 0:
                break
            assert time.monotonic() < deadline, f"stuck at {count} rows, {pending} pending"
            await trio.sleep(0.2)
        for w in (workers[0], workers[2]):
            w.send_signal(signal.SIGTERM)
        for w in (workers[0], workers[2]):
            assert w.wait(30) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for f in logs:
            f.close()
    with closing(sqlite3.connect(db)) as conn:
        total, distinct, ids = conn.execute(
            "SELECT count(*), count(DISTINCT entry), count(DISTINCT id) FROM events"
        ).fetchone()
    assert (total, distinct, ids) == (ENTRIES, ENTRIES, ENTRIES)
    assert await group_state(redis_server.port, stream, group) == (0, 0)
    dead_letter = tmp_path / "dead_letter.jsonl"
    assert not dead_letter.exists() or not dead_letter.read_text().strip()
    # the survivors drained gracefully and printed their reports
    received = [_received((tmp_path / f"w{i}.log").read_text()) for i in (0, 2)]
    assert all(r > 0 for r in received)


def _received(log: str) -> int:
    line = next(x for x in log.splitlines() if x.startswith("received"))
    return int(line.split()[1])
