"""Servers for the service tests: a RabbitMQ broker (shared with tests/connectors) and Redis."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from connectors.rabbit_server import RabbitServer, shared_broker
from connectors.servers import RedisServer


@pytest.fixture(scope="session")
def rabbit_server(request: pytest.FixtureRequest) -> RabbitServer:
    return shared_broker(request.config)


@pytest.fixture(scope="session")
def services_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="trioflow-svc-redis-") as d:
        server = RedisServer(Path(d))
        server.start()
        try:
            yield server
        finally:
            server.stop()
