"""Real servers for connector tests, started on 127.0.0.1 by the tests themselves.

A server binary that is missing skips the tests that need it, with the reason, when run outside
CI; in CI (``CI`` set, as ``.ci/run`` runs) it is an error, since ``.ci/run`` installs them.

PostgreSQL's binaries are found by :func:`pg_bin`. The cluster runs as the current user, or,
when that is root (which PostgreSQL refuses), as the ``postgres`` user through ``runuser``.
Every test that uses these servers carries the ``server`` mark (see ``tests/conftest.py``).
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import trio

import trioflow as tf

PG_SEARCH = Path("/usr/lib/postgresql")  # Debian and Ubuntu: one bin/ folder per major version


def _version(folder: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/9.6/bin`` -> ``(9, 6)``; a name that is no version sorts first."""
    try:
        return tuple(int(part) for part in folder.parent.name.split("."))
    except ValueError:
        return ()


def _has_server(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


@functools.cache
def pg_bin() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres``, or None when there is none.

    In order: ``pg_config --bindir`` when ``pg_config`` is on ``PATH`` (Debian's libpq-dev
    ``pg_config`` may name a version whose server is not installed: then the next is tried),
    the folder of ``initdb`` on ``PATH`` (symbolic links resolved, so that its ``pg_ctl`` and
    ``postgres`` are beside it), the newest ``/usr/lib/postgresql/*/bin``.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    candidates += sorted(PG_SEARCH.glob("*/bin"), key=_version, reverse=True)
    return next((folder for folder in candidates if _has_server(folder)), None)


def __getattr__(name: str) -> Path:
    # ``PG_BIN`` is found on first use, not on import (which every test session does)
    if name == "PG_BIN":
        return pg_bin() or PG_SEARCH / "15" / "bin"  # tests skip before using a missing one
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing(what: str) -> NoReturn:
    message = f"{what} is not installed (apt-get install -y redis-server postgresql)"
    if os.environ.get("CI"):
        pytest.fail(message + " — .ci/run should have installed it")
    pytest.skip(message)


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout} s")


class RedisServer:
    """A redis-server process on 127.0.0.1 (append-only, fsync always: survives kill -9)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, "redis-server")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1, superuser ``postgres``.

    It runs as the current user; as root (PostgreSQL refuses to run as root) as the ``postgres``
    user, through ``runuser``, and the folder is handed to that user.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.bin: Path | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def command(self, program: str, *args: str) -> list[str]:
        """The command line that runs ``program`` (``initdb``, ``pg_ctl``) as the cluster's
        owner: the current user, or the ``postgres`` user when run as root."""
        binary = self.bin or pg_bin()
        if binary is None:
            missing("PostgreSQL (no initdb through pg_config, PATH or /usr/lib/postgresql/*/bin)")
        command = [str(binary / program), *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return command

    def run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            self.command(program, *args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}"
            )

    def pg_ctl(self, *args: str) -> None:
        """``pg_ctl -D <data> *args`` as the cluster's owner."""
        self.run("pg_ctl", "-D", str(self.dir / "data"), *args)

    def start(self) -> None:
        self.bin = pg_bin()
        if self.bin is None:
            missing("PostgreSQL (no initdb through pg_config, PATH or /usr/lib/postgresql/*/bin)")
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                missing("a 'postgres' user to run PostgreSQL as when root (it refuses root)")
            if shutil.which("runuser") is None:
                missing("runuser (util-linux), to run PostgreSQL as 'postgres' when root")
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        self.run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust")
        self.pg_ctl(
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self.pg_ctl("-m", "immediate", "stop")


async def serve_until(
    pipeline: tf.Pipeline[Any], done: Callable[[tf.RunReport], bool], timeout: float = 15
) -> tf.RunReport:
    """Serve ``pipeline`` until ``done(metrics)``, then drain it; its final report."""
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(pipeline.serve)
            while not done(handle.metrics):  # noqa: ASYNC110 - the broker's effects are polled
                await trio.sleep(0.02)
            handle.stop()
    report = handle.report
    assert report is not None
    return report
