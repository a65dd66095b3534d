"""A dedicated OS thread for a synchronous client, bridged to trio.

confluent-kafka's consumer and producer are synchronous and call back (rebalances, delivery
reports) from inside their own calls. :class:`DedicatedThread` runs such calls one at a time on
one thread that lives as long as the client, so the client only ever sees that thread; the trio
task that asked waits without blocking the event loop. Calls cannot be interrupted: a cancelled
waiter still waits for its call to return, so callers keep each call short (a poll timeout of a
fraction of a second).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, final

import outcome
import trio

__all__ = ["DedicatedThread"]

T = TypeVar("T")


def _ignore(result: outcome.Outcome[Any]) -> None:
    pass


_Job = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]]


@final
class DedicatedThread:
    """Runs functions on one thread of its own, in order; see the module docs.

    Examples:
        >>> thread = DedicatedThread("kafka-consumer")
        >>> messages = await thread.run(lambda: consumer.consume(100, 0.1))
        >>> thread.stop()
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, deliver = job
            deliver(outcome.capture(fn))

    @property
    def ident(self) -> int | None:
        """The thread's identifier."""
        return self._thread.ident

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the thread and return its result (or raise its exception)."""
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put((fn, deliver))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on the thread after the calls already asked for; nobody waits for it."""
        self._jobs.put((fn, _ignore))

    def stop(self) -> None:
        """Let the thread end once the calls already asked for are done."""
        self._jobs.put(None)
