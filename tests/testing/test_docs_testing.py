"""Every ```python block of docs/testing.md runs as copied: a block that defines tests passes
under pytest (pytest-trio's trio mode, the trioflow plugin), any other block runs as a program;
only a block preceded by ``<!-- fragment -->`` is exempt."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent.parent / "docs" / "testing.md"
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def blocks() -> list[tuple[int, str]]:
    """(line number, code) of every python block not marked as a fragment."""
    text = DOC.read_text()
    found = []
    for m in FENCE.finditer(text):
        if m.group("before").strip() == "<!-- fragment -->":
            continue
        line = text.count("\n", 0, m.start("code")) + 1
        found.append((line, m.group("code")))
    return found


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_doc_has_blocks_to_run() -> None:
    programs = [code for _, code in blocks() if "def test_" not in code]
    tests = [code for _, code in blocks() if "def test_" in code]
    assert len(programs) >= 4
    assert len(tests) >= 6


def test_the_test_blocks_pass(tmp_path: Path) -> None:
    expected = 0
    for line, code in blocks():
        if "def test_" in code:
            (tmp_path / f"test_doc_line_{line}.py").write_text(code + "\n")
            expected += len(re.findall(r"^(?:async )?def test_", code, re.M))
    done = run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "trio_mode=true", "-W", "error"],
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{expected} passed" in done.stdout


@pytest.mark.parametrize(
    "line", [line for line, code in blocks() if "def test_" not in code], ids=lambda n: f"line{n}"
)
def test_the_program_blocks_run(line: int, tmp_path: Path) -> None:
    code = dict(blocks())[line]
    path = tmp_path / "example.py"
    path.write_text(code + "\n")
    done = run(["-W", "error", str(path)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    if "planted_bug" in code:  # the "testing services" example finds the bug, names its seed
        assert "found the planted bug with seed 3:" in done.stdout
        assert "  seed: 3\n" in done.stdout
        assert "shortest fault schedule" in done.stdout
