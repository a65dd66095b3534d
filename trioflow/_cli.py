"""The ``trioflow`` command: ``run``, ``graph`` and ``demo`` (docs/cli.md).

Exit codes (see :data:`EXIT_CODES`): 0 every message acked; 1 some failed (``--failed-exit-code``
changes it; 0 treats failures as fine); 2 a usage error (bad option, no such file, not a
pipeline); 3 the pipeline stopped on a bug or ``tf.Fatal``; 4 a drain passed its deadline and left
messages un-acked; 128 + the signal number (130 for SIGINT, 143 for SIGTERM) after a hard stop.

The progress display uses rich when it is installed (``trioflow[cli]``) and stderr is a
terminal: a live table redrawn in place, one row a stage. tqdm draws one bar per known total;
a pipeline has several stages, no total, and figures (in-flight, failures, latency) that are
columns, not bars, so a table fits. Otherwise a plain line goes to stderr every few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TextIO

import trio

from ._exceptions import Fatal, InvalidPipeline, PipelineError
from ._pipeline import Pipeline
from ._report import RunReport
from ._runner import PipelineHandle

__all__ = ["EXIT_CODES", "UsageError", "load_pipeline", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CRASHED = 3
EXIT_UNSETTLED = 4

#: what each exit status means (128 + N: hard stop by signal N)
EXIT_CODES = {
    EXIT_OK: "every message was acked (or failures are allowed: --failed-exit-code 0)",
    EXIT_FAILED: "some messages failed (--failed-exit-code sets this status)",
    EXIT_USAGE: "usage error: bad option, no such file, not a pipeline",
    EXIT_CRASHED: "the pipeline stopped on a bug or tf.Fatal",
    EXIT_UNSETTLED: "messages were left un-acked (a drain passed --drain-timeout, or an "
    "acknowledger or the on_failure handler raised)",
}


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


# -- loading -----------------------------------------------------------------------------------


def load_pipeline(target: str) -> Pipeline:
    """The pipeline named by ``path/to/file.py:name`` or ``package.module:name``.

    ``name`` defaults to ``pipeline`` and may be dotted; it may also name a function taking no
    arguments that returns the pipeline.

    Raises:
        UsageError: no such file or module, no such attribute, or not a pipeline.

    Examples:
        >>> load_pipeline("examples/etl.py:pipeline")
    """
    where, _, attr = target.rpartition(":") if ":" in target else (target, "", "pipeline")
    attr = attr or "pipeline"
    module = _import(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(module).items() if isinstance(v, Pipeline))
            hint = f" (pipelines there: {', '.join(found)})" if found else ""
            raise UsageError(f"{where} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if isinstance(obj, Pipeline):
        return obj
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except TypeError as exc:
            raise UsageError(
                f"{where}:{attr} is {_kind(obj)}, not a trioflow.Pipeline; calling it with no "
                f"arguments failed: {exc}"
            ) from exc
        if isinstance(made, Pipeline):
            return made
        raise UsageError(f"{where}:{attr}() returned {_kind(made)}, not a trioflow.Pipeline")
    raise UsageError(f"{where}:{attr} is {_kind(obj)}, not a trioflow.Pipeline")


def _kind(obj: Any) -> str:
    if callable(obj) and hasattr(obj, "__name__") and not isinstance(obj, type):
        return f"a function ({obj.__name__})"
    name = type(obj).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _import(where: str) -> Any:
    looks_like_path = where.endswith(".py") or "/" in where or "\\" in where
    if looks_like_path:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"no such file: {where}")
        name = f"_trioflow_target_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import {where}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        # the file's folder first, as `python file.py` would: sibling imports work
        sys.path.insert(0, str(path.resolve().parent))
        _exec(lambda: spec.loader.exec_module(module), where)  # type: ignore[union-attr]
        return module
    try:
        return _exec(lambda: importlib.import_module(where), where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise UsageError(f"no such module: {where} (nor a file: add .py for a path)") from exc
        raise


def _exec(fn: Callable[[], Any], where: str) -> Any:
    try:
        return fn()
    except UsageError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise
        raise UsageError(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise UsageError(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc


# -- formatting --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.2f} s"


def _rate(x: float) -> str:
    return f"{x:,.0f}/s" if x >= 10 else f"{x:.1f}/s"


def _report_rows(report: RunReport) -> list[list[str]]:
    rows = [["stage", "done", "rate", "busy", "failed", "p50", "p99"]]
    for name, st in report.stages.items():
        rows.append(
            [
                name,
                f"{st.count:,}",
                _rate(st.rate(report.elapsed)),
                f"{st.busy_fraction(report.elapsed):.0%}",
                f"{st.failed:,}",
                _ms(st.p50),
                _ms(st.p99),
            ]
        )
    return rows


def _totals_lines(report: RunReport) -> list[str]:
    lines = [
        f"received   {report.received:>10,}",
        f"acked      {report.acked:>10,}   (filtered {report.filtered:,})",
        f"failed     {report.failed:>10,}   (dead-lettered {report.dead_lettered:,})",
    ]
    for reason, count in sorted(report.failed_by_reason.items()):
        lines.append(f"  {reason:<28} {count:>8,}")
    lines += [
        f"retried    {report.retried:>10,}",
        f"unsettled  {report.unsettled:>10,}"
        + (
            f"   (ack errors {report.ack_errors:,}, on_failure errors "
            f"{report.failure_handler_errors:,}: left un-acked)"
            if report.ack_errors or report.failure_handler_errors
            else ""
        ),
        f"elapsed    {report.elapsed:>10.2f} s   ({report.throughput:,.0f} messages/s)",
        f"end-to-end p50 {_ms(report.end_to_end.p50)}, p99 {_ms(report.end_to_end.p99)}",
    ]
    for source, figures in report.sources.items():
        shown = ", ".join(f"{k} {v:,.0f}" for k, v in figures.items())
        lines.append(f"source {source}: {shown}")
    return lines


def print_report(report: RunReport, out: TextIO) -> None:
    """The final report as a table (rich on a terminal, aligned text otherwise)."""
    rows = _report_rows(report)
    rich = _rich() if out.isatty() else None
    if rich is not None:
        console = rich.console.Console(file=out)
        table = rich.table.Table(title="stages", title_justify="left")
        for i, head in enumerate(rows[0]):
            table.add_column(head, justify="left" if i == 0 else "right")
        for row in rows[1:]:
            table.add_row(*row)
        for line in _totals_lines(report):
            console.print(line, highlight=False)
        console.print(table)
        return
    for line in _totals_lines(report):
        print(line, file=out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print("  ".join(cells).rstrip(), file=out)
    out.flush()


def _rich() -> Any:
    try:
        import rich.console
        import rich.live
        import rich.table
    except ImportError:
        return None
    return rich


def _progress_table(rich: Any, snap: dict[str, Any]) -> Any:
    t = snap["totals"]
    e2e = snap["end_to_end"]
    caption = (
        f"{snap['state']}  {snap['elapsed']:.1f} s   received {t['received']:,}  "
        f"acked {t['acked']:,}  failed {t['failed']:,}  in flight {t['unsettled']:,}  "
        f"ingest {_rate(t['ingest_rate'])}  end-to-end p99 {_ms(e2e['p99'])}"
    )
    table = rich.table.Table(title=caption, title_justify="left", expand=False)
    for i, head in enumerate(
        ["stage", "kind", "rate", "done", "in-flight", "fill", "failed", "busy", "p99"]
    ):
        table.add_column(head, justify="left" if i < 2 else "right")
    for st in snap["stages"]:
        table.add_row(
            st["name"],
            st["kind"] + (f" x{st['workers']}" if st["workers"] > 1 else ""),
            _rate(st["rate"]),
            f"{st['count']:,}",
            f"{st['in_flight']:,}",
            f"{st['fill']:.0%}",
            f"{st['failed']:,}",
            f"{st['busy']:.0%}",
            _ms(st["p99"]),
        )
    return table


def _log_line(snap: dict[str, Any]) -> str:
    t = snap["totals"]
    stages = "  ".join(
        f"{s['name']} {_rate(s['rate'])} in-flight {s['in_flight']}" for s in snap["stages"]
    )
    return (
        f"trioflow: {snap['elapsed']:.1f}s {snap['state']} received={t['received']} "
        f"acked={t['acked']} failed={t['failed']} in_flight={t['unsettled']} "
        f"ingest={t['ingest_rate']:.1f}/s | {stages}"
    )


async def _progress(handle: PipelineHandle, mode: str, every: float) -> None:
    """Live table (``live``) or a log line every ``every`` seconds (``log``) on stderr."""
    if mode == "live":
        rich = _rich()
        assert rich is not None
        console = rich.console.Console(stderr=True)
        # auto_refresh=False: rich would redraw from its own thread, reading live figures
        # while the pipeline changes them; here every redraw runs in the pipeline's thread
        live = rich.live.Live(console=console, auto_refresh=False, transient=True)
        live.start()
        try:
            while True:
                live.update(_progress_table(rich, handle.snapshot()), refresh=True)
                await trio.sleep(0.5)
        finally:
            live.stop()
    else:
        while True:
            await trio.sleep(every)
            print(_log_line(handle.snapshot()), file=sys.stderr, flush=True)


# -- running -----------------------------------------------------------------------------------


class _Outcome:
    def __init__(self) -> None:
        self.signals = 0
        self.hard_signal: int | None = None
        self.crash: PipelineError | None = None
        self.handle: PipelineHandle | None = None
        self.scope: trio.CancelScope | None = None


def _parse_hostport(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected HOST:PORT or PORT") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"{option} {text!r}: port must be 0-65535")
    return host.strip("[]") or "127.0.0.1", number


async def run_with_cli(
    pipeline: Pipeline,
    opts: argparse.Namespace,
    resources: contextlib.AbstractAsyncContextManager[Any] | None = None,
) -> tuple[RunReport, int, PipelineError | None]:
    """Run ``pipeline`` as ``trioflow run`` does: the report, exit status, and crash if any."""
    outcome = _Outcome()
    report: RunReport | None = None
    err = sys.stderr
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        trio.CancelScope() as hard,
    ):

        async def on_signals() -> None:
            async for signum in signals:
                outcome.signals += 1
                if outcome.signals == 1:
                    print(
                        "trioflow: draining: sources stopped, finishing what is in flight "
                        f"(up to {opts.drain_timeout:g} s); send it again to stop now",
                        file=err,
                        flush=True,
                    )
                    if outcome.handle is not None:
                        outcome.handle.stop()
                else:
                    print("trioflow: hard stop", file=err, flush=True)
                    outcome.hard_signal = signum
                    hard.cancel()
                    return

        async with contextlib.AsyncExitStack() as stack:
            if resources is not None:
                await stack.enter_async_context(resources)
            async with trio.open_nursery() as nursery:
                outcome.scope = nursery.cancel_scope
                nursery.start_soon(on_signals)
                handle = await nursery.start(_serve, pipeline, opts, outcome)
                if handle is not None:
                    outcome.handle = handle
                    if outcome.signals:
                        handle.stop()
                    await _start_extras(nursery, handle, opts)
                    with contextlib.suppress(PipelineError):  # _serve records the crash
                        report = await handle.wait()
                nursery.cancel_scope.cancel()
    handle = outcome.handle
    if report is None and handle is not None:
        report = handle.report or handle.metrics
    if report is None:
        report = RunReport()
    return report, _exit_status(report, outcome, opts), outcome.crash


async def _serve(
    pipeline: Pipeline,
    opts: argparse.Namespace,
    outcome: _Outcome,
    task_status: trio.TaskStatus[PipelineHandle | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    started = False

    def on_started(handle: PipelineHandle | None = None) -> None:
        nonlocal started
        started = True
        task_status.started(handle)

    status: Any = _Status(on_started)
    try:
        await pipeline.serve(drain_timeout=opts.drain_timeout, task_status=status)
    except PipelineError as exc:
        outcome.crash = exc
        if not started:
            task_status.started(None)
        elif outcome.scope is not None:
            outcome.scope.cancel()  # stop waiting for the end of a run that crashed


def pipeline_name(target: str | None) -> str:
    """The ``pipeline`` label of a CLI run: the target's file or module name, with the
    attribute when it is not ``pipeline`` (``etl.py:pipeline`` -> ``etl``; ``jobs:daily`` ->
    ``jobs:daily``); ``demo`` for the demo."""
    if not target:
        return "demo"
    where, _, attr = target.rpartition(":") if ":" in target else (target, "", "pipeline")
    stem = Path(where).stem if where.endswith(".py") else where
    return stem if attr in ("", "pipeline") else f"{stem}:{attr}"


class _Status:
    """A ``task_status`` that tells whether the run got as far as starting."""

    def __init__(self, on_started: Callable[..., None]) -> None:
        self.started = on_started


async def _start_extras(
    nursery: trio.Nursery, handle: PipelineHandle, opts: argparse.Namespace
) -> None:
    err = sys.stderr
    if opts.metrics_port is not None:
        from ._prometheus import serve_metrics

        remote = {"allow_remote": opts.allow_remote, "allowed_hosts": opts.allowed_hosts}
        host = opts.metrics_host
        with _bind_error("--metrics-port", opts.metrics_port):
            port = await nursery.start(
                partial(
                    serve_metrics,
                    handle,
                    port=opts.metrics_port,
                    host=host,
                    pipeline=pipeline_name(getattr(opts, "target", None)),
                    **remote,
                )
            )
        shown = f"[{host}]" if ":" in host else host
        print(f"trioflow: metrics at http://{shown}:{port}/metrics", file=err, flush=True)
    if opts.dashboard is not None:
        from ._dashboard import serve_dashboard

        remote = {"allow_remote": opts.allow_remote, "allowed_hosts": opts.allowed_hosts}
        host, port = opts.dashboard
        with _bind_error("--dashboard", f"{host}:{port}"):
            bound = await nursery.start(
                partial(serve_dashboard, handle, host=host, port=port, **remote)
            )
        shown = f"[{host}]" if ":" in host else host
        print(f"trioflow: dashboard at http://{shown}:{bound}/", file=err, flush=True)
    mode = opts.progress_mode
    if mode != "none":
        nursery.start_soon(_progress, handle, mode, opts.log_every)


@contextlib.contextmanager
def _bind_error(option: str, value: object) -> Iterator[None]:
    """A port in use (or an address not ours) is a usage error naming the option."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"{option} {value}: {exc.strerror or exc}") from exc


def _exit_status(report: RunReport, outcome: _Outcome, opts: argparse.Namespace) -> int:
    if outcome.hard_signal is not None:
        return 128 + outcome.hard_signal
    if outcome.crash is not None:
        return EXIT_CRASHED
    if report.unsettled:
        return EXIT_UNSETTLED
    if report.failed:
        return int(opts.failed_exit_code)
    return EXIT_OK


def _describe_crash(exc: PipelineError, show_traceback: bool) -> str:
    cause = exc.__cause__
    if cause is not None and (show_traceback or not isinstance(cause, Fatal)):
        # a bug in a stage: its traceback is what the user needs
        return "".join(traceback.format_exception(cause)).rstrip() + f"\ntrioflow: {exc}"
    return f"trioflow: {exc}"


def _finish(report: RunReport, status: int, crash: PipelineError | None, opts: Any) -> None:
    if crash is not None:
        print(_describe_crash(crash, opts.traceback), file=sys.stderr, flush=True)
    if opts.json:
        data = report.as_dict()
        data["exit_status"] = status
        print(json.dumps(data), flush=True)
    else:
        print_report(report, sys.stdout)


# -- commands ----------------------------------------------------------------------------------


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress", action="store_true", help="no live display and no periodic log lines"
    )
    p.add_argument(
        "--log-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (or rich is missing): a progress line this often",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve /metrics (Prometheus) and /metrics.json on this port (0: any free one)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for --metrics-port (default 127.0.0.1; others need --allow-remote)",
    )
    p.add_argument(
        "--dashboard",
        default=None,
        metavar="HOST:PORT",
        help="serve the live dashboard there, e.g. 127.0.0.1:8765 "
        "(loopback only unless --allow-remote)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --metrics-host and --dashboard bind a non-loopback address "
        "(no authentication: anyone who reaches the port reads the figures)",
    )
    p.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        default=None,
        metavar="NAME[:PORT]",
        help="a Host name the metrics server and the dashboard answer for, besides localhost "
        "and the bound address (repeatable; with --allow-remote and none given: any)",
    )
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after the first SIGINT/SIGTERM, wait this long for in-flight messages",
    )
    p.add_argument(
        "--failed-exit-code",
        type=int,
        default=EXIT_FAILED,
        metavar="N",
        help="exit status when messages failed (default 1; 0: failures are fine)",
    )
    p.add_argument("--traceback", action="store_true", help="full tracebacks for errors")
    p.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="records of the 'trioflow' logger shown on stderr (failures, reconnects; default "
        "WARNING)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log records as text lines, or one JSON object per line",
    )


def _version() -> str:
    from . import __version__

    return __version__


def _parser() -> _Parser:
    parser = _Parser(
        prog="trioflow",
        description="Run, draw and demo trioflow pipelines.",
        epilog="exit status: "
        + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())
        + "; 128+N hard stop by signal N",
    )
    parser.add_argument(
        "--version", action="version", version=f"trioflow {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run a pipeline with a live progress display",
        description="Run PATH.py:NAME or MODULE:NAME (NAME defaults to 'pipeline'). "
        "First SIGINT/SIGTERM: graceful drain; second: hard stop.",
    )
    run.add_argument("target", metavar="TARGET", help="path/to/file.py:pipeline or module:pipeline")
    _add_run_options(run)
    graph = sub.add_parser(
        "graph", help="print a pipeline's stage graph", description="Print the stage graph."
    )
    graph.add_argument("target", metavar="TARGET")
    graph.add_argument(
        "--format", choices=["text", "mermaid", "json"], default="text", help="default: text"
    )
    graph.add_argument("--mermaid", action="store_true", help="same as --format mermaid")
    graph.add_argument("--traceback", action="store_true", help="full tracebacks for errors")
    demo = sub.add_parser(
        "demo",
        help="run the bundled import example (events -> validate -> enrich -> SQLite)",
        description="Generate events, validate, enrich through a flaky call with retries, "
        "batch into SQLite; failures go to a dead-letter file.",
    )
    from ._demo import add_arguments

    add_arguments(demo, Path("trioflow-demo"))
    _add_run_options(demo)
    demo.set_defaults(failed_exit_code=EXIT_OK)
    return parser


def _progress_mode(opts: argparse.Namespace) -> str:
    if opts.no_progress:
        return "none"
    if sys.stderr.isatty() and _rich() is not None:
        return "live"
    return "log" if opts.log_every > 0 else "none"


def _cmd_run(opts: argparse.Namespace) -> int:
    pipeline = load_pipeline(opts.target)
    return _run_and_report(pipeline, opts)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Show the ``"trioflow"`` logger's records at ``level`` on stderr, as text or JSON lines
    (replacing a handler an earlier call installed)."""
    log = logging.getLogger("trioflow")
    for handler in list(log.handlers):
        if getattr(handler, "_trioflow_cli", False):
            log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._trioflow_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonLogFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(message)s")
    )
    log.addHandler(handler)
    log.setLevel(level)


def _remove_log_handlers() -> None:
    log = logging.getLogger("trioflow")
    for handler in list(log.handlers):
        if getattr(handler, "_trioflow_cli", False):
            log.removeHandler(handler)


def _run_and_report(
    pipeline: Pipeline,
    opts: argparse.Namespace,
    resources: contextlib.AbstractAsyncContextManager[Any] | None = None,
    after: Callable[[RunReport], None] | None = None,
) -> int:
    if opts.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {opts.drain_timeout}: must be >= 0")
    configure_logging(getattr(opts, "log_level", "WARNING"), getattr(opts, "log_format", "text"))
    from ._http import Access, check_loopback

    hint = "add --allow-remote to serve on it anyway"
    try:
        if opts.dashboard is not None:
            opts.dashboard = _parse_hostport(opts.dashboard, "--dashboard")
            if not opts.allow_remote:
                check_loopback(opts.dashboard[0], "--dashboard", hint=hint)
        if opts.metrics_port is not None and not opts.allow_remote:
            check_loopback(opts.metrics_host, "--metrics-host", hint=hint)
        if opts.allowed_hosts is not None:
            Access.build("", allow_remote=False, allowed_hosts=opts.allowed_hosts)
    except ValueError as exc:
        raise UsageError(str(exc).replace("allowed_hosts: ", "--allowed-host ")) from None
    if opts.dashboard is not None:
        _require("trio_websocket", "dashboard", "--dashboard")
    if opts.metrics_port is not None:
        if not 0 <= opts.metrics_port <= 65535:
            raise UsageError(f"--metrics-port {opts.metrics_port}: must be 0-65535")
        _require("prometheus_client", "prometheus", "--metrics-port")
    opts.progress_mode = _progress_mode(opts)
    try:
        report, status, crash = trio.run(run_with_cli, pipeline, opts, resources)
    except OSError as exc:  # a port in use, say
        raise UsageError(str(exc)) from exc
    except BaseExceptionGroup as group:  # a UsageError from inside the run's nursery
        usage, rest = group.split(UsageError)
        if usage is None or rest is not None:
            raise
        first: BaseException = usage
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    _finish(report, status, crash, opts)
    if after is not None and not opts.json:
        after(report)
    return status


def _require(module: str, extra: str, option: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{option} needs {module!r}: install it with pip install 'trioflow[{extra}]'"
        ) from None


def _cmd_graph(opts: argparse.Namespace) -> int:
    from ._graph import graph

    pipeline = load_pipeline(opts.target)
    try:
        g = graph(pipeline)
    except InvalidPipeline as exc:
        raise UsageError(f"{opts.target}: {exc}") from exc
    fmt = "mermaid" if opts.mermaid else opts.format
    if fmt == "mermaid":
        print(g.mermaid())
    elif fmt == "json":
        print(json.dumps(g.as_dict(), indent=2))
    else:
        print(g.text())
    return EXIT_OK


def _cmd_demo(opts: argparse.Namespace) -> int:
    from . import _demo

    if opts.events < 1:
        raise UsageError(f"--events {opts.events}: must be a positive number")
    _demo.prepare(opts, sys.stderr)
    pipeline, save = _demo.build(opts)
    print(f"trioflow demo: {pipeline}", file=sys.stderr, flush=True)

    def after(report: RunReport) -> None:
        print(f"dead letter  {opts.out / 'dead_letter.jsonl'}")
        if opts.sink == "sqlite":
            db = opts.out / "events.db"
            print(f"rows in db   {_demo.count_rows(db):,}  ({db})")

    return _run_and_report(pipeline, opts, save, after)


def main(argv: list[str] | None = None) -> int:
    """Run the ``trioflow`` command line; return the exit status.

    Examples:
        >>> main(["graph", "examples/etl.py:pipeline", "--format", "mermaid"])
        0
    """
    argv = sys.argv[1:] if argv is None else argv
    show_traceback = "--traceback" in argv
    parser = _parser()
    try:
        opts = parser.parse_args(argv)
        if opts.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        command = {"run": _cmd_run, "graph": _cmd_graph, "demo": _cmd_demo}[opts.command]
        try:
            return command(opts)
        finally:
            _remove_log_handlers()  # main() may run in-process (tests, embedding)
    except UsageError as exc:
        if show_traceback:
            traceback.print_exc()
        print(f"trioflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as exc:  # pragma: no cover - the runner reports crashes itself
        print(_describe_crash(exc, show_traceback), file=sys.stderr)
        return EXIT_CRASHED
