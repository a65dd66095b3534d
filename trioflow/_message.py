"""Messages and their acknowledgement protocol.

Every item travels through a pipeline as (the data of) a :class:`Message`. A source attaches an
acknowledger to each message; trioflow calls ``acknowledger.ack(successful, failed)`` once per
message, in groups, after the message's last stage or failure handling.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, Protocol, TypeVar, final, runtime_checkable

import attrs

from ._groups import leaves

__all__ = ["NOOP_ACKNOWLEDGER", "Acknowledger", "Message", "NoopAcknowledger", "Status"]

T = TypeVar("T")
U = TypeVar("U")
Status = Literal["ok", "failed"]


@runtime_checkable
class Acknowledger(Protocol):
    """What a source attaches to its messages to learn their outcome.

    trioflow awaits ``ack`` in groups; each message appears in exactly one call, in ``successful``
    or in ``failed`` (failed messages carry ``status == "failed"`` and a ``reason``). An exception
    raised by ``ack`` is contained: that call's messages stay un-acked (a broker delivers them
    again) and are counted in ``RunReport.ack_errors``; a :class:`~trioflow.Fatal` stops the run.
    ``ack`` runs in trioflow's acknowledger task; while it blocks, settled messages queue up
    behind it and back-pressure reaches the stages.
    """

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        """Record the outcome of a group of messages."""
        ...


@final
class NoopAcknowledger:
    """The acknowledger of plain data: outcomes are counted in the report, nothing else."""

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        """Do nothing."""

    def __repr__(self) -> str:
        return "NOOP_ACKNOWLEDGER"


NOOP_ACKNOWLEDGER = NoopAcknowledger()


# Not frozen on purpose: a frozen attrs class costs 2.5x more to build (0.47 vs 0.18 us here) and a
# message is built per item at the source. Treat it as immutable; fail() and replace() copy.
@attrs.define(slots=True, eq=False, repr=False)
class Message(Generic[T]):
    """One item with its origin: data, metadata and the acknowledger of its source.

    Stage functions see ``data``; a stage built with ``messages=True`` sees the message itself
    (with ``data`` the value at that stage, ``metadata`` the source's dict). Do not assign to the
    fields: use :meth:`fail` or :meth:`replace`, which return a copy.

    Examples:
        >>> msg = Message(b'{"id": 1}', metadata={"entry_id": "1-0"})
        >>> msg.fail("malformed").status
        'failed'
    """

    data: T
    metadata: dict[str, Any] = attrs.field(factory=dict)
    acknowledger: Acknowledger = NOOP_ACKNOWLEDGER
    status: Status = "ok"
    reason: BaseException | str | None = None

    def fail(self, reason: BaseException | str) -> Message[T]:
        """Return a copy marked failed with ``reason`` (an exception or a short string)."""
        if type(self) is not Message:  # a subclass stays itself (its acknowledger expects it)
            return attrs.evolve(self, status="failed", reason=reason)
        return Message(self.data, self.metadata, self.acknowledger, "failed", reason)

    def replace(self, data: U) -> Message[U]:
        """Return a copy carrying ``data`` instead, with the same metadata and origin."""
        if type(self) is not Message:
            return attrs.evolve(self, data=data)  # type: ignore[arg-type,return-value]
        return Message(data, self.metadata, self.acknowledger, self.status, self.reason)

    @property
    def failed(self) -> bool:
        """Whether the message is marked failed."""
        return self.status == "failed"

    def __repr__(self) -> str:
        parts = [repr(self.data)]
        if self.metadata:
            parts.append(f"metadata={self.metadata!r}")
        if self.acknowledger is not NOOP_ACKNOWLEDGER:
            parts.append(f"acknowledger={self.acknowledger!r}")
        if self.status != "ok":
            parts.append(f"status={self.status!r}, reason={self.reason!r}")
        return f"Message({', '.join(parts)})"


def reason_key(reason: BaseException | str | None) -> str:
    """The ``failed_by_reason`` key of a reason: an exception's class name, or the string.

    An exception group whose leaves are all of one class counts under that class (a
    ``ConnectionError`` raised in a nursery is a ``ConnectionError``).
    """
    if isinstance(reason, BaseExceptionGroup):
        kinds = {type(leaf) for leaf in leaves(reason)}
        if len(kinds) == 1:
            return kinds.pop().__name__
        return type(reason).__name__
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return str(reason)
