"""The ``trioflow`` command, run as a user runs it: subprocesses, real signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PIPELINES = str(HERE / "pipelines.py")


def trioflow(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trioflow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_progress(proc: subprocess.Popen[str]) -> None:
    """Until the pipeline has printed a progress line (so it is running)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("trioflow: ") and "received=" in line:
            return
    raise AssertionError("no progress line")


def test_run_finite_json_report() -> None:
    got = trioflow("run", f"{PIPELINES}:finite", "--json", "--no-progress")
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    assert report["received"] == report["acked"] == 200
    assert report["exit_status"] == 0
    assert list(report["stages"]) == ["work", "batch(20, 0.1)", "save"]


def test_run_table_and_factory() -> None:
    got = trioflow("run", f"{PIPELINES}:factory", "--no-progress")
    assert got.returncode == 0, got.stderr
    assert "received          200" in got.stdout
    assert got.stdout.splitlines()[-3].split()[:2] == ["work", "200"]


def test_failures_exit_1_or_configured() -> None:
    got = trioflow("run", f"{PIPELINES}:failing", "--no-progress")
    assert got.returncode == 1
    assert "ValueError" in got.stdout
    assert trioflow("run", f"{PIPELINES}:failing", "--failed-exit-code", "0").returncode == 0


def test_fatal_exits_3_with_one_line() -> None:
    got = trioflow("run", f"{PIPELINES}:fatal", "--no-progress")
    assert got.returncode == 3
    assert got.stderr.strip().splitlines() == [
        "trioflow: stage 'boom' stopped the pipeline: Fatal('the database is gone')"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "no such file: missing.py"),
        (["run", f"{PIPELINES}:nope"], f"{PIPELINES} has no attribute 'nope' (pipelines there:"),
        (["run", f"{PIPELINES}:not_a_pipeline"], "is an int, not a trioflow.Pipeline"),
        (["run", "no_such_module_xyz:p"], "no such module: no_such_module_xyz"),
        (["run", f"{PIPELINES}:finite", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", f"{PIPELINES}:finite", "--dashboard", "0.0.0.0:1"], "loopback addresses only"),
        (["run", f"{PIPELINES}:finite", "--metrics-port", "x"], "invalid int value: 'x'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_print_one_line(args: list[str], message: str) -> None:
    got = trioflow(*args)
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert lines[0].startswith("trioflow: error: ")
    assert message in lines[0]
    assert "Traceback" not in got.stderr


def test_graph_text_and_mermaid() -> None:
    text = trioflow("graph", f"{PIPELINES}:finite")
    assert text.returncode == 0
    assert text.stdout.splitlines() == [
        "from_iterable(range(0, 200))",
        "  -> work  process(work, n=4)  [process, n=4, buffer=1024]",
        "  -> batch(20, 0.1)  [batch, buffer=1024]",
        "  -> save  sink(save)  [sink, n=1, buffer=51]",
    ]
    mermaid = trioflow("graph", f"{PIPELINES}:finite", "--format", "mermaid")
    assert mermaid.stdout.splitlines()[0] == "flowchart LR"
    assert "    s1 --> s2" in mermaid.stdout.splitlines()


def test_first_sigint_drains_and_exits_0() -> None:
    proc = start("run", f"{PIPELINES}:endless", "--log-every", "0.2", "--json")
    try:
        wait_for_progress(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "draining" in err
    report = json.loads(out)
    assert report["received"] > 0
    assert report["unsettled"] == 0
    assert report["received"] == report["acked"]


def test_sigterm_drains_too() -> None:
    proc = start("run", f"{PIPELINES}:endless", "--log-every", "0.2", "--json")
    try:
        wait_for_progress(proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert json.loads(out)["unsettled"] == 0


def test_second_sigint_is_a_hard_stop() -> None:
    proc = start("run", f"{PIPELINES}:stuck", "--log-every", "0.2", "--json")
    try:
        wait_for_progress(proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None  # draining: the sink never finishes
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "hard stop" in err
    report = json.loads(out)
    assert report["unsettled"] > 0
    assert report["exit_status"] == 130


def test_drain_deadline_exits_4() -> None:
    proc = start("run", f"{PIPELINES}:stuck", "--log-every", "0.2", "--drain-timeout", "0.2")
    try:
        wait_for_progress(proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 4
    assert "unsettled" in out


def test_demo(tmp_path: Path) -> None:
    got = trioflow("demo", "--events", "500", "--out", str(tmp_path), "--fresh", "--no-progress")
    assert got.returncode == 0, got.stderr
    assert "received          500" in got.stdout
    assert "rows in db" in got.stdout
    assert (tmp_path / "dead_letter.jsonl").exists()


def test_script_entry_point_is_declared() -> None:
    pyproject = (HERE.parent.parent / "pyproject.toml").read_text()
    assert 'trioflow = "trioflow.__main__:main"' in pyproject
    env = {**os.environ}
    got = subprocess.run(
        [sys.executable, "-c", "from trioflow.__main__ import main; main()", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert got.returncode == 0
    assert "exit status:" in got.stdout


def test_failures_are_logged_as_text_or_json_at_the_chosen_level() -> None:
    import json as _json

    got = trioflow("run", f"{PIPELINES}:failing", "--no-progress", "--failed-exit-code", "0")
    assert "WARNING trioflow: stage" in got.stderr  # the first failures, in full
    assert "failed an item" in got.stderr
    got = trioflow(
        "run", f"{PIPELINES}:failing", "--no-progress", "--failed-exit-code", "0",
        "--log-format", "json",
    )  # fmt: skip
    records = [_json.loads(x) for x in got.stderr.splitlines() if x.startswith("{")]
    assert records
    assert {r["logger"] for r in records} == {"trioflow"}
    assert records[0]["level"] == "WARNING"
    assert "failed an item" in records[0]["message"]
    assert "Traceback" in records[0]["exc"]
    quiet = trioflow(
        "run", f"{PIPELINES}:failing", "--no-progress", "--failed-exit-code", "0",
        "--log-level", "error",
    )  # fmt: skip
    assert "failed an item" not in quiet.stderr
