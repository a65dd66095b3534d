"""Every program in examples/ runs, as a user would run it, and does what it says."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_events_end_to_end_and_resume(tmp_path: Path) -> None:
    script = str(EXAMPLES / "import_events.py")
    first = run_example(script, "--events", "3000", "--out", str(tmp_path), "--fresh")
    assert first.returncode == 0, first.stderr
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 3000
    with closing(sqlite3.connect(tmp_path / "events.db")) as db:
        rows = db.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
    dead = [json.loads(x) for x in (tmp_path / "dead_letter.jsonl").read_text().splitlines()]
    # every event is either in the database or in the dead letter, with a reason
    assert rows[0] == rows[1]
    assert rows[0] + len(dead) == 3000
    assert dead
    assert all(d["reason"] for d in dead)
    assert any("@ $.amount" in d["reason"] for d in dead)  # the field is named
    assert "retried" in first.stdout
    assert "unsettled         0" in first.stdout

    # a second run resumes from the checkpoint: nothing left to read, nothing duplicated
    second = run_example(script, "--out", str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert "received          0" in second.stdout
    with closing(sqlite3.connect(tmp_path / "events.db")) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == rows[0]


def test_orders_through_the_cli_run_and_graph(tmp_path: Path) -> None:
    script = str(EXAMPLES / "orders.py")
    db = tmp_path / "orders.db"
    env = {**os.environ, "ORDERS_DB": str(db)}
    command = [sys.executable, "-m", "trioflow"]
    graph = subprocess.run(
        [*command, "graph", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert graph.returncode == 0, graph.stderr
    assert [line.split()[1] for line in graph.stdout.splitlines()[1:]] == [
        "receive",
        "validate",
        "price",
        "batch(100,",
        "save",
    ]
    run = subprocess.run(
        [*command, "run", script, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert run.returncode == 1  # some orders failed: the default --failed-exit-code
    report = json.loads(run.stdout)
    malformed = sum(1 for i in range(2000) if i % 97 == 5)
    assert (report["received"], report["failed"]) == (2000, malformed)
    assert report["failed_by_reason"] == {"KeyError": malformed}
    assert report["acked"] == 2000 - malformed
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 2000 - malformed
    # the failures were logged with the user's line, not only counted
    assert "stage 'validate' failed an item: KeyError: 'amount'" in run.stderr


def test_redis_workers_graph() -> None:
    # running it needs Redis: tests/test_workers.py runs it under --workers against a real one
    graph = subprocess.run(
        [sys.executable, "-m", "trioflow", "graph", str(EXAMPLES / "redis_workers.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TRIOFLOW_WORKER": "3"},
    )
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout.splitlines()[0] == "RedisStreamSource('orders', 'pricing', 'worker-3')"
