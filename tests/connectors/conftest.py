from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import PostgresServer, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="trioflow-redis-") as d:
        server = RedisServer(Path(d))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    d = tempfile.mkdtemp(prefix="trioflow-pg-")
    os.chmod(d, 0o755)
    server = PostgresServer(Path(d) / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()
