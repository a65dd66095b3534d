"""The ``trioflow`` command: ``run``, ``graph`` and ``demo`` (docs/cli.md).

Exit codes (see :data:`EXIT_CODES`): 0 every message acked; 1 some failed (``--failed-exit-code``
changes it; 0 treats failures as fine); 2 a usage error (bad option, no such file, not a
pipeline); 3 the pipeline stopped on a bug or ``tf.Fatal``; 4 a drain passed its deadline and left
messages un-acked; 128 + the signal number (130 for SIGINT, 143 for SIGTERM) after a hard stop.

The command is split along its seams: loading the target (``_cli_load``), the report and the
progress display (``_cli_report``), running one pipeline (``_cli_run``) and supervising
``--workers N`` processes (``_workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from ._cli_load import UsageError, load_pipeline, pipeline_name
from ._cli_run import (
    EXIT_CODES,
    EXIT_CRASHED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    describe_crash,
    remove_log_handlers,
    run_and_report,
)
from ._exceptions import InvalidPipeline, PipelineError
from ._report import RunReport

#: exit status when stdout's reader went away (128 + SIGPIPE, as a shell reports it)
EXIT_BROKEN_PIPE = 141

__all__ = ["EXIT_CODES", "UsageError", "load_pipeline", "main", "pipeline_name"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


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
        help="serve /metrics (Prometheus text, or OpenMetrics when the scraper asks) and "
        "/metrics.json on this port (0: any free one); with --workers, the series of every "
        "worker, labelled worker=0..N-1",
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
        help="serve the live dashboard there, e.g. 127.0.0.1:8765, with pause/resume, resize "
        "and set-rate controls guarded by a per-run token (loopback only unless "
        "--allow-remote)",
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
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run N supervised worker processes of a pipeline whose source shares work through "
        "its broker (consumer groups); a crashed one is restarted with backoff; each sees "
        "TRIOFLOW_WORKER=0..N-1 in its environment",
    )
    _add_run_options(run)
    graph = sub.add_parser(
        "graph", help="print a pipeline's stage graph", description="Print the stage graph."
    )
    graph.add_argument(
        "target", metavar="TARGET", help="path/to/file.py:pipeline or module:pipeline"
    )
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


def _cmd_run(opts: argparse.Namespace) -> int:
    pipeline = load_pipeline(opts.target)
    if opts.workers is not None:
        from ._workers import run_workers

        return run_workers(pipeline, opts)
    return run_and_report(pipeline, opts)


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

    return run_and_report(pipeline, opts, save, after)


def main(argv: list[str] | None = None) -> int:
    """Run the ``trioflow`` command line; return the exit status.

    Examples:
        >>> main(["graph", "examples/orders.py:pipeline", "--format", "mermaid"])
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
            remove_log_handlers()  # main() may run in-process (tests, embedding)
    except UsageError as exc:
        if show_traceback:
            traceback.print_exc()
        print(f"trioflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as exc:  # pragma: no cover - the runner reports crashes itself
        print(describe_crash(exc, show_traceback), file=sys.stderr)
        return EXIT_CRASHED
    except BrokenPipeError:
        # the reader went away (`trioflow graph ... | head -1`): not an error worth a
        # traceback; what is left to print goes nowhere, as for any command in a pipe
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush finds no broken pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
