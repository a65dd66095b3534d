"""The acknowledger of :class:`~trioflow.connectors.redis.RedisStreamSource`: dead letters and
XACK in one round trip. See :mod:`trioflow.connectors.redis`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast, final

from .._message import Message
from .._message import reason_text as _reason_text

if TYPE_CHECKING:
    from .redis import RedisStreamSource

__all__ = ["RedisRun", "StreamAcker"]


class RedisRun(Protocol):
    """What the acknowledger needs of a source's run."""

    spec: RedisStreamSource
    client: Any

    def settled(self, ids: list[Any]) -> None: ...

    async def retrying(self, op: Callable[[], Awaitable[None]], what: str) -> None: ...


@final
class StreamAcker:
    """Acknowledger: dead-letter the failed entries that are to be, then XACK everything but the
    entries to redeliver (they stay pending), in one round trip.

    During an outage an ack waits for the connection (retried on the client's new connection
    with the source's reconnect backoff, for at most ``give_up_after``): XACK by id works on any
    connection. Given up, it raises, and its entries stay pending (delivered again later).
    """

    def __init__(self, run: RedisRun) -> None:
        spec = run.spec
        self.run = run
        self.stream = spec.stream
        self.group = spec.group
        self.dead_letter = spec.dead_letter
        self.on_failure = spec.on_failure
        self.acked = 0
        self.dead_lettered = 0
        self.discarded = 0
        self.redelivered = 0

    def __repr__(self) -> str:
        return f"<redis acker {self.stream!r}/{self.group!r}>"

    async def ack_ids(self, ids: list[Any]) -> None:
        """XACK successful entries handed over in bulk, by id."""
        try:
            await self._settle(ids, [])
        finally:
            self.run.settled(ids)

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        ids = [m.metadata["id"] for m in successful]
        dead: list[Message[Any]] = []
        default = self.on_failure
        kept: list[Any] = []
        for m in failed:
            action = m.action or default
            if action == "redeliver":
                kept.append(m.metadata["id"])  # left pending: claimed again after claim_idle
                continue
            if action == "dead_letter":
                dead.append(m)
            else:
                self.discarded += 1
            ids.append(m.metadata["id"])
        try:
            await self._settle(ids, dead)
            self.redelivered += len(kept)
        finally:
            self.run.settled(ids + kept)

    async def _settle(self, ids: list[Any], dead: list[Message[Any]]) -> None:
        if not ids:
            return

        async def send() -> None:
            pipe = self.run.client.pipeline(transaction=False)
            async with pipe:
                for m in dead:
                    pipe.xadd(self.dead_letter, self.dead_fields(m))
                pipe.xack(self.stream, self.group, ids)

        await self.run.retrying(send, f"ack of {len(ids)} entries")
        self.acked += len(ids)
        self.dead_lettered += len(dead)

    def dead_fields(self, m: Message[Any]) -> dict[str, str]:
        raw: Any = m.data
        data = cast("Mapping[str, Any]", raw) if isinstance(raw, Mapping) else {"data": repr(raw)}
        fields = {str(k): str(v) for k, v in data.items()}
        fields["trioflow_reason"] = _reason_text(m.reason)
        fields["trioflow_id"] = str(m.metadata["id"])
        fields["trioflow_stream"] = self.stream
        return fields
