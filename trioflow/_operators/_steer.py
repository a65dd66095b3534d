"""What steers a running ``process``/``sink`` stage: ``handle.resize(stage, n)``, its limit and
its breaker's state, as the stage's ``ctx.control``.

Resizing changes how many calls may be in flight. A stage starts as many worker tasks as its
``n`` (an adaptive one: its ``max``); growing past that starts more in the run's stage nursery
(through ``ctx.spawn``), shrinking lets the workers numbered ``n`` and above finish their call
and wait (holding no item) until the stage grows again or its input ends. So a stage resized up
and down keeps the tasks of its largest size, a few hundred bytes each, and nothing else: the
items it holds stay bounded by ``max(buffer, largest n)`` (see docs/concepts/flow-control.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

from trio.lowlevel import ParkingLot

from .._flow import Adaptive
from .._sources import Gate

if TYPE_CHECKING:
    from ._breaker import BreakerState
    from ._context import StageContext

__all__ = ["SourceHolds", "Steering", "describe_control"]

Task = Callable[[], Awaitable[None]]

#: the most calls ``handle.resize`` lets a stage run at once (its tasks are started at once and
#: kept for the run: a typo of a few zeros, or one request to the dashboard, must not stall the
#: loop and take gigabytes); a stage built with a larger ``n`` may go back up to that
MAX_RESIZE = 4096


@final
class Steering:
    """The live concurrency of one ``process``/``sink`` stage (its ``ctx.control``).

    ``limit``: calls that may be in flight now. ``make_worker(idx)`` registers one more producer
    on the stage's output and returns worker number ``idx``'s task; ``on_resize(n)`` lets the
    stage's shared state follow (a pool's cap).
    """

    __slots__ = (
        "adaptive",
        "breaker_state",
        "ctx",
        "ended",
        "first_n",
        "limit",
        "lot",
        "make_worker",
        "on_resize",
        "tasks",
    )

    def __init__(
        self, ctx: StageContext, limit: int, tasks: int, adaptive: Adaptive | None = None
    ) -> None:
        self.ctx = ctx
        self.limit = limit
        self.tasks = tasks
        #: the tasks the stage was built with (a resize may always go back up to them)
        self.first_n = tasks
        self.adaptive = adaptive
        self.breaker_state: BreakerState | None = None
        #: workers numbered ``limit`` and above wait here
        self.lot = ParkingLot()
        #: the stage's input ended: no new workers, idle ones leave
        self.ended = False
        self.make_worker: Callable[[int], Task] | None = None
        self.on_resize: Callable[[int], None] | None = None
        ctx.workers = limit
        ctx.control = self

    @property
    def breaker(self) -> str | None:
        """The breaker's state (``"closed"``, ``"open"``, ``"half_open"``), or None."""
        return None if self.breaker_state is None else self.breaker_state.state

    def set_limit(self, n: int) -> None:
        """The limit is now ``n`` (an adaptive limiter's move, or a resize)."""
        self.limit = n
        self.ctx.workers = n
        if self.lot:
            self.lot.unpark_all()

    def resize(self, n: int) -> None:
        """``handle.resize``: let ``n`` calls be in flight from now on (see the module)."""
        label = self.ctx.label
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"resize: n={n!r} must be a positive integer (stage {label!r})")
        most = max(MAX_RESIZE, self.first_n)
        if n > most:
            raise ValueError(
                f"resize: n={n} for stage {label!r} is more than {most} calls at once "
                "(each is a task kept for the run)"
            )
        if self.adaptive is not None:
            raise ValueError(
                f"resize: stage {label!r} has an adaptive limit ({self.adaptive!r}, now "
                f"{self.limit}) that follows its calls' latency; it cannot be resized"
            )
        if self.ended and self.ctx.spawn is None:
            return  # the run ended: nothing to resize (see ``PipelineHandle.resize``)
        if self.on_resize is not None:
            self.on_resize(n)
        self.set_limit(n)
        spawn = self.ctx.spawn
        if self.ended or spawn is None or self.make_worker is None:
            return
        while self.tasks < n:
            spawn(self.make_worker(self.tasks))
            self.tasks += 1

    async def idle(self, idx: int) -> bool:
        """Worker ``idx`` waits while it is beyond the limit; False once the input ended (the
        worker leaves)."""
        while idx >= self.limit and not self.ended:
            await self.lot.park()
        return not self.ended

    def end(self) -> None:
        """The stage's input ended: idle workers leave, no more are started."""
        self.ended = True
        if self.lot:
            self.lot.unpark_all()


def describe_control(control: Any) -> str | None:
    """The breaker state of a stage's control, if it has one (for reports and snapshots)."""
    return control.breaker if isinstance(control, Steering) else None


@final
class SourceHolds:
    """Who holds the sources' gate shut: ``"user"`` (``handle.pause()``) and each stage whose
    breaker is open. The gate opens only when nobody holds it, so a user's resume does not undo
    a breaker's pause, nor a breaker closing a user's."""

    __slots__ = ("_gate", "_who")

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._who: set[str] = set()

    def hold(self, who: str, on: bool) -> None:
        if on:
            self._who.add(who)
            self._gate.pause()
        else:
            self._who.discard(who)
            if not self._who:
                self._gate.resume()

    def has(self, who: str) -> bool:
        return who in self._who
