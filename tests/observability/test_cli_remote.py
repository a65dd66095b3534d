"""``trioflow run`` with ``--allow-remote`` and ``--allowed-host``: subprocesses, real HTTP."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent
PIPELINES = str(HERE / "pipelines.py")
# TEST-NET-3: never an address of this machine
FOREIGN = "203.0.113.7"


def trioflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--metrics-port", "0", "--metrics-host", FOREIGN],
            f"--metrics-host binds to loopback addresses only (127.0.0.1, ::1, localhost), not "
            f"'{FOREIGN}': it has no authentication; add --allow-remote to serve on it anyway",
        ),
        (
            ["--metrics-port", "0", "--metrics-host", "0.0.0.0"],
            "--metrics-host binds to loopback addresses only (127.0.0.1, ::1, localhost), not "
            "'0.0.0.0': it has no authentication; add --allow-remote to serve on it anyway",
        ),
        (
            ["--dashboard", f"{FOREIGN}:0"],
            f"--dashboard binds to loopback addresses only (127.0.0.1, ::1, localhost), not "
            f"'{FOREIGN}': it has no authentication; add --allow-remote to serve on it anyway",
        ),
        (
            ["--metrics-port", "0", "--allowed-host", "a/b"],
            "--allowed-host 'a/b' is not a host name or host:port",
        ),
    ],
)
def test_non_loopback_needs_allow_remote(args: list[str], message: str) -> None:
    got = trioflow("run", f"{PIPELINES}:finite", "--no-progress", *args)
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip().splitlines() == [f"trioflow: error: {message}"]


class Running:
    """``trioflow run`` in the background, with the addresses it printed."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trioflow",
                "run",
                f"{PIPELINES}:endless",
                "--no-progress",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.urls: dict[str, str] = {}

    def wait_for(self, *names: str) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 20
        while not set(names) <= set(self.urls) and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            match = re.search(r"(\w+) at (http://\S+)", line)
            if match:
                self.urls[match.group(1)] = match.group(2)
        assert set(names) <= set(self.urls), (self.urls, self.proc.poll())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=30)
        return self.proc.returncode


def test_allow_remote_lets_any_host_scrape() -> None:
    # loopback here (tests bind 127.0.0.1 only); in a container: --metrics-host 0.0.0.0
    run = Running("--metrics-port", "0", "--allow-remote", "--dashboard", "127.0.0.1:0")
    try:
        run.wait_for("metrics", "dashboard")
        for url in (run.urls["metrics"], run.urls["dashboard"] + "metrics.json"):
            got = httpx.get(url, headers={"Host": "app.default.svc:9464"})
            assert got.status_code == 200, url
    finally:
        assert run.stop() == 0


def test_allowed_host_names_the_hosts_answered() -> None:
    run = Running(
        "--metrics-port",
        "0",
        "--dashboard",
        "127.0.0.1:0",
        "--allowed-host",
        "metrics.internal",
        "--allowed-host",
        "dash.internal:8080",
    )
    try:
        run.wait_for("metrics", "dashboard")
        metrics, dashboard = run.urls["metrics"], run.urls["dashboard"]
        for url, host, status in [
            (metrics, "metrics.internal:9464", 200),
            (metrics, "evil.example", 421),
            (dashboard, "dash.internal:8080", 200),
            (dashboard, "dash.internal:8081", 421),
            (dashboard, "localhost:9999", 200),
        ]:
            assert httpx.get(url, headers={"Host": host}).status_code == status, (url, host)
    finally:
        assert run.stop() == 0


@pytest.mark.parametrize("option", ["--metrics-port", "--dashboard"])
def test_port_in_use_is_a_usage_error(option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        value = str(port) if option == "--metrics-port" else f"127.0.0.1:{port}"
        got = trioflow("run", f"{PIPELINES}:endless", "--no-progress", option, value)
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip().splitlines() == [
        f"trioflow: error: {option} {value}: Address already in use"
    ]


def test_version_prints_the_version_and_exits_0() -> None:
    import subprocess
    import sys

    import trioflow

    proc = subprocess.run(
        [sys.executable, "-m", "trioflow", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"trioflow {trioflow.__version__}"


def test_the_pipeline_label_defaults_to_the_target_name() -> None:
    from trioflow._cli import pipeline_name

    assert pipeline_name("examples/etl.py:pipeline") == "etl"
    assert pipeline_name("examples/etl.py") == "etl"
    assert pipeline_name("jobs.daily:orders") == "jobs.daily:orders"
    assert pipeline_name(None) == "demo"
    run = Running("--metrics-port", "0")
    try:
        run.wait_for("metrics")
        text = httpx.get(run.urls["metrics"]).text
        assert 'trioflow_received_total{pipeline="pipelines:endless"}' in text
    finally:
        assert run.stop() == 0
