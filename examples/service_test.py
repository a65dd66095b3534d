"""Find a planted bug in a service: a simulated broker, faults, and check_service.

The service decodes JSON orders, batches them and saves them to a (fake) database. The planted
bug is a common "optimisation": skip a message delivered before, assuming the first delivery
saved it. Without faults it never shows; a consumer crash redelivers messages that were never
saved, and the service acks them without saving them. check_service finds it, prints the seed
and the shortest fault schedule, and the fixed service passes every seed.

Run: python examples/service_test.py
"""

from __future__ import annotations

import json
from typing import Any

import trio

import trioflow as tf
from trioflow.testing import (
    CrashConsumer,
    RestartBroker,
    ServiceExpect,
    ServiceViolation,
    SimulatedBroker,
    check_service,
)

SEEDS = range(20)


def make_broker(seed: int) -> SimulatedBroker:
    broker = SimulatedBroker(seed=seed)
    broker.create_topic("orders", partitions=2)
    for i in range(40):
        broker.publish("orders", json.dumps({"id": i, "cents": 100 * i}).encode(), key=i % 4)
    broker.publish("orders", b"not json")  # must end in the dead-letter topic
    return broker


def orders_service(db: dict[int, int], *, planted_bug: bool) -> Any:
    async def decode(raw: bytes) -> dict[str, int]:
        await trio.sleep(0.01)
        order: dict[str, int] = json.loads(raw)  # not JSON: the message fails, dead-lettered
        return order

    async def save(batch: list[tf.Message[dict[str, int]]]) -> None:
        await trio.sleep(0.2)  # a round trip to the database
        for m in batch:
            if planted_bug and m.metadata["delivery_count"] > 1:
                continue  # BUG: "delivered before, so it was saved"
            db[m.data["id"]] = m.data["cents"]

    def build(source: Any) -> tf.Pipeline:
        return source | tf.process(decode, n=4) | tf.batch(10, 1.0) | tf.sink(save, messages=True)

    return build


def check(seed: int, *, planted_bug: bool) -> None:
    db: dict[int, int] = {}
    check_service(
        orders_service(db, planted_bug=planted_bug),
        make_broker(seed),
        "orders",
        expect=ServiceExpect(
            dead_letters=[b"not json"],
            processed=lambda raw: json.loads(raw)["id"] in db,
        ),
        # after=None: the broker draws each fault's point from its seed
        faults=[CrashConsumer("c0"), RestartBroker(downtime=2.0)],
        consumers=2,
    )


def main() -> None:
    for seed in SEEDS:
        try:
            check(seed, planted_bug=True)
        except ServiceViolation as exc:
            print(f"found the planted bug with seed {exc.seed}:")
            print(exc)
            break
    else:
        raise SystemExit("the planted bug was not found")
    for seed in SEEDS:
        check(seed, planted_bug=False)
    print(f"the fixed service passed {len(SEEDS)} seeds")


if __name__ == "__main__":
    main()
