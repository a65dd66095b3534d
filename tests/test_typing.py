"""The typing suite (tests/typing/): both checkers infer the element types and report misfits.

``pass_*.py`` files hold ``assert_type`` lines and must check clean; in ``fail_*.py`` files every
line marked ``# E`` must be reported, and no other line. Each checker runs once over the folder,
mypy with ``--strict`` and pyright in strict mode (tests/typing/pyrightconfig.json), both at once.

The package itself: pyright strict (pyrightconfig.json) must find nothing in it, and
``pyright --verifytypes`` must score at least 95% (it scores 100% today).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
TYPING = HERE / "typing"
ROOT = HERE.parent
MARK = re.compile(r"#\s*E\s*$")
#: files of trioflow/ that pyright strict finds clean, and must keep clean
STRICT_CLEAN = [
    f"trioflow/{name}.py"
    for name in [
        "__init__",
        "_acking",
        "_awaitables",
        "_batches",
        "_bulk",
        "_composable",
        "_consumer",
        "_decode",
        "_decorator",
        "_demo",
        "_exceptions",
        "_failure_log",
        "_graph",
        "_groups",
        "_lazy",
        "_manager",
        "_message",
        "_pipeline",
        "_process_stage",
        "_queue",
        "_sources",
        "_stages",
        "_topology",
        "_validate",
        "abc",
        "_operators/__init__",
        "_operators/_batch",
        "_operators/_loop",
        "_operators/_rate_limit",
        "_operators/_route",
        "_operators/_transform",
    ]
]
#: the least share of the public API whose types ``pyright --verifytypes`` must find complete
COMPLETENESS = 0.95


def expected() -> dict[str, set[int]]:
    """The marked lines of each file (none for a ``pass_`` file)."""
    out: dict[str, set[int]] = {}
    for path in sorted(TYPING.glob("*.py")):
        lines = path.read_text().splitlines()
        out[path.name] = {i for i, line in enumerate(lines, 1) if MARK.search(line)}
    return out


def _mypy(proc: subprocess.Popen[str]) -> dict[str, set[int]]:
    stdout, stderr = proc.communicate()
    if proc.returncode not in (0, 1):
        pytest.fail(f"mypy crashed ({proc.returncode}):\n{stdout}\n{stderr}")
    found: dict[str, set[int]] = defaultdict(set)
    for match in re.finditer(r"^(?:.*/)?([\w.]+\.py):(\d+): error:", stdout, re.MULTILINE):
        found[match[1]].add(int(match[2]))
    return found


def _json(proc: subprocess.Popen[str]) -> Any:
    stdout, stderr = proc.communicate()
    try:
        return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])
    except ValueError:
        pytest.fail(f"pyright crashed ({proc.returncode}):\n{stdout}\n{stderr}")


def _errors(report: Any) -> dict[str, set[int]]:
    found: dict[str, set[int]] = defaultdict(set)
    for diag in report["generalDiagnostics"]:
        if diag["severity"] == "error":
            path = Path(diag["file"]).resolve()
            name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            found[name].add(diag["range"]["start"]["line"] + 1)
    return found


def _pyright(proc: subprocess.Popen[str]) -> dict[str, set[int]]:
    return {Path(name).name: lines for name, lines in _errors(_json(proc)).items()}


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.fixture(scope="module")
def reported() -> dict[str, dict[str, set[int]]]:
    pytest.importorskip("mypy", reason="the typing suite needs mypy (pip install -e '.[test]')")
    pytest.importorskip("pyright", reason="the typing suite needs pyright[nodejs]")
    mypy = _start("mypy", "--strict", "--no-error-summary", str(TYPING))
    pyright = _start(
        "pyright", "--outputjson", "--pythonpath", sys.executable, "-p", str(TYPING), str(TYPING)
    )
    return {"mypy": _mypy(mypy), "pyright": _pyright(pyright)}


def test_the_suite_has_both_kinds_of_files() -> None:
    files = expected()
    assert any(name.startswith("pass_") for name in files)
    assert all(marks for name, marks in files.items() if name.startswith("fail_"))
    assert not any(marks for name, marks in files.items() if name.startswith("pass_"))


@pytest.mark.parametrize("checker", ["mypy", "pyright"])
def test_checker_reports_exactly_the_marked_lines(
    reported: dict[str, dict[str, set[int]]], checker: str
) -> None:
    found = reported[checker]
    for name, marks in expected().items():
        got = found.get(name, set())
        assert sorted(got - marks) == [], f"{checker}: unexpected errors in {name}"
        assert sorted(marks - got) == [], f"{checker}: marked lines not reported in {name}"
    assert set(found) <= set(expected()), f"{checker} reported files outside the suite: {found}"


@pytest.fixture(scope="module")
def package_checks() -> dict[str, Any]:
    """pyright strict over trioflow/, and ``--verifytypes trioflow``, run at once."""
    pytest.importorskip("pyright", reason="needs pyright[nodejs]")
    strict = _start("pyright", "--outputjson", "--pythonpath", sys.executable)
    verify = _start(
        "pyright",
        "--verifytypes",
        "trioflow",
        "--ignoreexternal",
        "--outputjson",
        "--pythonpath",
        sys.executable,
        env={"PYTHONPATH": str(ROOT)},  # the checkout, whatever the install
    )
    return {"strict": _errors(_json(strict)), "verify": _json(verify)}


def test_core_files_are_pyright_strict_clean(package_checks: dict[str, Any]) -> None:
    errors = package_checks["strict"]
    assert all((ROOT / name).exists() for name in STRICT_CLEAN)
    assert {name: sorted(errors[name]) for name in STRICT_CLEAN if name in errors} == {}


def test_package_is_pyright_strict_clean(package_checks: dict[str, Any]) -> None:
    assert dict(package_checks["strict"]) == {}


def test_verifytypes_sees_the_package_and_keeps_its_floor(package_checks: dict[str, Any]) -> None:
    completeness = package_checks["verify"]["typeCompleteness"]
    assert completeness["packageName"] == "trioflow"
    assert completeness["exportedSymbolCounts"]["withKnownType"] > 200
    # 70.8% before issue 15, 74.7% after its core part: on the way to COMPLETENESS, never back
    assert completeness["completenessScore"] >= 0.70


def test_public_api_types_are_complete(package_checks: dict[str, Any]) -> None:
    completeness = package_checks["verify"]["typeCompleteness"]
    assert completeness["completenessScore"] >= COMPLETENESS
