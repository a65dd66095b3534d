"""Nox sessions for trioflow.

Run ``nox --list`` to see the available sessions; ``nox`` with no arguments
runs the default set (tests, lint, typecheck).
"""

from __future__ import annotations

import json
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"  # for nox.options.reuse_venv

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = False
nox.options.sessions = ["tests", "lint", "typecheck"]

PYTHON_VERSIONS = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHON_VERSIONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (extra arguments are passed to pytest)."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


#: the least share of the public API whose types pyright --verifytypes finds complete
TYPE_COMPLETENESS = 0.95


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package: mypy and pyright strict, the typing suite, API completeness."""
    session.install(".[typecheck]", ".[test]")
    session.run("mypy", "--strict", "trioflow")
    python = session.run("python", "-c", "import sys; print(sys.executable)", silent=True)
    python = str(python).strip()
    session.run("pyright", "--pythonpath", python)  # strict on trioflow/ (pyrightconfig.json)
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/test_typing.py")
    # --verifytypes resolves the package through the interpreter's path: the checkout goes first
    # (an editable install's .pth is not always followed)
    out = str(
        session.run(
            "pyright",
            "--verifytypes",
            "trioflow",
            "--ignoreexternal",
            "--outputjson",
            "--pythonpath",
            python,
            silent=True,
            success_codes=[0, 1],
            env={"PYTHONPATH": str(Path(__file__).parent)},
        )
    )
    report = json.loads(out[out.index("{") : out.rindex("}") + 1])  # past any notice on stderr
    score = report["typeCompleteness"]["completenessScore"]
    session.log(f"pyright --verifytypes trioflow: {score:.1%} of the public API typed")
    if score < TYPE_COMPLETENESS:
        session.error(f"type completeness {score:.1%} is under {TYPE_COMPLETENESS:.0%}")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation, treating warnings as errors."""
    session.install(".[docs]")
    session.run("mkdocs", "build", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (extra arguments are passed to ``python -m bench``)."""
    session.install(".[bench]")
    # slurry's metadata pins trio<0.22, but it runs on current trio
    session.install("--no-deps", "slurry")
    session.run("python", "-m", "bench", *session.posargs)
