"""examples/service_test.py runs as a user would run it: it finds the planted bug and its seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "service_test.py"


def test_service_example_finds_the_planted_bug() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "found the planted bug with seed 3:" in done.stdout
    assert "  seed: 3" in done.stdout
    assert "while expect.processed(data) is False" in done.stdout
    assert "shortest fault schedule" in done.stdout
    assert "the fixed service passed 20 seeds" in done.stdout
