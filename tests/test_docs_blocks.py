"""Every ```python block of README.md and docs/ runs as a complete program (issue 15).

A block is run as its own script (``python -c``, in a fresh folder) and must exit 0. The line
just before a block's fence may say what it is:

* ``<!-- fragment -->``: part of a program (a class body, one call): not run.
* ``<!-- requires: redis -->`` (or ``postgres``, ``rabbitmq``, ``kafka``; several separated by
  commas): talks to that server. Marked ``server``. The session starts the server with the
  connector tests' helpers (``tests/docs_servers.py``, once per session, on a free port) and
  tells the program where it is through an environment variable the program reads with a
  default (``REDIS_PORT``, ``TRIOFLOW_PG_DSN``, ``RABBITMQ_PORT``, ``KAFKA_BOOTSTRAP``); a server
  that is not installed skips the block with the reason.

A block whose first line is a file name comment (``# invoices.py``) is that file: the blocks
after it on the same page run with it beside them, so they can import it (a tutorial's steps).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from docs_servers import ENV, DocServers

ROOT = Path(__file__).parent.parent
FENCE = re.compile(r"^```python\s*$")
END = re.compile(r"^```\s*$")
FRAGMENT = "<!-- fragment -->"
REQUIRES = re.compile(r"^<!--\s*requires:\s*([\w\s,-]+?)\s*-->$")
NAMED = re.compile(r"^#\s*([\w-]+\.py)\s*$")
#: the servers a block may require (and the environment variables that say where they are)
SERVERS = ENV
TIMEOUT = 120

#: pages whose blocks are not all programs or fragments yet, with why: their blocks are expected
#: to fail (not strictly: those that run pass). None today: keep it that way (issue 15).
NOT_YET_MARKED: dict[str, str] = {}


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


def _params(servers: bool) -> list[object]:
    params: list[object] = []
    for block in collect()[0]:
        if bool(block.requires) != servers:
            continue
        marks: list[pytest.MarkDecorator] = [pytest.mark.server] if servers else []
        if block.path in NOT_YET_MARKED:
            marks.append(pytest.mark.xfail(reason=NOT_YET_MARKED[block.path], strict=False))
        params.append(pytest.param(block, id=f"{block.path}:{block.line}", marks=marks))
    return params


def run(block: Block, folder: Path, env: dict[str, str] | None = None) -> None:
    """Run ``block`` as ``python -c`` in ``folder`` (with the named blocks before it beside it)."""
    for name, code in block.files:
        (folder / name).write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=folder,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        f"{block.path}:{block.line} exited with {done.returncode}:\n{done.stderr[-3000:]}"
    )


@pytest.mark.parametrize("block", _params(servers=False))
def test_block_runs_as_a_program(block: Block, tmp_path: Path) -> None:
    run(block, tmp_path)


@pytest.fixture(scope="session")
def doc_servers(pytestconfig: pytest.Config) -> Iterator[DocServers]:
    servers = DocServers(pytestconfig)
    try:
        yield servers
    finally:
        servers.stop()


@pytest.mark.parametrize("block", _params(servers=True))
def test_server_block_runs_as_a_program(
    block: Block, tmp_path: Path, doc_servers: DocServers
) -> None:
    run(block, tmp_path, doc_servers.env_for(block.requires))


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
    # every connector page holds one complete program (issue 15)
    for page in sorted((ROOT / "docs" / "connectors").glob("*.md")):
        rel = page.relative_to(ROOT).as_posix()
        assert any(b.path == rel for b in blocks), f"{rel} has no complete program"


def test_server_blocks_read_where_their_server_is() -> None:
    # a block that ignored the variable would talk to the default port, not the test's server
    for block in collect()[0]:
        for server in block.requires:
            for variable in SERVERS[server]:
                assert f'os.environ.get("{variable}"' in block.code, (
                    f"{block.path}:{block.line} requires {server} but does not read ${variable}"
                )
    assert all(hasattr(DocServers, f"_start_{name}") for name in SERVERS)


def test_a_server_that_is_missing_skips_its_blocks_with_the_reason(
    pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = DocServers(pytestconfig)
    tries: list[str] = []

    def missing() -> dict[str, str]:
        tries.append("redis")
        pytest.skip("redis-server is not installed")

    monkeypatch.setattr(servers, "_start_redis", missing)
    monkeypatch.setattr(servers, "_start_kafka", lambda: {"KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert servers.env_for(("kafka",)) == {"KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    for _ in range(2):  # tried once, then skipped at once
        with pytest.raises(pytest.skip.Exception, match=r"^redis: redis-server is not installed$"):
            servers.env_for(("kafka", "redis"))
    assert tries == ["redis"]
