"""Every ```python block of README.md and docs/ runs as a complete program (issue 15).

A block is run as its own script (``python -c``, in a fresh folder) and must exit 0. The line
just before a block's fence may say what it is:

* ``<!-- fragment -->``: part of a program (a class body, one call): not run.
* ``<!-- requires: redis -->`` (or ``postgres``, ``rabbitmq``, ``kafka``; several separated by
  commas): talks to that server on its default port on 127.0.0.1. Marked ``server``; skipped
  when the server does not answer there.

A block whose first line is a file name comment (``# invoices.py``) is that file: the blocks
after it on the same page run with it beside them, so they can import it (a tutorial's steps).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).parent.parent
FENCE = re.compile(r"^```python\s*$")
END = re.compile(r"^```\s*$")
FRAGMENT = "<!-- fragment -->"
REQUIRES = re.compile(r"^<!--\s*requires:\s*([\w\s,-]+?)\s*-->$")
NAMED = re.compile(r"^#\s*([\w-]+\.py)\s*$")
#: the default port of each server a block may require
SERVERS = {"redis": 6379, "postgres": 5432, "rabbitmq": 5672, "kafka": 9092}
TIMEOUT = 120

#: pages whose blocks are not all programs or fragments yet, with why: their blocks are expected
#: to fail (not strictly: those that run pass). Their owners mark them (issue 15); take a page off
#: this list once it is done.
_CONNECTOR_PAGE = "a connector page (another helper's): each block to run, be a fragment or require"
NOT_YET_MARKED: dict[str, str] = {
    **dict.fromkeys(
        [
            "docs/connectors/http.md",
            "docs/connectors/jsonl.md",
            "docs/connectors/kafka.md",
            "docs/connectors/postgres.md",
            "docs/connectors/rabbitmq.md",
            "docs/connectors/redis.md",
            "docs/connectors/sqlite.md",
            "docs/connectors/websocket.md",
        ],
        _CONNECTOR_PAGE,
    ),
}


class Block(NamedTuple):
    path: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    code: str
    requires: tuple[str, ...]
    #: the named blocks before it on its page: (file name, code)
    files: tuple[tuple[str, str], ...] = ()


def collect(root: Path = ROOT) -> tuple[list[Block], int]:
    """The runnable blocks of README.md and docs/**/*.md, and how many fragments were passed."""
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    blocks: list[Block] = []
    fragments = 0
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        named: list[tuple[str, str]] = []
        i = 0
        while i < len(lines):
            if not FENCE.match(lines[i]):
                i += 1
                continue
            start = i
            i += 1
            while i < len(lines) and not END.match(lines[i]):
                i += 1
            before = lines[start - 1].strip() if start > 0 else ""
            code = "\n".join(lines[start + 1 : i]) + "\n"
            i += 1
            if before == FRAGMENT:
                fragments += 1
                continue
            match = REQUIRES.match(before)
            requires = tuple(s.strip() for s in match[1].split(",")) if match else ()
            unknown = set(requires) - set(SERVERS)
            if unknown:
                raise ValueError(f"{path}:{start + 1}: unknown server(s) {sorted(unknown)}")
            rel = str(path.relative_to(root))
            blocks.append(Block(rel, start + 1, code, requires, tuple(named)))
            name = NAMED.match(code.split("\n", 1)[0])
            if name:
                named.append((name[1], code))
    return blocks, fragments


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _params() -> list[object]:
    params: list[object] = []
    for block in collect()[0]:
        key = f"{block.path}:{block.line}"
        marks: list[pytest.MarkDecorator] = []
        if block.requires:
            marks.append(pytest.mark.server)
        if block.path in NOT_YET_MARKED:
            marks.append(pytest.mark.xfail(reason=NOT_YET_MARKED[block.path], strict=False))
        params.append(pytest.param(block, id=key, marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_block_runs_as_a_program(block: Block, tmp_path: Path) -> None:
    missing = [name for name in block.requires if not _answers(SERVERS[name])]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on 127.0.0.1:{SERVERS[missing[0]]}")
    for name, code in block.files:
        (tmp_path / name).write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        f"{block.path}:{block.line} exited with {done.returncode}:\n{done.stderr[-3000:]}"
    )


def test_collector_sees_blocks_fragments_and_requirements(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "README.md").write_text("```python\nprint(1)\n```\n")
    (tmp_path / "docs" / "sub" / "page.md").write_text(
        "text\n<!-- fragment -->\n```python\nx.y()\n```\n\n"
        "<!-- requires: redis, kafka -->\n```python\n# lib.py\nX = 1\n```\n"
        "```sh\nls\n```\n```python\nimport lib\n```\n"
    )
    blocks, fragments = collect(tmp_path)
    assert fragments == 1
    lib = "# lib.py\nX = 1\n"
    assert blocks == [
        Block("README.md", 1, "print(1)\n", ()),
        Block("docs/sub/page.md", 8, lib, ("redis", "kafka")),
        Block("docs/sub/page.md", 15, "import lib\n", (), (("lib.py", lib),)),
    ]


def test_collector_refuses_an_unknown_server(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("")
    (tmp_path / "docs" / "page.md").write_text("<!-- requires: mongo -->\n```python\n```\n")
    with pytest.raises(ValueError, match=r"page\.md:2: unknown server\(s\) \['mongo'\]$"):
        collect(tmp_path)


def test_the_docs_have_blocks_to_run() -> None:
    blocks, _ = collect()
    assert any(b.path == "README.md" for b in blocks)
    assert len(blocks) > 20
    assert all((ROOT / page).exists() for page in NOT_YET_MARKED)
