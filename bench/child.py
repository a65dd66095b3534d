"""One measurement in a fresh process: ``python -m bench.child W1 trio '{"n": 1000}'``.

Prints one JSON line: elapsed seconds (around the run only, imports excluded; or what the
workload timed itself, as ``elapsed_s`` in its result), peak RSS of this
process (VmHWM; ``ru_maxrss`` too, which on Linux carries the parent's peak across exec), and
what the implementation returned (sum, count, extra figures).

A workload module may define ``probe(impl) -> dict[str, float]``: a baseline measured in this same
process, outside the clock, once before the run and once after (W3: how long one 1 ms sleep
takes here; W7: how late a 10 ms sleep wakes on an idle loop). The line then carries ``probe``
(the mean of the two readings, per key) and ``probes`` (both readings).
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import time
from typing import Any

from .workloads import load
from .workloads._common import peak_rss_kb, ru_maxrss_kb


def main(argv: list[str]) -> int:
    key, impl, params = argv[0], argv[1], json.loads(argv[2])
    module = load(key)
    fn = module.IMPLS[impl]
    # import what the implementation needs before the clock starts
    package = impl.split("+")[0]
    if package == "trioflow":
        importlib.import_module("trioflow")
        importlib.import_module("trioflow.testing")
    elif package in ("slurry", "aiostream", "pypeln"):
        importlib.import_module(package)
    probe = getattr(module, "probe", None)
    before = probe(impl) if probe is not None else None
    gc.collect()
    started = time.perf_counter()
    result = fn(params)
    elapsed = time.perf_counter() - started
    if isinstance(result, dict) and "elapsed_s" in result:
        # the workload timed its own steady state (W9: from the first message consumed, after
        # starting a broker and joining a consumer group)
        elapsed = float(result.pop("elapsed_s"))
    out: dict[str, Any] = {
        "elapsed": elapsed,
        "peak_rss_kb": peak_rss_kb(),
        "ru_maxrss_kb": ru_maxrss_kb(),
        "result": result,
    }
    if probe is not None and before is not None:
        after = probe(impl)
        out["probes"] = [before, after]
        out["probe"] = {k: (before[k] + after[k]) / 2 for k in before}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
