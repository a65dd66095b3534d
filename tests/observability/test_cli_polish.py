"""The command's rough edges: help for every option, the user's file and line for an import
error, a closed pipe (``| head``) without a traceback, and ``--workers`` refusing what it cannot
run."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trioflow._cli import _parser

from .test_cli import PIPELINES, trioflow


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    found = {"trioflow": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


@pytest.mark.parametrize("command", ["trioflow", "run", "graph", "demo"])
def test_every_option_has_help(command: str) -> None:
    parser = subcommands()[command]
    without = [
        action.option_strings or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert without == []
    # and --help shows each help text (not only the parser knows it)
    args = [] if command == "trioflow" else [command]
    shown = " ".join(trioflow(*args, "--help").stdout.split())
    for action in parser._actions:
        if action.help and not isinstance(action, argparse._SubParsersAction):
            text = action.help % {"default": action.default} if "%(" in action.help else action.help
            assert " ".join(text.split())[:30] in shown, action.option_strings


@pytest.mark.parametrize(
    ("source", "line", "shown", "error"),
    [
        (
            "import trioflow as tf\n\n\n"
            "pipeline = tf.from_iterable([1]) | tf.process(print, n=0)\n",
            4,
            "pipeline = tf.from_iterable([1]) | tf.process(print, n=0)",
            "ValueError: n=0 must be a positive integer",
        ),
        (
            "x = 1\nimport no_such_module_here\n",
            2,
            "import no_such_module_here",
            "ModuleNotFoundError",
        ),
        ("def f(:\n    pass\n", 1, "def f(:", "SyntaxError: invalid syntax"),
        (
            "x = 1\n\n\nraise RuntimeError('no config')\n",
            4,
            "raise RuntimeError",
            "RuntimeError: no config",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "graph"])
def test_an_import_error_shows_the_users_file_and_line(
    tmp_path: Path, command: str, source: str, line: int, shown: str, error: str
) -> None:
    target = tmp_path / "broken.py"
    target.write_text(source)
    done = trioflow(command, str(target))
    assert done.returncode == 2
    err = done.stderr
    assert err.startswith(f"trioflow: error: importing {target} failed")
    assert f'File "{target}", line {line}' in err
    assert shown in err
    assert error in err.splitlines()[-1]
    assert "trioflow/_" not in err  # none of trioflow's own frames
    assert "importlib" not in err
    assert "Traceback" not in err


def test_graph_into_head_prints_no_traceback(tmp_path: Path) -> None:
    # a graph far bigger than a pipe's buffer, so trioflow is still writing when head leaves
    target = tmp_path / "long.py"
    target.write_text(
        "import trioflow as tf\n\n"
        "def f(x):\n    return x\n\n"
        "pipeline = tf.from_iterable([1])\n"
        "for i in range(3000):\n"
        "    pipeline = pipeline | tf.process(f, name=f'step_{i:04d}_' + 'x' * 40)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "trioflow", "graph", "--format", "json", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as graph:
        assert graph.stdout is not None
        with subprocess.Popen(["head", "-1"], stdin=graph.stdout, stdout=subprocess.PIPE) as head:
            graph.stdout.close()  # head alone holds the reading end
            first, _ = head.communicate(timeout=60)
        _, err = graph.communicate(timeout=60)
    assert first == b"{\n"
    assert err == b""
    assert graph.returncode == 141  # 128 + SIGPIPE, as a shell reports a command cut short


def test_workers_need_a_source_that_shares_work() -> None:
    done = trioflow("run", f"{PIPELINES}:finite", "--workers", "2")
    assert done.returncode == 2
    assert done.stderr.startswith(
        "trioflow: error: --workers 2: the source from_iterable(range(0, 200)) does not share "
        "work through a broker (consumer group), so every worker would read all of it"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers 0: must be 1-256"),
        (["--workers", "2", "--dashboard", "127.0.0.1:0"], "--dashboard steers one process"),
    ],
)
def test_workers_option_errors(args: list[str], message: str) -> None:
    example = Path(__file__).parent.parent.parent / "examples" / "redis_workers.py"
    done = trioflow("run", str(example), *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"trioflow: error: {message}")


def test_workers_metrics_port_in_use_is_a_usage_error() -> None:
    example = Path(__file__).parent.parent.parent / "examples" / "redis_workers.py"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = trioflow("run", str(example), "--workers", "2", "--metrics-port", str(port))
    assert done.returncode == 2
    assert done.stderr.startswith(f"trioflow: error: --metrics-port {port}: ")
    assert "worker 0 started" not in done.stderr  # nothing was started
