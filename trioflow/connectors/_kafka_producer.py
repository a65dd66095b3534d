"""The producing side of the Kafka connector: a confluent-kafka producer on a thread of its
own, and :class:`KafkaSink`. See :mod:`trioflow.connectors.kafka`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, final

from ._json import items_of
from ._lazy import require
from ._thread import DedicatedThread
from ._trace_context import outgoing

__all__ = ["KafkaDeliveryError", "KafkaSink"]

logger = logging.getLogger("trioflow")


def common_options(bootstrap: str, options: dict[str, Any]) -> dict[str, Any]:
    config = {"bootstrap.servers": bootstrap}
    config.update({k.replace("_", "."): v for k, v in options.items()})
    return config


def value_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, default=str).encode()


#: what a producer sends: topic, key, value, headers
Record = tuple[str, Any, bytes | None, list[tuple[str, bytes]] | None]


class KafkaDeliveryError(Exception):
    """The broker did not confirm a produced message."""


@final
class Producer:
    """A confluent-kafka producer on a thread of its own: ``send`` returns once the broker
    confirmed every record of the call (or raises :class:`KafkaDeliveryError`)."""

    def __init__(self, config: dict[str, Any], name: str) -> None:
        self.config = dict(config)
        self.config.setdefault("enable.idempotence", True)
        self.thread = DedicatedThread(f"trioflow {name} producer")
        self._producer: Any = None

    async def send(self, records: Sequence[Record]) -> None:
        def produce() -> list[str]:
            ck = require("confluent_kafka", "kafka")
            if self._producer is None:
                self._producer = ck.Producer(self.config, logger=logger)
            producer = self._producer
            errors: list[str] = []
            done = [0]

            def report(err: Any, msg: Any) -> None:
                done[0] += 1
                if err is not None:
                    errors.append(str(err))

            for topic, key, value, headers in records:
                while True:
                    try:
                        producer.produce(topic, value, key, headers=headers, on_delivery=report)
                        break
                    except BufferError:  # the local queue is full: serve delivery reports
                        producer.poll(0.1)
            while done[0] < len(records):
                producer.poll(0.1)
            return errors

        errors = await self.thread.run(produce)
        if errors:
            raise KafkaDeliveryError(
                f"{len(errors)} of {len(records)} record(s) not confirmed: {errors[0]}"
            )

    def close(self) -> None:
        producer = self._producer
        if producer is not None:
            self.thread.call_soon(lambda: producer.flush(5.0))
        self.thread.stop()


@final
class KafkaSink:
    """Produce items to ``topic``; an item (or a batch) is acked once the broker confirmed it.

    The producer is idempotent (``enable.idempotence``) unless ``client_options`` say otherwise.
    Values: ``bytes`` as they are, ``str`` UTF-8 encoded, anything else as JSON. ``key`` makes
    each record's key from the item (``None``: no key). Each record gets a ``traceparent``
    header: the current span's (a stage traced by ``OpenTelemetry``), else, for a
    :class:`~trioflow.Message` item (a ``messages=True`` sink, whose data is sent), its own.

    Examples:
        >>> pipeline = source | tf.batch(500, 0.5) | tf.sink(KafkaSink("enriched", key=by_user))
    """

    def __init__(
        self,
        topic: str,
        *,
        key: Callable[[Any], Any] | None = None,
        bootstrap: str = "127.0.0.1:9092",
        **client_options: Any,
    ) -> None:
        self.topic = topic
        self.key = key
        self.bootstrap = bootstrap
        self._producer = Producer(common_options(bootstrap, client_options), f"kafka sink {topic}")
        self.produced: int = 0

    async def __call__(self, item: Any) -> None:
        items, contexts = outgoing(items_of(item))
        key = self.key
        records = [
            (
                self.topic,
                value_bytes(key(x)) if key else None,
                value_bytes(x),
                [(k, v.encode()) for k, v in context.items()] if context else None,
            )
            for x, context in zip(items, contexts, strict=True)
        ]
        if records:
            await self._producer.send(records)
            self.produced += len(records)

    def close(self) -> None:
        """Flush and stop the producer's thread."""
        self._producer.close()

    def __repr__(self) -> str:
        return f"KafkaSink({self.topic!r}, bootstrap={self.bootstrap!r})"
