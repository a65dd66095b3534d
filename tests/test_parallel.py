"""process(..., parallel=True): sync functions in trio-parallel worker processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trioflow as tf
from trioflow.testing import TestSource

pytest.importorskip("trio_parallel")


async def test_results_and_failures_come_back_from_worker_processes() -> None:
    src = TestSource(["1", "x", "3", "40"])
    out: list[int] = []
    pipeline = src | tf.process(int, n=2, parallel=True, ordered=True) | tf.sink(out.append)
    report = await pipeline.run()
    assert out == [1, 3, 40]
    [(data, reason)] = src.failed
    assert data == "x"
    assert isinstance(reason, ValueError)
    assert report.failed_by_reason == {"ValueError": 1}


def test_arguments_are_checked() -> None:
    async def coro(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"parallel=True runs a plain \(sync\) function"):
        tf.process(coro, parallel=True)
    with pytest.raises(ValueError, match=r"thread=True and parallel=True: choose one$"):
        tf.process(int, parallel=True, thread=True)


SCRIPT = """
import trio
import trioflow as tf

async def main():
    out = await tf.collect(tf.from_iterable(["1", "2"]) | tf.process(int, n=2, parallel=True))
    print(sorted(out))

{run}
"""


def run_script(tmp_path: Path, run: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(SCRIPT.format(run=run)))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )


def test_entry_script_with_main_guard_runs(tmp_path: Path) -> None:
    done = run_script(tmp_path, 'if __name__ == "__main__":\n    trio.run(main)')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2]"


def test_entry_script_without_main_guard_fails_with_a_clear_message(tmp_path: Path) -> None:
    done = run_script(tmp_path, "trio.run(main)")
    assert done.returncode != 0
    assert "put the code that runs the pipeline under" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
