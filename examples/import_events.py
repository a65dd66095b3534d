"""The import pipeline: JSON-lines events, validated, enriched, batched into SQLite.

What it shows: a checkpointed file source, cattrs validation that fails bad events with a reason
naming the field, a flaky enrichment call retried with backoff, batching for inserts, an upserting
SQLite sink (so a rerun or a redelivery is harmless), a dead-letter file with each failure's
reason, and the run report. The pipeline itself is in ``trioflow/_demo.py`` (read it there), so
that ``trioflow demo`` runs the same program from an installed package.

Run it (it generates its input the first time)::

    python examples/import_events.py              # 20,000 events into examples/out/events.db
    python examples/import_events.py --events 1000 --out /tmp/demo --fresh
    python examples/import_events.py --source redis --redis-port 6379 --sink postgres --dsn ...
    trioflow demo                                 # the same with a live progress display

With ``--source redis`` it is a service: it consumes the stream in a consumer group until SIGINT
or SIGTERM, then drains (several copies share the stream; see docs/concepts/scaling-out.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from trioflow._demo import main

if __name__ == "__main__":
    result = trio.run(main, sys.argv[1:], Path(__file__).parent / "out")
    sys.exit(0 if result.unsettled == 0 else 1)
