"""CPU-bound stage: process(fn, n=2, parallel=True) against the same function in one thread.

Run: ``python -m bench.cpu_parallel [--items 400] [--repeat 3]``. The figure to reach on a
2-core machine is 1.7x (issue 8); it needs the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import time

import trio

import trioflow as tf


def burn(n: int) -> int:
    """About 2 ms of pure-Python work (holds the GIL, so threads cannot help)."""
    total = 0
    for i in range(60_000):
        total += (i * n) % 7
    return total


async def run(items: int, parallel: bool) -> float:
    stage = tf.process(burn, n=2, parallel=True) if parallel else tf.process(burn, thread=True)
    started = time.perf_counter()
    out = await tf.collect(tf.from_iterable(range(items)) | stage)
    elapsed = time.perf_counter() - started
    assert sorted(out) == sorted(burn(i) for i in range(items))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    trio.run(run, 4, True)  # start the worker processes once
    thread, parallel = [], []
    for _ in range(args.repeat):
        thread.append(trio.run(run, args.items, False))
        parallel.append(trio.run(run, args.items, True))
    t, p = sorted(thread)[len(thread) // 2], sorted(parallel)[len(parallel) // 2]
    print(f"| one thread | {args.items / t:,.0f} items/s | 1.00x |")
    print(f"| parallel=True, n=2 | {args.items / p:,.0f} items/s | {t / p:.2f}x |")


if __name__ == "__main__":
    main()
