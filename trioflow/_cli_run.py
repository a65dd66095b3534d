"""Running one pipeline in this process, as ``trioflow run`` (and ``demo``) do: signals (first:
drain, second: hard stop), the metrics server and dashboard beside it, progress, the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import trio

from ._cli_load import UsageError, pipeline_name
from ._cli_report import load_rich, print_report, progress
from ._exceptions import Fatal, PipelineError
from ._pipeline import Pipeline
from ._report import RunReport
from ._runner import PipelineHandle

__all__ = [
    "EXIT_CODES",
    "check_serving_options",
    "configure_logging",
    "run_and_report",
    "run_with_cli",
]

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
                partial(
                    serve_dashboard,
                    handle,
                    host=host,
                    port=port,
                    pipeline=pipeline_name(getattr(opts, "target", None)),
                    **remote,
                )
            )
        shown = f"[{host}]" if ":" in host else host
        print(f"trioflow: dashboard at http://{shown}:{bound}/", file=err, flush=True)
    if os.environ.get("TRIOFLOW_SUPERVISED") == "1":
        nursery.start_soon(_watch_supervisor, handle)
    mode = opts.progress_mode
    if mode != "none":
        nursery.start_soon(progress, handle, mode, opts.log_every)


async def _watch_supervisor(handle: PipelineHandle) -> None:
    """A worker of ``--workers N``: when the supervisor goes away (even killed), our stdin,
    a pipe from it, reaches its end: drain rather than run on unsupervised."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some():
            pass
    handle.stop()
    with contextlib.suppress(OSError):  # our stderr was a pipe to the supervisor: maybe gone
        print("trioflow: the supervisor is gone: draining", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _bind_error(option: str, value: object) -> Generator[None, None, None]:
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


def describe_crash(exc: PipelineError, show_traceback: bool) -> str:
    cause = exc.__cause__
    if cause is not None and (show_traceback or not isinstance(cause, Fatal)):
        # a bug in a stage: its traceback is what the user needs
        return "".join(traceback.format_exception(cause)).rstrip() + f"\ntrioflow: {exc}"
    return f"trioflow: {exc}"


def _finish(report: RunReport, status: int, crash: PipelineError | None, opts: Any) -> None:
    if crash is not None:
        print(describe_crash(crash, opts.traceback), file=sys.stderr, flush=True)
    if opts.json:
        data = report.as_dict()
        data["exit_status"] = status
        print(json.dumps(data), flush=True)
    else:
        print_report(report, sys.stdout)


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


def remove_log_handlers() -> None:
    log = logging.getLogger("trioflow")
    for handler in list(log.handlers):
        if getattr(handler, "_trioflow_cli", False):
            log.removeHandler(handler)


def progress_mode(opts: argparse.Namespace) -> str:
    if opts.no_progress:
        return "none"
    if sys.stderr.isatty() and load_rich() is not None:
        return "live"
    return "log" if opts.log_every > 0 else "none"


def check_serving_options(opts: argparse.Namespace) -> None:
    """Check ``--dashboard``, ``--metrics-host/port`` and ``--allowed-host`` (``UsageError``
    naming the option); ``opts.dashboard`` becomes ``(host, port)``."""
    from ._http import Access, check_loopback

    hint = "add --allow-remote to serve on it anyway"
    try:
        if isinstance(opts.dashboard, str):
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


def run_and_report(
    pipeline: Pipeline,
    opts: argparse.Namespace,
    resources: contextlib.AbstractAsyncContextManager[Any] | None = None,
    after: Callable[[RunReport], None] | None = None,
) -> int:
    if opts.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {opts.drain_timeout}: must be >= 0")
    configure_logging(getattr(opts, "log_level", "WARNING"), getattr(opts, "log_format", "text"))
    check_serving_options(opts)
    opts.progress_mode = progress_mode(opts)
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
