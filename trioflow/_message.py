"""Messages and their acknowledgement protocol.

Every item travels through a pipeline as (the data of) a :class:`Message`. A source attaches an
acknowledger to each message; trioflow calls ``acknowledger.ack(successful, failed)`` once per
message, in groups, after the message's last stage or failure handling.
"""

from __future__ import annotations

from typing import (
    Any,
    Generic,
    Literal,
    Protocol,
    TypeGuard,
    TypeVar,
    final,
    runtime_checkable,
)

import attrs

from ._groups import group_of, leaves

__all__ = [
    "ACTIONS",
    "NOOP_ACKNOWLEDGER",
    "Acknowledger",
    "FailureAction",
    "Message",
    "NoopAcknowledger",
    "Status",
]

T = TypeVar("T")
U = TypeVar("U")
Status = Literal["ok", "failed"]
#: what a broker source does with a failed message (``Message.fail(reason, action=...)``)
FailureAction = Literal["redeliver", "dead_letter", "discard"]
ACTIONS: tuple[str, ...] = ("redeliver", "dead_letter", "discard")


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
    metadata: dict[str, Any] = attrs.field(factory=dict)  # pyright: ignore[reportUnknownVariableType]
    acknowledger: Acknowledger = NOOP_ACKNOWLEDGER
    status: Status = "ok"
    reason: BaseException | str | None = None
    #: for a failed message: what its broker source should do with it (None: the source's
    #: default ``on_failure``)
    action: FailureAction | None = None

    def fail(
        self, reason: BaseException | str, *, action: FailureAction | None = None
    ) -> Message[T]:
        """Return a copy marked failed with ``reason`` (an exception or a short string).

        ``action`` tells a broker source what to do with it: ``"redeliver"`` (let the broker
        deliver it again), ``"dead_letter"``, ``"discard"`` (ack it and drop it), or ``None``
        (the source's ``on_failure`` default).

        Examples:
            >>> msg.fail("schema mismatch", action="dead_letter").action
            'dead_letter'
        """
        if action is not None and action not in ACTIONS:
            raise ValueError(
                f"action={action!r} must be one of {', '.join(map(repr, ACTIONS))} or None"
            )
        if type(self) is not Message:  # a subclass stays itself (its acknowledger expects it)
            return attrs.evolve(self, status="failed", reason=reason, action=action)
        return Message(self.data, self.metadata, self.acknowledger, "failed", reason, action)

    def replace(self, data: U, *, metadata: dict[str, Any] | None = None) -> Message[U]:
        """Return a copy carrying ``data`` instead (and ``metadata``, if given), same origin.

        Examples:
            >>> msg.replace(decoded, metadata={**msg.metadata, "schema": 2})
        """
        meta = self.metadata if metadata is None else metadata
        if type(self) is not Message:
            return attrs.evolve(self, data=data, metadata=meta)  # type: ignore[arg-type,return-value]
        return Message(data, meta, self.acknowledger, self.status, self.reason, self.action)

    def with_metadata(self, **updates: Any) -> Message[T]:
        """Return a copy whose metadata is this one's updated with ``updates``.

        Later stages, the ``on_failure`` handler and the source's acknowledger see it.

        Examples:
            >>> msg.with_metadata(tenant="acme").metadata["tenant"]
            'acme'
        """
        return self.replace(self.data, metadata={**self.metadata, **updates})

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
        if self.action is not None:
            parts.append(f"action={self.action!r}")
        return f"Message({', '.join(parts)})"


def check_failure_options(on_failure: str, max_deliveries: int | None) -> None:
    """Refuse a broker source's ``on_failure`` that is not an action, or a ``max_deliveries``
    that is not a positive integer (or None)."""
    if on_failure not in ACTIONS:
        raise ValueError(
            f"on_failure={on_failure!r} must be one of {', '.join(map(repr, ACTIONS))}"
        )
    if max_deliveries is not None and (
        not isinstance(max_deliveries, int)
        or isinstance(max_deliveries, bool)
        or max_deliveries < 1
    ):
        raise ValueError(f"max_deliveries={max_deliveries!r} must be a positive integer or None")


def reason_text(reason: BaseException | str | None) -> str:
    """A failure reason as one line for a dead letter or a log: ``"ValueError: bad id"``, or
    the string given to ``Message.fail``."""
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


def reason_key(reason: BaseException | str | None) -> str:
    """The ``failed_by_reason`` key of a reason: an exception's class name, or the string.

    An exception group whose leaves are all of one class counts under that class (a
    ``ConnectionError`` raised in a nursery is a ``ConnectionError``).
    """
    group = group_of(reason) if isinstance(reason, BaseException) else None
    if group is not None:
        kinds = {type(leaf) for leaf in leaves(group)}
        if len(kinds) == 1:
            return kinds.pop().__name__
        return type(group).__name__
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return str(reason)


def is_message(value: object) -> TypeGuard[Message[Any]]:
    """Whether ``value`` is a :class:`Message` (of any data, for type checkers)."""
    return isinstance(value, Message)
