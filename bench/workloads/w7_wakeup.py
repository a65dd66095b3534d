"""W7 wake-up lateness: a task sleeping 10 ms in a loop beside a running W2 pipeline.

W2's stages never suspend, so nothing in the pipeline waits on I/O for seconds on end; the
program's other tasks (a heartbeat, a health check, the task that calls ``stop``) still need the
scheduler. A sleeper beside the pipeline sleeps 10 ms at a time (``sleep_until(now + 0.01)``)
until the pipeline ends and records how late each wake-up is (the clock when it runs again minus
its deadline). The figures are over those wake-ups. :func:`probe` records the same sleeper's
lateness on an idle loop in the same process (the timer's own floor), before and after the run.
"""

from __future__ import annotations

from typing import Any

import trio

from ._common import quantiles_ms, w2_expected

TITLE = "W7 wake-up lateness beside W2"
DESCRIPTION = (
    "a task sleeping 10 ms in a loop beside W2 ({n} ints -> three non-suspending async "
    "stages -> a sink that sums); how late each of its wake-ups is"
)
METRIC = "latency"
SIZES = {"default": {"n": 6_000_000}, "quick": {"n": 50_000}}
#: the hand-written trio pipeline is ~30x slower: fewer items give as many wake-ups
PEER_SIZES = {"trio": {"n": 100_000}}
PERIOD = 0.010
#: wake-ups per idle probe reading (two readings per run: about 0.4 s)
PROBE_SLEEPS = 20
#: the probe's figures shown next to the run's (latency tables), and the run's own count
PROBE_FIGURES = ("idle_p50_ms", "idle_max_ms")
RESULT_FIGURES = ("samples",)


def expected(p: dict[str, Any]) -> dict[str, int]:
    return w2_expected(p["n"])


async def _sleeper(late: list[float], count: int | None = None) -> None:
    """Sleep ``PERIOD`` at a time (``count`` times, or until cancelled); record each lateness."""
    clock = trio.current_time
    done = 0
    while count is None or done < count:
        deadline = clock() + PERIOD
        await trio.sleep_until(deadline)
        late.append(clock() - deadline)
        done += 1


def probe(impl: str) -> dict[str, float]:
    """The sleeper's lateness on an idle trio loop, in this process."""
    late: list[float] = []
    trio.run(_sleeper, late, PROBE_SLEEPS)
    q = quantiles_ms(late)
    return {"idle_p50_ms": q["p50_ms"], "idle_max_ms": q["max_ms"]}


def _beside(run_pipeline: Any, n: int, total: dict[str, int]) -> dict[str, Any]:
    """Run ``run_pipeline(n, total)`` with the sleeper beside it; the sleeper stops with it."""
    late: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sleeper, late)
            await run_pipeline(n, total)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return {**total, **quantiles_ms(late), "samples": len(late)}


def run_trioflow(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    from .w2_transforms import trioflow_pipeline

    async def pipeline(n: int, total: dict[str, int]) -> None:
        await trioflow_pipeline(tf.from_iterable(range(n)), total).run()

    return _beside(pipeline, p["n"], {"sum": 0, "count": 0})


def run_trio(p: dict[str, Any]) -> dict[str, Any]:
    from .w2_transforms import trio_pipeline

    return _beside(trio_pipeline, p["n"], {"sum": 0, "count": 0})


IMPLS = {
    "trioflow": run_trioflow,
    "trio": run_trio,
}
NOTES = {
    "trioflow": "W2's trioflow pipeline; the issue's figure is its p99",
    "trio": "W2's hand-written trio pipeline (a checkpoint per item per hop)",
}
SKIPPED = {
    "sequential": "the loop of W2 never yields (its functions do not suspend): the sleeper "
    "would wake only when the loop ends",
    "peers": "the question is trioflow's own scheduling; the hand-written trio row is the "
    "reference",
}
