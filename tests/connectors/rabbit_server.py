"""A RabbitMQ broker for tests: Debian's rabbitmq-server, on 127.0.0.1 only, started by the tests.

Everything is the test's own: node name, mnesia and log folders, an ``epmd`` started on a free
loopback port (killed at the end, unlike the daemon ``erl`` would start), the AMQP port, and the
Erlang distribution port, bound to loopback with ``inet_dist_use_interface``. Startup takes
5-10 s, so one broker is shared by the whole test session (:func:`shared_broker`); tests use their
own queue names.

Missing ``rabbitmq-server`` skips the tests outside CI and fails them in CI (see ``missing``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .servers import free_port, wait_for

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD_CANDIDATES = ("/usr/lib/erlang/bin/epmd", "epmd")


def missing(what: str) -> None:
    """Skip outside CI, fail in CI (``.ci/run`` installs the broker)."""
    message = f"{what} is not installed (apt-get install -y rabbitmq-server)"
    if os.environ.get("CI"):
        pytest.fail(message + " — .ci/run should have installed it")
    pytest.skip(message)


def _epmd() -> str | None:
    for candidate in EPMD_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    erts = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    return str(erts[-1]) if erts else None


class RabbitServer:
    """One rabbitmq-server node on 127.0.0.1 (user ``guest``, vhost ``/``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"trioflow-{os.getpid()}-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        d = self.dir
        env = dict(os.environ)
        env.update(
            HOME=str(d),  # the Erlang cookie goes here, not in root's home
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def start(self) -> None:
        if not SERVER.exists():
            missing("rabbitmq-server")
        epmd = _epmd()
        if epmd is None:
            missing("epmd (erlang-base)")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[].\n")
        env = self.env()
        self.epmd = subprocess.Popen(
            [str(epmd), "-address", "127.0.0.1", "-port", str(self.epmd_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(SERVER)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        try:
            wait_for(self.ping, 60, "rabbitmq-server")
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"rabbitmq-server did not start: {exc}") from exc

    def ping(self) -> bool:
        """The broker answers an AMQP 0-9-1 protocol header with a Connection.Start frame."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited; log:\n{self.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return s.recv(1) == b"\x01"
        except OSError:
            return False

    def close_all_connections(self) -> None:
        """The broker closes every client connection (as a restart or a network cut would)."""
        subprocess.run(
            [str(SERVER.parent / "rabbitmqctl"), "-n", self.node, "close_all_connections", "test"],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def restart(self) -> None:
        """Stop the broker (a clean shutdown: it closes every connection first) and start it
        again on the same ports, node and data: durable queues and persistent messages stay."""
        self.stop()
        self.start()

    def stop(self) -> None:
        for proc in (self.proc, self.epmd):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = self.epmd = None


@contextmanager
def own_broker() -> Iterator[RabbitServer]:
    """A broker of one's own, for tests that stop or restart it (5-10 s to start)."""
    directory = Path(tempfile.mkdtemp(prefix="trioflow-rabbit-own-"))
    server = RabbitServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


_shared: RabbitServer | None = None


def shared_broker(config: pytest.Config) -> RabbitServer:
    """The session's broker, started on first use and stopped when pytest ends."""
    global _shared
    if _shared is None:
        directory = Path(tempfile.mkdtemp(prefix="trioflow-rabbit-"))
        server = RabbitServer(directory)
        server.start()
        _shared = server

        def cleanup() -> None:
            global _shared
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)
            _shared = None

        config.add_cleanup(cleanup)
    return _shared
