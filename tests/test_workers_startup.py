"""A SIGTERM that arrives while the supervisor is still spawning its workers reaches every one of
them (a worker spawned after drain() began used to miss the signal and run on, and the supervisor
waited for it forever). A worker the signal reaches before its pipeline started had pulled
nothing: it ends at once, and the run still ends with status 0."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

PIPELINE = """
import itertools

import trio

import trioflow as tf


async def work(x: int) -> None:
    await trio.sleep(0.001)


base = tf.from_iterable(itertools.count())


class Shared(type(base)):  # stands for a broker source: it shares work between processes
    shares_work = True


source = Shared(**{a.name: getattr(base, a.name) for a in type(base).__attrs_attrs__ if a.init})
pipeline = source | tf.sink(work)
"""


def test_a_sigterm_during_startup_drains_every_worker(tmp_path: Path) -> None:
    target = tmp_path / "forever.py"
    target.write_text(PIPELINE)
    log_path = tmp_path / "log"
    with (
        log_path.open("w+") as log,
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trioflow",
                "run",
                str(target),
                "--workers",
                "6",
                "--no-progress",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=tmp_path,
        ) as parent,
    ):
        deadline = time.monotonic() + 60
        while "started (pid" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.001)
        parent.send_signal(signal.SIGTERM)  # others are still being spawned
        try:
            status = parent.wait(60)
        finally:
            if parent.poll() is None:
                parent.kill()
    text = log_path.read_text()
    started = re.findall(r"worker (\d+) started \(pid (\d+)\)", text)
    assert sorted(index for index, _ in started) == [str(i) for i in range(6)], text
    assert status == 0, text
    for _, pid in started:  # none left behind
        status_file = Path(f"/proc/{pid}/status")
        assert not status_file.exists() or "\nState:\tZ" in status_file.read_text()
