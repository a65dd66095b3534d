"""Every program in examples/ runs, as a user would run it, and does what it says."""

from __future__ import annotations

import json
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
