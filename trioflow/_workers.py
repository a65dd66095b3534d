"""``trioflow run --workers N``: N supervised processes of one pipeline, metrics on one endpoint.

Each worker is ``trioflow run TARGET`` in a child process of its own session (so a terminal's
Ctrl-C reaches only the supervisor, which drains the workers once), with the environment
variables ``TRIOFLOW_WORKER`` (``0`` .. ``N-1``, stable across restarts: use it in a consumer's
name, so a restarted worker gets back what it had in flight) and ``TRIOFLOW_WORKERS`` (``N``).

* a worker that exits with a status other than 0 (done) or 2 (a usage error, which would only
  repeat) is started again after a backoff that doubles from :data:`BACKOFF_MIN` to
  :data:`BACKOFF_MAX` seconds, and starts again from the minimum after it has run
  :data:`HEALTHY_AFTER` seconds;
* the first SIGINT/SIGTERM sends SIGTERM to every worker (each drains), the second SIGKILLs them;
* a worker whose supervisor dies (even by SIGKILL) sees its stdin close and drains;
* with ``--metrics-port`` the supervisor serves ``/metrics``: every worker's series with a
  ``worker`` label added (not summed: a restarted worker's counters start again from 0, which
  ``rate()`` handles per series but would read as a drop in a sum; ``sum without (worker)``
  in PromQL gives the totals), plus ``trioflow_worker_up`` and ``trioflow_worker_restarts``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TextIO, cast

import attrs
import h11
import trio

from ._cli_load import UsageError
from ._cli_run import EXIT_OK, EXIT_USAGE
from ._pipeline import Pipeline

__all__ = ["check_shares_work", "run_workers"]

#: seconds before the first restart of a crashed worker; doubles up to BACKOFF_MAX
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
#: a worker that ran this long before it crashed is restarted after BACKOFF_MIN again
HEALTHY_AFTER = 60.0
#: seconds the supervisor waits for a worker's metrics when scraped
SCRAPE_TIMEOUT = 2.0

#: sources that share work through their broker (module, class); a source class of your own
#: says so with a class attribute ``shares_work = True``
SHARING_SOURCES = frozenset(
    {
        ("trioflow.connectors.redis", "RedisStreamSource"),
        ("trioflow.connectors.kafka", "KafkaSource"),
        ("trioflow.connectors.rabbitmq", "RabbitQueueSource"),
        ("trioflow.testing._sim_source", "SimulatedSource"),
    }
)


def check_shares_work(pipeline: Pipeline, workers: int) -> None:
    """Raise :class:`UsageError` unless every source of ``pipeline`` shares work through a
    broker (a consumer group, a shared queue): otherwise each worker would read everything."""
    if not pipeline.stages:
        raise UsageError("--workers: the target has no source")
    source: Any = pipeline.stages[0]
    parts = source.parts() if hasattr(source, "parts") else (source,)
    for part in parts:
        kind: tuple[str, str] = (type(part).__module__, type(part).__name__)
        if getattr(part, "shares_work", False) or kind in SHARING_SOURCES:
            continue
        raise UsageError(
            f"--workers {workers}: the source {part!r} does not share work through a broker "
            "(consumer group), so every worker would read all of it; sources that do: "
            "RedisStreamSource, KafkaSource, RabbitQueueSource (or a class with "
            "shares_work = True)"
        )


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


@attrs.define
class _Worker:
    index: int
    restarts: int = 0
    process: trio.Process | None = None
    metrics_port: int | None = None
    report: dict[str, Any] | None = None
    status: int | None = None


@attrs.define
class _Supervisor:
    opts: argparse.Namespace
    workers: list[_Worker]
    draining: trio.Event = attrs.Factory(trio.Event)
    hard_signal: int | None = None
    err: TextIO = attrs.Factory(lambda: sys.stderr)

    def say(self, text: str) -> None:
        print(f"trioflow: {text}", file=self.err, flush=True)

    def command(self) -> list[str]:
        o = self.opts
        cmd = [sys.executable, "-m", "trioflow", "run", o.target, "--no-progress", "--json"]
        cmd += ["--drain-timeout", repr(o.drain_timeout)]
        cmd += ["--failed-exit-code", str(o.failed_exit_code)]
        cmd += ["--log-level", o.log_level, "--log-format", o.log_format]
        if o.metrics_port is not None:
            cmd += ["--metrics-port", "0"]
        if o.traceback:
            cmd.append("--traceback")
        return cmd

    async def run_worker(self, w: _Worker) -> None:
        delay = BACKOFF_MIN
        while True:
            started = trio.current_time()
            status = await self.run_once(w)
            w.status = status
            if self.draining.is_set() or status in (EXIT_OK, EXIT_USAGE):
                if status == EXIT_USAGE and not self.draining.is_set():
                    self.say(f"worker {w.index} {_describe(status)}: not restarted")
                return
            if trio.current_time() - started >= HEALTHY_AFTER:
                delay = BACKOFF_MIN
            self.say(f"worker {w.index} {_describe(status)}: restarting in {delay:g} s")
            with trio.move_on_after(delay):
                await self.draining.wait()
            if self.draining.is_set():
                return
            delay = min(delay * 2, BACKOFF_MAX)
            w.restarts += 1

    async def run_once(self, w: _Worker) -> int:
        env = {**os.environ, "TRIOFLOW_WORKER": str(w.index)}
        env["TRIOFLOW_WORKERS"] = str(len(self.workers))
        env["TRIOFLOW_SUPERVISED"] = "1"
        w.metrics_port = None
        w.report = None  # the report of this run, if it gets as far as printing one
        process = await trio.lowlevel.open_process(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        w.process = process
        self.say(f"worker {w.index} started (pid {process.pid})")
        if self.draining.is_set():
            # the drain began while this worker was being spawned (drain() did not see it)
            process.send_signal(signal.SIGTERM)
        out = bytearray()
        try:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None
                assert process.stderr is not None
                nursery.start_soon(_read_all, process.stdout, out)
                nursery.start_soon(self.forward, w, process.stderr)
                await process.wait()
        finally:
            w.process = None
            if process.stdin is not None:
                with trio.CancelScope(shield=True):
                    await process.stdin.aclose()
            if process.returncode is None:  # cancelled: never leave a worker behind
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
        lines = bytes(out).decode(errors="replace").strip().splitlines()
        if lines:
            with contextlib.suppress(ValueError):
                w.report = json.loads(lines[-1])
        status = process.returncode
        assert status is not None
        return status

    async def forward(self, w: _Worker, stream: trio.abc.ReceiveStream) -> None:
        """Copy a worker's stderr to ours, each line marked with the worker; note its port."""
        buffer = b""
        marker = b"trioflow: metrics at http://"
        while chunk := await stream.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                if raw.startswith(marker):
                    w.metrics_port = int(raw.rsplit(b":", 1)[1].split(b"/")[0])
                    continue
                self.err.write(_mark(raw.decode(errors="replace"), w.index) + "\n")
            self.err.flush()
        if buffer:
            self.err.write(_mark(buffer.decode(errors="replace"), w.index) + "\n")
            self.err.flush()

    def drain(self) -> None:
        self.draining.set()
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.kill()


def _mark(line: str, index: int) -> str:
    """A worker's log line: a JSON record gets a ``worker`` key, text a ``[worker N]`` prefix."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            pass
        else:
            if isinstance(record, dict):
                return json.dumps({**record, "worker": index})
    return f"[worker {index}] {line}"


async def _read_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


# -- the supervisor's endpoint -----------------------------------------------------------------


async def _fetch(port: int, path: str, accept: str) -> bytes:
    """``GET path`` from a worker's metrics server on 127.0.0.1; the body of a 200, else b""."""
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = h11.Request(
            method="GET",
            target=path,
            headers=[("Host", f"127.0.0.1:{port}"), ("Accept", accept), ("Connection", "close")],
        )
        await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        body = bytearray()
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some()))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    return bytes(body) if status == 200 else b""


async def _gather(sup: _Supervisor, path: str, accept: str) -> dict[int, bytes]:
    got: dict[int, bytes] = {}

    async def one(w: _Worker, port: int) -> None:
        with trio.move_on_after(SCRAPE_TIMEOUT):
            # a worker that is restarting: its series are missing from this scrape
            with contextlib.suppress(OSError, h11.ProtocolError, trio.BrokenResourceError):
                got[w.index] = await _fetch(port, path, accept)

    async with trio.open_nursery() as nursery:
        for w in sup.workers:
            if w.metrics_port is not None and w.process is not None:
                nursery.start_soon(one, w, w.metrics_port)
    return got


def merged_registry(texts: dict[int, bytes], sup: _Supervisor, pipeline: str) -> Any:
    """A registry of every worker's families (OpenMetrics text), each sample labelled with its
    ``worker``, and the supervisor's own ``trioflow_worker_up`` / ``trioflow_worker_restarts``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.openmetrics import parser

    # prometheus-client leaves the parser's argument unannotated
    parse = cast(
        "Callable[[str], Iterator[Any]]",
        parser.text_string_to_metric_families,  # pyright: ignore[reportUnknownMemberType]
    )

    families: dict[str, Any] = {}
    for index, text in sorted(texts.items()):
        try:
            parsed = list(parse(text.decode()))
        except ValueError:
            continue
        for fam in parsed:
            merged = families.get(fam.name)
            if merged is None:
                merged = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                families[fam.name] = merged
            for s in fam.samples:
                labels = {**s.labels, "worker": str(index)}
                merged.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
    up = GaugeMetricFamily(
        "trioflow_worker_up", "1 while the worker process runs.", labels=["pipeline", "worker"]
    )
    restarts = CounterMetricFamily(
        "trioflow_worker_restarts",
        "Times the supervisor restarted the worker after it crashed.",
        labels=["pipeline", "worker"],
    )
    for w in sup.workers:
        up.add_metric([pipeline, str(w.index)], 1.0 if w.process is not None else 0.0)
        restarts.add_metric([pipeline, str(w.index)], w.restarts)
    collected = [*families.values(), up, restarts]

    class _Merged:
        def collect(self) -> list[Any]:
            return collected

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return registry


async def _serve_metrics(
    sup: _Supervisor,
    pipeline: str,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    from ._http import Access, Request, serve_http
    from ._prometheus import render

    o = sup.opts
    access = Access.build(
        o.metrics_host, allow_remote=o.allow_remote, allowed_hosts=o.allowed_hosts
    )

    async def metrics(request: Request) -> tuple[str, bytes]:
        texts = await _gather(sup, "/metrics", "application/openmetrics-text; version=1.0.0")
        registry = merged_registry(texts, sup, pipeline)
        return render(registry, request.headers.get("accept", ""))

    async def snapshots(request: Request) -> tuple[str, bytes]:
        texts = await _gather(sup, "/metrics.json", "application/json")
        out: dict[str, Any] = {}
        for w in sup.workers:
            text = texts.get(w.index)
            out[str(w.index)] = {
                "up": w.process is not None,
                "pid": w.process.pid if w.process is not None else None,
                "restarts": w.restarts,
                "snapshot": json.loads(text) if text else None,
            }
        return "application/json", json.dumps({"workers": out}).encode()

    await serve_http(
        {"/metrics": metrics, "/metrics.json": snapshots},
        host=o.metrics_host,
        port=o.metrics_port,
        access=access,
        task_status=task_status,
    )


# -- the command -------------------------------------------------------------------------------


async def _supervise(sup: _Supervisor, pipeline: str) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    if count == 1:
                        sup.say(
                            f"draining {len(sup.workers)} workers (up to "
                            f"{sup.opts.drain_timeout:g} s); send it again to stop now"
                        )
                        sup.drain()
                    else:
                        sup.say("hard stop: killing the workers")
                        sup.hard_signal = signum
                        sup.kill()

            nursery.start_soon(on_signals)
            if sup.opts.metrics_port is not None:
                port = await nursery.start(_serve_metrics, sup, pipeline)
                host = sup.opts.metrics_host
                shown = f"[{host}]" if ":" in host else host
                sup.say(f"metrics of {len(sup.workers)} workers at http://{shown}:{port}/metrics")
            async with trio.open_nursery() as workers:
                for w in sup.workers:
                    workers.start_soon(sup.run_worker, w)
            nursery.cancel_scope.cancel()


def _status(sup: _Supervisor) -> int:
    if sup.hard_signal is not None:
        return 128 + sup.hard_signal
    worst = EXIT_OK
    for w in sup.workers:
        status = w.status if w.status is not None else EXIT_OK
        if status == -signal.SIGTERM and sup.draining.is_set():
            # our drain's signal reached it before its pipeline started: it had pulled nothing
            status = EXIT_OK
        if status < 0:
            status = 128 - status
        worst = max(worst, status)
    return worst


def _print_summary(sup: _Supervisor, status: int, out: TextIO) -> None:
    rows: list[dict[str, Any]] = []
    totals = {"received": 0, "acked": 0, "failed": 0, "unsettled": 0}
    for w in sup.workers:
        report: dict[str, Any] = w.report or {}
        for key in totals:
            totals[key] += int(report.get(key, 0))
        rows.append(
            {
                "worker": w.index,
                "exit_status": w.status,
                "restarts": w.restarts,
                "report": w.report,
            }
        )
    if sup.opts.json:
        print(json.dumps({**totals, "workers": rows, "exit_status": status}), flush=True)
        return
    for row in rows:
        report = row["report"] or {}
        figures = ", ".join(f"{k} {int(report.get(k, 0)):,}" for k in totals)
        shown = _describe(row["exit_status"]) if row["exit_status"] is not None else "not run"
        print(
            f"worker {row['worker']}: {shown}, {row['restarts']} restart(s); last run: " + figures,
            file=out,
        )
    print("last runs in all: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()), file=out)
    out.flush()


def run_workers(pipeline: Pipeline, opts: argparse.Namespace) -> int:
    """Run ``opts.workers`` supervised processes of ``opts.target``; the worst exit status."""
    from ._cli_load import pipeline_name

    count = opts.workers
    if isinstance(count, bool) or not 1 <= count <= 256:
        raise UsageError(f"--workers {count}: must be 1-256")
    if opts.dashboard is not None:
        raise UsageError(
            "--dashboard steers one process: it cannot be used with --workers (each worker is "
            "a process of its own); scrape --metrics-port instead"
        )
    if opts.drain_timeout < 0 or math.isnan(opts.drain_timeout):
        raise UsageError(f"--drain-timeout {opts.drain_timeout}: must be >= 0")
    check_shares_work(pipeline, count)
    if opts.metrics_port is not None:
        from ._cli_run import check_serving_options

        check_serving_options(opts)
    sup = _Supervisor(opts, [_Worker(i) for i in range(count)])
    try:
        trio.run(partial(_supervise, sup, pipeline_name(opts.target)))
    except BaseExceptionGroup as group:  # the supervisor's metrics port in use, say
        bind, rest = group.split(OSError)
        if bind is None or rest is not None:
            raise
        first: BaseException = bind
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        assert isinstance(first, OSError)
        message = first.strerror or str(first)
        raise UsageError(f"--metrics-port {opts.metrics_port}: {message}") from first
    status = _status(sup)
    _print_summary(sup, status, sys.stdout)
    return status
