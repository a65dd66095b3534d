"""Reconnecting broker sources: a policy, and the loop that applies it.

A broker source runs its *session* (connect, consume, hand over) inside :func:`keep_connected`.
When the session raises an error the connector calls transient (the connection dropped, the
broker restarted, a reconnect was refused), the loop reports it (``Outlet.disconnected``: a
warning on the ``"trioflow"`` logger and the ``source_disconnected`` telemetry event), waits
for the policy's backoff, and runs the session again; the first success after an outage is
reported too (``source_reconnected``). An outage longer than ``give_up_after`` fails the run
with :class:`SourceUnavailable` (the CLI exits 3). Unacked work is the connector's business:
Redis keeps it in the group's pending list (acked by id on the new connection, or claimed
again); RabbitMQ requeues what a closed channel had not acked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final

import attrs
import trio

from .._groups import leaves
from .._retry import Backoff

__all__ = ["CONNECTION_ERRORS", "Outage", "Reconnect", "SourceUnavailable", "keep_connected"]

#: errors that mean "the connection is gone" for any client built on sockets
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, refused, reset, timed out
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class SourceUnavailable(ConnectionError):
    """A broker source could not reconnect within its policy's ``give_up_after``."""


def _default_backoff() -> Backoff:
    return Backoff.exponential(0.1, max=5.0, jitter=True)


def _check_give_up(_: Any, __: Any, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not value >= 0):
        raise ValueError(f"Reconnect(give_up_after={value!r}) must be seconds >= 0, or None")


@final
@attrs.frozen
class Reconnect:
    """How a broker source reconnects after it loses its connection.

    Attributes:
        backoff: the wait before each try of one outage (default: 0.1 s doubling up to 5 s,
            with full jitter, so many consumers do not reconnect in step).
        give_up_after: how long one outage may last, in seconds, before the run fails with
            :class:`SourceUnavailable` (wrapped in ``PipelineError``; the CLI exits 3).
            ``None``: try forever.

    Pass ``reconnect=None`` to a source to fail at the first lost connection instead.

    Examples:
        >>> RedisStreamSource("events", "workers", reconnect=Reconnect(give_up_after=300.0))
    """

    backoff: Backoff = attrs.field(factory=_default_backoff)
    give_up_after: float | None = attrs.field(default=60.0, validator=_check_give_up)


Session = Callable[[Callable[[], None]], Awaitable[None]]


def is_transient(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` (or every leaf of an exception group) is one of ``kinds``."""
    found = leaves(exc)
    return bool(found) and all(isinstance(leaf, kinds) for leaf in found)


@final
class Outage:
    """One outage under a :class:`Reconnect` policy, from its first failed try: counts the
    tries and says how long to wait before the next, until ``give_up_after`` has passed.

    Examples:
        >>> outage = Outage(Reconnect(give_up_after=30.0))
        >>> delay = outage.next_delay()  # after a failed try: None once it is time to give up
    """

    def __init__(self, policy: Reconnect) -> None:
        self.policy = policy
        #: failed tries so far
        self.attempt = 0
        self.since = trio.current_time()

    @property
    def elapsed(self) -> float:
        """Seconds since the outage began."""
        return trio.current_time() - self.since

    def next_delay(self) -> float | None:
        """Count a failed try; the wait before the next (never past ``give_up_after``), or
        ``None`` once ``give_up_after`` has passed."""
        self.attempt += 1
        elapsed = self.elapsed
        limit = self.policy.give_up_after
        if limit is not None and elapsed >= limit:
            return None
        delay = self.policy.backoff.delay(self.attempt)
        return delay if limit is None else min(delay, limit - elapsed)


async def keep_connected(
    out: Any,
    policy: Reconnect | None,
    session: Session,
    *,
    transient: tuple[type[BaseException], ...] = CONNECTION_ERRORS,
    what: str,
) -> None:
    """Run ``session(connected)`` until it returns, reconnecting after transient errors.

    ``session`` calls ``connected()`` once its connection is up (and has pulled nothing yet
    that it could lose): that ends an outage. ``what`` names the source in errors.
    """
    outage: Outage | None = None

    def connected() -> None:
        nonlocal outage
        if outage is not None:
            out.reconnected(outage.attempt, outage.elapsed)
        outage = None

    while True:
        try:
            await session(connected)
            return
        except Exception as exc:
            if policy is None or not is_transient(exc, transient):
                raise
            if outage is None:
                outage = Outage(policy)
            delay = outage.next_delay()
            if delay is None:
                raise SourceUnavailable(
                    f"{what}: no connection for {outage.elapsed:.1f} s ({outage.attempt} tries, "
                    f"give_up_after={policy.give_up_after}); last error: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            out.disconnected(exc, outage.attempt, delay)
            await trio.sleep(delay)
