"""Pushing items into a running pipeline and awaiting their outcome (Broadway's ``test_message``).

A :class:`PushSource` is a source fed from the test; :func:`test_message` and :func:`test_batch`
push into it and wait until the pipeline acks what they pushed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Generic, Literal, TypeVar, final

import attrs
import trio

from .._message import Message
from .._sources import Outlet, Source

__all__ = ["Outcome", "PushSource", "test_batch", "test_message"]

T = TypeVar("T")


@final
@attrs.frozen
class Outcome(Generic[T]):
    """What became of one pushed item: ``status`` ``"ok"`` or ``"failed"``, with ``reason``.

    Example:
        >>> outcome = await test_message(src, b"not json")
        >>> outcome.status, type(outcome.reason)
        ('failed', <class 'json.decoder.JSONDecodeError'>)
    """

    data: T
    status: Literal["ok", "failed"]
    reason: BaseException | str | None = None

    @property
    def ok(self) -> bool:
        """Whether the item was acked as successful."""
        return self.status == "ok"


@final
class _Pending:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: Outcome[Any] | None = None


@final
class _PushAcknowledger:
    """Resolves the pending outcome of each pushed message."""

    def __init__(self) -> None:
        self.pending: dict[int, _Pending] = {}

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        for status, group in (("ok", successful), ("failed", failed)):
            for m in group:
                slot = self.pending.pop(m.metadata["push_id"], None)
                if slot is None:
                    raise AssertionError(f"message acked twice (or never pushed): {m!r}")
                slot.outcome = Outcome(m.data, status, m.reason)  # type: ignore[arg-type]
                slot.done.set()


class PushSource(Source[T], Generic[T]):
    """A source fed by the test: run the pipeline, then push items and await their outcome.

    Pushes wait (cancellable) while the pipeline is full, as a broker would. The source ends when
    :meth:`close` is called, or when the pipeline is stopped. Use one per run.

    Example:
        >>> src = PushSource()
        >>> async with trio.open_nursery() as nursery:
        ...     handle = await nursery.start((src | process(decode) | sink(save)).serve)
        ...     outcome = await test_message(src, b'{"id": 1}')
        ...     assert outcome.ok
        ...     handle.stop()
    """

    def __init__(self, *, name: str | None = None, buffer: int = 0) -> None:
        self.name = name
        self._send, self._receive = trio.open_memory_channel[Message[T]](buffer)
        self._ack = _PushAcknowledger()
        self._next = 0

    def _message(self, data: T, metadata: dict[str, Any] | None) -> tuple[Message[T], _Pending]:
        push_id = self._next
        self._next += 1
        slot = _Pending()
        self._ack.pending[push_id] = slot
        return Message(data, {**(metadata or {}), "push_id": push_id}, self._ack), slot

    async def push(self, data: T, *, metadata: dict[str, Any] | None = None) -> trio.Event:
        """Hand ``data`` to the pipeline; return an event set once it is acked either way."""
        msg, slot = self._message(data, metadata)
        await self._send.send(msg)
        return slot.done

    async def push_one(self, data: T, *, metadata: dict[str, Any] | None = None) -> Outcome[T]:
        """Hand ``data`` to the pipeline and wait for its outcome (see :func:`test_message`)."""
        msg, slot = self._message(data, metadata)
        await self._send.send(msg)
        await slot.done.wait()
        assert slot.outcome is not None
        return slot.outcome

    async def push_and_wait(
        self, items: Iterable[T], *, timeout: float = math.inf
    ) -> list[Outcome[T]]:
        """Push every item, then wait for all their outcomes (``trio.TooSlowError`` past timeout).

        Outcomes are in push order.
        """
        slots: list[_Pending] = []
        with trio.fail_after(timeout):
            for data in items:
                msg, slot = self._message(data, None)
                slots.append(slot)
                await self._send.send(msg)
            for slot in slots:
                await slot.done.wait()
        return [s.outcome for s in slots if s.outcome is not None]

    def close(self) -> None:
        """End the stream: the pipeline finishes what was pushed and its run returns."""
        self._send.close()

    async def produce(self, out: Outlet) -> None:
        """Hand over pushed messages as they come, until :meth:`close`."""
        async for msg in self._receive:
            await out.send(msg)

    @property
    def label(self) -> str:
        return self.name or "PushSource"

    def __repr__(self) -> str:
        return "PushSource()"


async def test_message(
    source: PushSource[T],
    data: T,
    *,
    metadata: dict[str, Any] | None = None,  # noqa: PT028 - a helper, not a test
    timeout: float = math.inf,  # noqa: PT028
) -> Outcome[T]:
    """Push one item into the pipeline that ``source`` feeds and await its outcome.

    The pipeline must be running (``await nursery.start(pipeline.serve)``). Waits (cancellable)
    for room in the pipeline, then for the ack; raises ``trio.TooSlowError`` after ``timeout``
    seconds (of the trio clock: instant under ``autojump_clock``).

    Example:
        >>> outcome = await test_message(src, 3)
        >>> outcome.status
        'ok'
    """
    with trio.fail_after(timeout):
        return await source.push_one(data, metadata=metadata)


async def test_batch(
    source: PushSource[T],
    items: Iterable[T],
    *,
    timeout: float = math.inf,  # noqa: PT028 - a helper, not a test
) -> list[Outcome[T]]:
    """Push several items at once and await all of their outcomes, in push order.

    Pushing them together lets a ``batch`` stage group them, as Broadway's ``test_batch`` does.

    Example:
        >>> outcomes = await test_batch(src, [1, 2, 3])
        >>> [o.status for o in outcomes]
        ['ok', 'ok', 'ok']
    """
    return await source.push_and_wait(items, timeout=timeout)


# not tests, although their names say so (users import them into test modules)
test_message.__test__ = False  # type: ignore[attr-defined]
test_batch.__test__ = False  # type: ignore[attr-defined]
