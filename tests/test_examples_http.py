"""The HTTP and WebSocket examples run as a user would run them, and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_http_poll() -> None:
    done = run_example("http_poll.py")
    assert done.returncode == 0, done.stderr
    assert "received          100" in done.stdout
    assert "archived          98" in done.stdout
    assert "Order: expected int, got str @ $.qty" in done.stdout
    assert "Order: required field missing @ $.sku" in done.stdout
    assert "archive retried   1" in done.stdout


def test_websocket_acks() -> None:
    done = run_example("websocket_acks.py")
    assert done.returncode == 0, done.stderr
    assert "sent              30" in done.stdout
    assert "acked ok          27" in done.stdout
    assert "p7    DecodeError: Payment: expected int, got str @ $.cents" in done.stdout
