"""The ``server`` mark: every test that needs a real server or browser carries it.

``pytest -m "not server"`` then runs only tests that need nothing but Python (and the packages
of the ``test`` extra). Two things keep the mark honest:

* :func:`pytest_collection_modifyitems` marks every test that uses one of the shared server
  fixtures (:data:`SERVER_FIXTURES`); modules that start servers themselves (their own fixtures,
  Chromium) carry ``pytestmark = pytest.mark.server``.
* An audit hook fails a test that is *not* marked and starts a server program anyway
  (:data:`SERVER_PROGRAMS`), in its setup or its call: a forgotten mark shows up as an error
  in ``pytest -m "not server"``, not as a slow or skipped run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import Any

import pytest

SERVER_FIXTURES = frozenset(
    {
        "redis_server",  # tests/connectors/conftest.py
        "postgres_server",  # tests/connectors/conftest.py
        "rabbit_server",  # tests/services/conftest.py, and fixtures in tests/connectors
        "kafka_server",  # tests/connectors/kafka_server.py (Tansu)
        "services_redis",  # tests/services/conftest.py
    }
)

SERVER_PROGRAMS = frozenset(
    {
        "redis-server",
        "initdb",
        "pg_ctl",
        "postgres",
        "postmaster",
        "rabbitmq-server",
        "rabbitmqctl",
        "epmd",
        "tansu",
        "chromium",
        "chromium-browser",
        "google-chrome",
    }
)

# programs that run another one: the program they run is looked for in their arguments
WRAPPERS = frozenset({"runuser", "sudo", "env", "setpriv", "nice", "timeout"})
USER_OPTIONS = frozenset({"-u", "--user", "-g", "--group", "--reuid", "--regid"})

_running: pytest.Item | None = None  # the test in its setup or call, if it is not marked


def needs_server(item: pytest.Item) -> bool:
    return item.get_closest_marker("server") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def server_program(args: Any) -> str | None:
    """The server program a command line would start, if any."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    try:
        names = [os.path.basename(os.fsdecode(arg)) for arg in args]
    except TypeError:
        return None
    if not names:
        return None
    if names[0] in SERVER_PROGRAMS:
        return names[0]
    if names[0] in WRAPPERS:  # the first argument that is no option nor a user's name
        rest = names[1:]
        for i, name in enumerate(rest):
            if name in SERVER_PROGRAMS and (i == 0 or rest[i - 1] not in USER_OPTIONS):
                return name
    return None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    item = _running
    if item is None or event != "subprocess.Popen":
        return
    executable, argv = args[0], args[1]
    program = server_program(argv) or (server_program(executable) if executable else None)
    if program is not None:
        raise RuntimeError(
            f"{item.nodeid} starts {program} but is not marked `server`: add "
            "`pytestmark = pytest.mark.server` to its module, or add the fixture that starts "
            "it to SERVER_FIXTURES in tests/conftest.py"
        )


_audit_installed = False


def pytest_configure(config: pytest.Config) -> None:
    global _audit_installed
    if not _audit_installed:  # audit hooks cannot be removed: one for the process
        sys.addaudithook(_audit)
        _audit_installed = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    global _running
    _running = None if needs_server(item) else item
    try:
        return (yield)
    finally:
        _running = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    global _running
    _running = None if needs_server(item) else item
    try:
        return (yield)
    finally:
        _running = None


# -- tracing: the OpenTelemetry SDK's in-memory exporter behind a provider (test_tracing*.py) --


@pytest.fixture
def exporter() -> Any:
    """An ``InMemorySpanExporter``: the spans a test's provider finished."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: Any) -> Generator[Any, None, None]:
    """An SDK ``TracerProvider`` exporting to ``exporter`` as each span ends."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()
