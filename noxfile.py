"""Nox sessions for trioflow.

Run ``nox --list`` to see the available sessions; ``nox`` with no arguments
runs the default set (tests, lint, typecheck).
"""

from __future__ import annotations

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


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy in strict mode."""
    session.install(".[typecheck]", ".[test]")
    session.run("mypy", "--strict", "trioflow")


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
