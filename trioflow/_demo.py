"""The bundled import pipeline (``trioflow demo``, ``examples/import_events.py``).

JSON-lines events, validated, enriched, batched into SQLite.

What it shows: a checkpointed file source, cattrs validation that fails bad events with a reason
naming the field, a flaky enrichment call retried with backoff, batching for inserts, an upserting
SQLite sink (so a rerun or a redelivery is harmless), a dead-letter file with each failure's
reason, and the run report.

Run it (it generates its input the first time)::

    trioflow demo                                 # 20,000 events into ./trioflow-demo/events.db
    python examples/import_events.py              # the same, into examples/out/events.db
    python examples/import_events.py --events 1000 --out /tmp/demo --fresh
    python examples/import_events.py --source redis --redis-port 6379 --sink postgres --dsn ...

With ``--source redis`` it is a service: it consumes the stream in a consumer group until SIGINT
or SIGTERM, then drains (several copies share the stream; see docs/concepts/scaling-out.md).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO, cast

import attrs
import trio
import trio.lowlevel

import trioflow as tf
from trioflow.abc import Source
from trioflow.connectors.jsonl import JsonlSink, JsonlSource
from trioflow.connectors.postgres import PostgresSink
from trioflow.connectors.redis import RedisStreamSource
from trioflow.connectors.sqlite import SqliteSink

__all__ = ["Event", "FlakyRegions", "Row", "build", "generate", "main", "parse", "prepare"]


@attrs.frozen
class Event:
    """One event as the producer sends it."""

    id: int
    kind: str
    account: str
    amount: float
    ts: float
    entry: str = ""  # where it came from: "line:N" or a Redis entry id


@attrs.frozen
class Row:
    """What lands in the database."""

    id: int
    kind: str
    account: str
    amount: float
    ts: float
    region: str
    entry: str


def generate(path: Path, count: int, seed: int = 7) -> None:
    """Write ``count`` events, about 3% of them broken in the ways real feeds break."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(count):
            event = {
                "id": i,
                "kind": rng.choice(["order", "refund", "payment"]),
                "account": f"acct-{rng.randrange(500):03d}",
                "amount": round(rng.uniform(1, 500), 2),
                "ts": 1_700_000_000 + i,
            }
            roll = rng.random()
            if roll < 0.01:
                event["amount"] = "twelve"  # wrong type
            elif roll < 0.02:
                del event["account"]  # missing field
            elif roll < 0.025:
                event["coupon"] = "X"  # unknown field
            elif roll < 0.03:
                f.write(f'{{"id": {i}, "kind": "order", "acc\n')  # malformed JSON
                continue
            f.write(json.dumps(event) + "\n")


class FlakyRegions:
    """A stand-in for a remote lookup that fails transiently now and then.

    Examples:
        >>> row = await FlakyRegions()(event)
    """

    def __init__(self) -> None:
        self.calls = 0
        self._failed_once: set[str] = set()

    async def __call__(self, event: Event) -> Row:
        self.calls += 1
        await trio.lowlevel.checkpoint()  # a real service would be awaited here
        if event.id % 25 == 0 and event.account not in self._failed_once:
            self._failed_once.add(event.account)
            raise ConnectionError(f"region service timed out for {event.account}")
        region = ["eu", "us", "apac"][hash(event.account) % 3]
        return Row(event.id, event.kind, event.account, event.amount, event.ts, region, event.entry)


def tag_entry(message: tf.Message[Any]) -> tf.Message[Any]:
    """Record where the event came from (a file line or a stream entry) in the event itself."""
    meta = message.metadata
    entry = str(meta["id"]) if "id" in meta else f"line:{meta.get('line')}"
    data: object = message.data
    if isinstance(data, dict):
        return message.replace({**cast("dict[str, Any]", data), "entry": entry})
    return message


def build_source(args: argparse.Namespace) -> Source[Any]:
    """A checkpointed JSON-lines file, or a Redis Streams consumer group."""
    if args.source == "redis":
        return RedisStreamSource(
            args.stream,
            args.group,
            args.consumer,
            port=args.redis_port,
            claim_idle=args.claim_idle,
            block=0.2,
        )
    out: Path = args.out
    return JsonlSource(out / "events.jsonl", checkpoint=out / "events.checkpoint")


def build_sink(args: argparse.Namespace) -> SqliteSink | PostgresSink:
    """An upserting batch sink: SQLite, or PostgreSQL."""
    if args.sink == "postgres":
        return PostgresSink(args.dsn, "events", key="entry")
    return SqliteSink(args.out / "events.db", "events", key="entry")


def build(args: argparse.Namespace) -> tuple[tf.Pipeline, SqliteSink | PostgresSink]:
    """The pipeline: events in, validated and enriched rows out, failures to a dead letter."""
    save = build_sink(args)
    dead_letter = JsonlSink(args.out / "dead_letter.jsonl")
    retry = tf.Retry(attempts=4, backoff=tf.Backoff.exponential(0.005, max=0.1))
    # stream fields are all strings ("5"): convert them; JSON has types: check them
    decoder = (
        tf.decode(Event, format=None, strict=False) if args.source == "redis" else tf.decode(Event)
    )
    pipeline = (
        build_source(args)
        | tf.process(tag_entry, messages=True)
        | decoder
        | tf.process(FlakyRegions(), n=16, retry=retry, name="regions")
        | tf.batch(500, 0.5)
        | tf.sink(save, retry=retry)
    ).on_failure(dead_letter.write_failed)
    return pipeline, save


def print_report(report: tf.RunReport, args: argparse.Namespace) -> None:
    """The report as the example prints it."""
    print(f"received   {report.received:>8}")
    print(f"acked      {report.acked:>8}")
    print(f"failed     {report.failed:>8}   -> {args.out / 'dead_letter.jsonl'}")
    for reason, count in sorted(report.failed_by_reason.items()):
        print(f"  {reason:<20} {count:>6}")
    print(f"retried    {report.retried:>8}")
    print(f"unsettled  {report.unsettled:>8}")
    if args.sink == "sqlite":
        print(f"rows in db {count_rows(args.out / 'events.db'):>8}")
    print(f"elapsed    {report.elapsed:>8.2f} s   ({report.throughput:,.0f} events/s)")
    print("stage latency (p50 / p99, ms):")
    for name, s in report.stages.items():
        print(f"  {name:<24} {s.p50 * 1e3:>8.3f} {s.p99 * 1e3:>8.3f}   ({s.count} items)")


def count_rows(db: Path) -> int:
    """Rows in the demo's SQLite table (0 before the first run)."""
    try:
        with closing(sqlite3.connect(db)) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def add_arguments(parser: argparse.ArgumentParser, default_out: Path) -> None:
    """The demo's options (shared by the example script and ``trioflow demo``)."""
    parser.add_argument("--events", type=int, default=20_000, help="events to generate")
    parser.add_argument("--out", type=Path, default=default_out, help="where files go")
    parser.add_argument("--fresh", action="store_true", help="start over: new input, empty db")
    parser.add_argument(
        "--source",
        choices=["file", "redis"],
        default="file",
        help="where events come from: a generated JSONL file, or a Redis stream "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--sink",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="where valid events go: SQLite under --out, or PostgreSQL at --dsn "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=6379,
        help="port of the Redis on 127.0.0.1 for --source redis (default: %(default)s)",
    )
    parser.add_argument(
        "--stream",
        default="events",
        help="the Redis stream to read for --source redis (default: %(default)s)",
    )
    parser.add_argument(
        "--group",
        default="importers",
        help="the consumer group to read it in (default: %(default)s)",
    )
    parser.add_argument("--consumer", default=None, help="default: host-pid")
    parser.add_argument("--claim-idle", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--dsn",
        default="host=127.0.0.1 dbname=postgres user=postgres",
        help="libpq connection string for --sink postgres (default: %(default)s)",
    )


def parse(argv: list[str] | None, default_out: Path) -> argparse.Namespace:
    """Parse the example's command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_arguments(parser, default_out)
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, log: TextIO = sys.stdout) -> None:
    """Create the output folder; start over with ``--fresh``; generate the input if missing."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for name in ("events.jsonl", "events.db", "events.checkpoint", "dead_letter.jsonl"):
            (out / name).unlink(missing_ok=True)
    if args.source == "file" and not (out / "events.jsonl").exists():
        started = time.perf_counter()
        generate(out / "events.jsonl", args.events)
        took = time.perf_counter() - started
        print(f"generated {args.events} events in {took:.2f} s", file=log, flush=True)


async def main(argv: list[str] | None = None, default_out: Path | None = None) -> tf.RunReport:
    """The example script: parse, prepare, run until done (or SIGINT/SIGTERM), report.

    Examples:
        >>> trio.run(main, ["--events", "1000", "--fresh"])
    """
    args = parse(argv, default_out or Path("trioflow-demo"))
    prepare(args)
    pipeline, save = build(args)
    print(pipeline, flush=True)
    stop = trio.Event()
    async with save, trio.open_nursery() as nursery:
        # a stream never ends: SIGINT/SIGTERM drain it gracefully (a file ends by itself)
        nursery.start_soon(stop_on_signal, stop)
        report = await pipeline.run(stop=stop)
        nursery.cancel_scope.cancel()
    print_report(report, args)
    return report


async def stop_on_signal(stop: trio.Event) -> None:
    """Start a graceful drain on each SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("stopping: draining in-flight events", file=sys.stderr, flush=True)
            stop.set()
