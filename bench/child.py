"""One measurement in a fresh process: ``python -m bench.child W1 trio '{"n": 1000}'``.

Prints one JSON line: elapsed seconds (around the run only, imports excluded), peak RSS of this
process (VmHWM; ``ru_maxrss`` too, which on Linux carries the parent's peak across exec), and
what the implementation returned (sum, count, extra figures).
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import time

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
    gc.collect()
    started = time.perf_counter()
    result = fn(params)
    elapsed = time.perf_counter() - started
    out = {
        "elapsed": elapsed,
        "peak_rss_kb": peak_rss_kb(),
        "ru_maxrss_kb": ru_maxrss_kb(),
        "result": result,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
