"""The servers the docs' programs talk to, for ``tests/test_docs_blocks.py`` (issue 15).

A block marked ``<!-- requires: redis -->`` (``postgres``, ``rabbitmq``, ``kafka``) runs against
a server the test session starts with the connector tests' own helpers
(``tests/connectors/servers.py``, ``kafka_server.py``, ``rabbit_server.py``), on 127.0.0.1 on a
free port, once per session. The program learns where it is from an environment variable it
reads with a default (``port = int(os.environ.get("REDIS_PORT", "6379"))``): :data:`ENV` names
them.

A server that cannot be started because it is missing is skipped with the helpers' reason
(in CI, ``CI`` set, the helpers fail instead: ``.ci/run`` installs every server); the reason is
remembered, so the other blocks that need it are skipped at once rather than retried.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from connectors.kafka_server import KafkaServer
from connectors.rabbit_server import shared_broker
from connectors.servers import PostgresServer, RedisServer

#: the environment variables each server's programs read (and their defaults, in the docs)
ENV = {
    "redis": ("REDIS_PORT",),  # 6379
    "postgres": ("TRIOFLOW_PG_DSN",),  # postgresql://postgres@127.0.0.1:5432/postgres
    "rabbitmq": ("RABBITMQ_PORT",),  # 5672
    "kafka": ("KAFKA_BOOTSTRAP",),  # 127.0.0.1:9092
}


class DocServers:
    """Starts each server on first use; :meth:`stop` stops those it started."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.env: dict[str, dict[str, str]] = {}  # a started server's variables
        self.skipped: dict[str, str] = {}  # a server that could not start: why
        self.stops: list[Callable[[], None]] = []

    def env_for(self, names: tuple[str, ...]) -> dict[str, str]:
        """The variables of the servers ``names``, started if need be; skips when one is missing."""
        env: dict[str, str] = {}
        for name in names:
            if name in self.skipped:
                pytest.skip(self.skipped[name])
            if name not in self.env:
                try:
                    self.env[name] = getattr(self, f"_start_{name}")()
                except pytest.skip.Exception as exc:
                    self.skipped[name] = f"{name}: {exc.msg}"
                    pytest.skip(self.skipped[name])
            env.update(self.env[name])
        return env

    def _start_redis(self) -> dict[str, str]:
        directory = Path(tempfile.mkdtemp(prefix="trioflow-docs-redis-"))
        server = RedisServer(directory)
        self.stops.append(lambda: (server.stop(), shutil.rmtree(directory, ignore_errors=True)))
        server.start()
        return {"REDIS_PORT": str(server.port)}

    def _start_postgres(self) -> dict[str, str]:
        directory = Path(tempfile.mkdtemp(prefix="trioflow-docs-pg-"))
        os.chmod(directory, 0o755)  # as root the cluster runs as `postgres`, which must get in
        server = PostgresServer(directory / "pg")
        server.start()
        self.stops.append(lambda: (server.stop(), shutil.rmtree(directory, ignore_errors=True)))
        return {"TRIOFLOW_PG_DSN": f"postgresql://postgres@127.0.0.1:{server.port}/postgres"}

    def _start_rabbitmq(self) -> dict[str, str]:
        server = shared_broker(self.config)  # shared with the connector tests; stopped at exit
        return {"RABBITMQ_PORT": str(server.port)}

    def _start_kafka(self) -> dict[str, str]:
        server = KafkaServer()
        self.stops.append(server.stop)
        server.start()
        return {"KAFKA_BOOTSTRAP": server.bootstrap}

    def stop(self) -> None:
        for stop in reversed(self.stops):
            stop()
        self.stops.clear()
