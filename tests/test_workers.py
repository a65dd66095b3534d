"""``trioflow run --workers N`` against a real Redis consumer group: one worker is SIGKILLed,
the supervisor restarts it, and nothing is lost.

What is asserted, with 3,000 entries published and two workers of ``examples/redis_workers.py``
(each appends what it priced to its own file, then acks):

* every published id is in the output (nothing lost), and an id is there more than once only if
  it was in the killed worker's pending list right after the kill (taken, maybe written, not
  acked: redelivered to the restarted worker, at-least-once);
* that pending list was not empty (the kill did catch entries in flight), and at the end the
  group has no pending entry, has read all 3,000 (``entries-read``) and dead-lettered none;
* the supervisor restarted worker 1 (its log and ``trioflow_worker_restarts_total``), served
  both workers' series with a ``worker`` label on one endpoint, and on SIGTERM drained both
  (exit status 0 for each and for itself).

And a worker whose supervisor is SIGKILLed sees its stdin close, drains (everything it wrote
was acked) and exits; a new supervisor's worker of the same name reads back what was left
pending, so every entry is written in the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from connectors.servers import RedisServer
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from trioflow.connectors.redis import connect

pytestmark = pytest.mark.server

EXAMPLE = Path(__file__).parent.parent / "examples" / "redis_workers.py"
ENTRIES = 3000
STREAM, GROUP = "orders", "pricing"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def in_redis(port: int, fn: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        async with connect(port=port) as client:
            return await fn(client)

    return trio.run(run)


async def publish(client: Any) -> None:
    pipe = client.pipeline(transaction=False)
    async with pipe:
        for i in range(ENTRIES):
            pipe.xadd(STREAM, {"id": str(i), "amount": str(i % 100)})


class Lines:
    """A child's stderr, read by a thread, kept for the test to search."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count} x {pattern!r} in:\n" + "\n".join(self.lines))


def output(out: Path) -> tuple[Counter[int], dict[str, int]]:
    ids: Counter[int] = Counter()
    per_file: dict[str, int] = {}
    for path in sorted(out.glob("worker-*.jsonl")):
        lines = path.read_text().splitlines()
        per_file[path.name] = len(lines)
        ids.update(json.loads(line)["id"] for line in lines)  # every line whole
    return ids, per_file


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_workers_one_killed_and_restarted_nothing_lost(
    redis: RedisServer, tmp_path: Path
) -> None:
    in_redis(redis.port, publish)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "REDIS_PORT": str(redis.port),
        "ORDERS_STREAM": STREAM,
        "ORDERS_OUT": str(out),
    }
    command = [sys.executable, "-m", "trioflow", "run", str(EXAMPLE), "--workers", "2"]
    command += ["--metrics-port", "0", "--json", "--no-progress"]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stderr is not None
            log = Lines(parent.stderr)
            metrics_url = log.wait_for(r"metrics of 2 workers at (http://\S+)")[0].group(1)
            pid = int(log.wait_for(r"worker 1 started \(pid (\d+)\)")[0].group(1))
            # worker 1 is mid-stream: it has written some, and entries are still coming
            wait_until(
                lambda: output(out)[1].get("worker-1.jsonl", 0) >= 100,
                30,
                "worker 1 to write 100 orders",
            )
            os.kill(pid, signal.SIGKILL)

            async def pending_of_killed(client: Any) -> set[int]:
                entries = await client.xpending(
                    STREAM, GROUP, "-", "+", 10_000, consumer="worker-1"
                )
                found = await client.xrange(STREAM, "-", "+")
                number = {entry.identifier: int(entry.field_values["id"]) for entry in found}
                return {number[e.identifier] for e in entries}

            in_flight = in_redis(redis.port, pending_of_killed)
            assert in_flight, "the kill caught no entry in flight: nothing was tested"

            log.wait_for(r"worker 1 killed by SIGKILL: restarting in [\d.]+ s")
            log.wait_for(r"worker 1 started \(pid (\d+)\)", count=2)

            async def pending(client: Any) -> int:
                return int((await client.xpending(STREAM, GROUP)).pending)

            wait_until(
                lambda: len(output(out)[0]) == ENTRIES and in_redis(redis.port, pending) == 0,
                60,
                "every entry written and acked",
            )
            scraped = httpx.get(metrics_url, timeout=10).text
            om = httpx.get(
                metrics_url,
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                timeout=10,
            )
        finally:
            parent.send_signal(signal.SIGTERM)
            assert parent.stdout is not None
            stdout = parent.stdout.read()  # not communicate(): the thread reads stderr
            parent.wait(60)
            log.thread.join(10)

    assert parent.returncode == 0, "\n".join(log.lines)
    final = json.loads(stdout.strip().splitlines()[-1])
    assert [(w["worker"], w["exit_status"], w["restarts"]) for w in final["workers"]] == [
        (0, 0, 0),
        (1, 0, 1),
    ]
    log.wait_for(r"\[worker 1\] trioflow: draining")
    log.wait_for(r"\[worker 0\] trioflow: draining")

    ids, _ = output(out)
    assert set(ids) == set(range(ENTRIES))
    repeated = {i for i, n in ids.items() if n > 1}
    assert repeated <= in_flight
    print(f"in flight at the kill: {len(in_flight)}; written twice: {len(repeated)}")

    async def group(client: Any) -> tuple[int, int, int]:
        info = {g["name"]: g for g in await client.xinfo_groups(STREAM)}[GROUP]
        dead = await client.xlen(f"{STREAM}:dead")
        return int(info["pending"]), int(info["entries-read"]), int(dead)

    assert in_redis(redis.port, group) == (0, ENTRIES, 0)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
    }
    labels = (("pipeline", "redis_workers"), ("worker", "1"))
    assert samples[("trioflow_worker_restarts_total", labels)] == 1.0
    assert samples[("trioflow_worker_up", labels)] == 1.0
    # each worker's own series, told apart by the worker label (not summed: see docs/cli.md)
    received = {
        dict(k[1])["worker"]: v for k, v in samples.items() if k[0] == "trioflow_received_total"
    }
    assert set(received) == {"0", "1"}
    assert received["0"] > 0
    assert received["1"] > 0
    # the supervisor speaks OpenMetrics too, when asked
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    om_samples = {
        (s.name, tuple(sorted(s.labels.items())))
        for family in parse_openmetrics(om.text)
        for s in family.samples
    }
    assert ("trioflow_worker_restarts_total", labels) in om_samples
    assert any(name == "trioflow_end_to_end_latency_seconds_bucket" for name, _ in om_samples)


def process_ended(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie nobody reaped: containers' init may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def supervisor(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``trioflow run ... --workers`` started quietly, its log (stderr) to be read as lines."""
    return subprocess.Popen(
        [*command, "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_worker_whose_supervisor_is_killed_drains_and_exits(
    redis: RedisServer, tmp_path: Path
) -> None:
    in_redis(redis.port, publish)
    out = tmp_path / "out"
    env = {**os.environ, "REDIS_PORT": str(redis.port), "ORDERS_OUT": str(out)}
    command = [sys.executable, "-m", "trioflow", "run", str(EXAMPLE), "--workers", "1"]
    with supervisor(command, env) as parent:
        assert parent.stderr is not None
        log = Lines(parent.stderr)
        pid = int(log.wait_for(r"worker 0 started \(pid (\d+)\)")[0].group(1))
        wait_until(lambda: output(out)[1].get("worker-0.jsonl", 0) >= 100, 30, "some work")
        parent.kill()
        parent.wait(10)
        wait_until(lambda: process_ended(pid), 30, "the orphaned worker to exit")

    async def pending_ids(client: Any) -> set[int]:
        entries = await client.xpending(STREAM, GROUP, "-", "+", 10_000, consumer="worker-0")
        found = await client.xrange(STREAM, "-", "+")
        number = {entry.identifier: int(entry.field_values["id"]) for entry in found}
        return {number[e.identifier] for e in entries}

    # it stopped pulling (it did not run to the end) and drained: everything it wrote was
    # acked; what is still pending (read from Redis, never handed to the stages) was not written
    written, _ = output(out)
    assert 100 <= len(written) < ENTRIES
    left = in_redis(redis.port, pending_ids)
    assert not left & set(written)

    # a new supervisor: worker-0 reads back what was left pending, and nothing is lost
    with supervisor(command, env) as again:
        assert again.stderr is not None
        log = Lines(again.stderr)
        try:
            wait_until(lambda: set(output(out)[0]) == set(range(ENTRIES)), 60, "every entry")
        finally:
            again.send_signal(signal.SIGTERM)
            again.wait(60)
            log.thread.join(10)
    assert again.returncode == 0, "\n".join(log.lines)
    assert in_redis(redis.port, pending_ids) == set()
