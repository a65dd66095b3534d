"""The live dashboard in a real browser: headless Chromium (Debian's ``chromium`` package).

Skipped when Chromium is missing, except in CI (``CI`` set), where .ci/run installs it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .cdp import CHROMIUM, QUIET_FLAGS

HERE = Path(__file__).parent
pytestmark = pytest.mark.server

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have chromium (see .ci/run)")
    pytest.skip("chromium is not installed", allow_module_level=True)

FLAGS = [*QUIET_FLAGS, "--window-size=1200,600", "--virtual-time-budget=3000"]


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def dashboard_url() -> object:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trioflow",
            "run",
            f"{HERE / 'pipelines.py'}:endless",
            "--no-progress",
            "--json",
            "--dashboard",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    url = None
    deadline = time.monotonic() + 20
    while url is None and time.monotonic() < deadline:
        match = re.search(r"dashboard at (http://\S+)", proc.stderr.readline())
        url = match.group(1) if match else None
    assert url is not None
    yield url
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def stage_figures(dom: str, stage_id: str) -> str:
    start = dom.index(f'data-stage-id="{stage_id}"')
    end = dom.find("</g>", start)
    return re.sub(r"<[^>]+>", " ", dom[start:end])


def live_dom(url: str, tries: int = 4) -> str:
    """The page once its WebSocket has delivered figures (a loaded machine may need a retry)."""
    dom = ""
    for _ in range(tries):
        dom = chromium("--dump-dom", url).stdout
        if 'class="badge running"' in dom:
            break
    return dom


def test_page_shows_the_graph_with_live_numbers(dashboard_url: str, tmp_path: Path) -> None:
    dom = live_dom(dashboard_url)
    assert 'class="badge running"' in dom
    # every stage of the graph is drawn, and its figures came over the WebSocket
    for stage_id, name in [("s0", "work"), ("s1", "batch(20, 0.1)"), ("s2", "save")]:
        text = stage_figures(dom, stage_id)
        assert name in text
        rate = re.search(r"rate ([\d,.]+k?)/s", text)
        assert rate is not None, text
        assert rate.group(1) not in ("0", "0.0"), text
    received = re.search(r'id="t-received">([\d,.]+k?)<', dom)
    assert received is not None
    assert received.group(1) != "0"

    # screenshots a moment apart: the picture is the graph, and its numbers move
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    chromium(f"--screenshot={first}", dashboard_url)
    chromium(f"--screenshot={second}", dashboard_url)
    for shot in (first, second):
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1200, 600)
        assert len(data) > 20_000  # a drawn page, not a blank one
    assert first.read_bytes() != second.read_bytes()
