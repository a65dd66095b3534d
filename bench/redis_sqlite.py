"""Redis Streams -> SQLite: trioflow against a hand-written loop, and 1 process against 2.

Starts its own redis-server on 127.0.0.1 (needs Debian's redis-server), fills a stream, and
drains it into SQLite (upsert by entry id) with:

* ``trioflow``: RedisStreamSource | process(to_row) | batch(500, 0.2) | sink(SqliteSink)
* ``loop``: the obvious hand-written loop with the same client: XREADGROUP 500, insert in a
  worker thread, XACK;
* ``trioflow x2``: two trioflow processes in one consumer group.

Run: ``python -m bench.redis_sqlite [--entries 100000]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import trio

import trioflow as tf
from trioflow.connectors.redis import RedisStreamSource, connect
from trioflow.connectors.sqlite import SqliteSink

STREAM, GROUP = "bench", "bench"


def to_row(fields: dict[str, str]) -> dict[str, Any]:
    return {"entry": fields["n"], "n": int(fields["n"]), "payload": fields["payload"]}


async def fill(port: int, entries: int) -> None:
    async with connect(port=port) as client:
        await client.delete([STREAM])
        for start in range(0, entries, 5000):
            pipe = client.pipeline(transaction=False)
            async with pipe:
                for i in range(start, min(entries, start + 5000)):
                    pipe.xadd(STREAM, {"n": str(i), "payload": "x" * 64})


async def run_trioflow(port: int, db: Path, consumer: str, total: int) -> None:
    """Consume until the group has delivered and acked every entry (checked every 50 ms)."""
    stop = trio.Event()
    save = SqliteSink(db, "rows", key="entry")
    source = RedisStreamSource(STREAM, GROUP, consumer, port=port, block=0.05)
    pipeline = source | tf.process(to_row) | tf.batch(500, 0.2) | tf.sink(save)

    async def watch() -> None:
        async with connect(port=port) as client:
            while True:
                await trio.sleep(0.05)
                groups = await client.xinfo_groups(STREAM)
                group = next((g for g in groups if g["name"] == GROUP), None)
                if group and group["lag"] == 0 and group["pending"] == 0:
                    stop.set()
                    return

    async with save, trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await pipeline.run(stop=stop)


async def run_loop(port: int, db: Path, total: int) -> None:
    """The hand-written baseline: read, insert, ack."""
    save = SqliteSink(db, "rows", key="entry")
    async with connect(port=port) as client, save:
        with contextlib.suppress(Exception):
            await client.xgroup_create(STREAM, GROUP, identifier="0", mkstream=True)
        done = 0
        while done < total:
            got = await client.xreadgroup(
                GROUP, "loop", streams={STREAM: ">"}, count=500, block=100
            )
            entries = got.get(STREAM, ()) if got else ()
            if not entries:
                continue
            await save([to_row(dict(e.field_values)) for e in entries])
            await client.xack(STREAM, GROUP, [e.identifier for e in entries])
            done += len(entries)


def _count(db: Path) -> int:
    try:
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            return int(conn.execute("SELECT count(*) FROM rows").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _worker(argv: list[str]) -> None:
    port, db, consumer, total = int(argv[0]), Path(argv[1]), argv[2], int(argv[3])
    if consumer == "loop":
        trio.run(run_loop, port, db, total)
    else:
        trio.run(run_trioflow, port, db, consumer, total)


def measure(kind: str, port: int, entries: int, workdir: Path) -> float:
    db = workdir / f"{kind.replace(' ', '_')}.db"
    db.unlink(missing_ok=True)
    trio.run(fill, port, entries)
    started = time.perf_counter()
    # every implementation runs in fresh processes, so each pays the same start-up
    procs = 2 if kind == "trioflow x2" else 1
    names = ["loop"] if kind == "loop" else [f"c{i}" for i in range(procs)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.redis_sqlite",
                "--worker",
                str(port),
                str(db),
                name,
                str(entries),
            ]
        )
        for name in names
    ]
    for w in workers:
        if w.wait() != 0:
            raise RuntimeError(f"{kind}: a worker failed")
    elapsed = time.perf_counter() - started
    assert _count(db) == entries, f"{kind}: {_count(db)} rows, expected {entries}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", nargs=4)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "connectors"))
        from servers import RedisServer  # type: ignore[import-not-found]

        server = RedisServer(workdir / "redis")
        server.start()
        try:
            kinds = ["loop", "trioflow", "trioflow x2"]
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.repeat):
                for kind in kinds:  # interleaved
                    times[kind].append(measure(kind, server.port, args.entries, workdir))
        finally:
            server.stop()
    base = sorted(times["loop"])[len(times["loop"]) // 2]
    print(f"Redis Streams -> SQLite, {args.entries} entries, median of {args.repeat}\n")
    print("| implementation | entries/s | ratio to the loop |")
    print("| --- | ---: | ---: |")
    for kind in kinds:
        t = sorted(times[kind])[len(times[kind]) // 2]
        print(f"| {kind} | {args.entries / t:,.0f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
