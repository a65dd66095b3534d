"""RabbitQueueSource's first connection is not retried (a wrong address or password fails at
once, by design); the error names the queue and the broker's address, so a log says which."""

from __future__ import annotations

import pytest

import trioflow as tf
from trioflow.connectors.rabbitmq import RabbitQueueSource

from .rabbit_server import RabbitServer, shared_broker
from .servers import free_port


async def test_a_broker_that_is_not_there_is_named_with_the_queue() -> None:
    port = free_port()
    with pytest.raises(tf.PipelineError) as info:
        await (RabbitQueueSource("payments", port=port) | tf.sink(lambda x: None)).run()
    text = str(info.value)
    assert "queue 'payments'" in text
    assert f"127.0.0.1:{port}" in text
    assert "cannot connect" in text


@pytest.mark.server
async def test_a_wrong_password_is_named_with_the_queue_and_address(
    request: pytest.FixtureRequest,
) -> None:
    rabbit: RabbitServer = shared_broker(request.config)
    source = RabbitQueueSource("payments", port=rabbit.port, password="wrong")
    with pytest.raises(tf.PipelineError) as info:
        await (source | tf.sink(lambda x: None)).run()
    text = str(info.value)
    assert "queue 'payments'" in text
    assert f"127.0.0.1:{rabbit.port}" in text
    assert "guest" in text
