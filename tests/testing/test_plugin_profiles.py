"""The pytest plugin leaves a user's hypothesis settings alone, on CI too.

Hypothesis loads its built-in ``ci`` profile whenever ``CI`` is set; a plugin that registers a
profile named ``ci`` reloads it with its own settings, changing every hypothesis test of the
project. The plugin registers only ``trioflow-dev`` and ``trioflow-ci``: a user project sees the
same settings with and without it (``-p no:trioflow`` disables the ``pytest11`` entry point).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, os
from hypothesis import settings

def test_probe():
    s = settings.default
    out = {
        "profile": settings._current_profile,
        "max_examples": s.max_examples,
        "derandomize": s.derandomize,
        "deadline": str(s.deadline),
        "database": type(s.database).__name__,
        "print_blob": s.print_blob,
        "suppress_health_check": sorted(str(h) for h in s.suppress_health_check),
        "phases": sorted(str(p) for p in s.phases),
        "profiles": sorted(n for n in settings._profiles if n.startswith("trioflow")),
    }
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump(out, f)
"""

USER_CI_PROFILE = """
from hypothesis import settings
settings.register_profile("ci", max_examples=7)
"""


def probe(project: Path, *, ci: bool, plugin: bool) -> dict[str, object]:
    out = project / f"probe-{ci}-{plugin}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PROBE_OUT"] = str(out)
    if ci:
        env["CI"] = "1"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py"]
    if not plugin:
        args[4:4] = ["-p", "no:trioflow"]
    done = subprocess.run(
        args, cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(out.read_text())
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    return tmp_path


@pytest.mark.parametrize("ci", [True, False], ids=["CI=1", "no CI"])
def test_user_settings_are_the_same_with_and_without_the_plugin(project: Path, ci: bool) -> None:
    with_plugin = probe(project, ci=ci, plugin=True)
    without = probe(project, ci=ci, plugin=False)
    assert with_plugin.pop("profiles") == ["trioflow-ci", "trioflow-dev"]
    assert without.pop("profiles") == []
    assert with_plugin == without
    assert with_plugin["profile"] == ("ci" if ci else "default")


def test_a_user_ci_profile_is_kept(project: Path) -> None:
    (project / "conftest.py").write_text(USER_CI_PROFILE)
    with_plugin = probe(project, ci=True, plugin=True)
    without = probe(project, ci=True, plugin=False)
    assert with_plugin["max_examples"] == without["max_examples"] == 7
    with_plugin.pop("profiles"), without.pop("profiles")
    assert with_plugin == without


def test_the_plugin_profiles() -> None:
    from hypothesis import settings

    import trioflow.testing._plugin  # noqa: F401  (registered on import)

    assert settings.get_profile("trioflow-dev").max_examples == 60
    assert settings.get_profile("trioflow-ci").max_examples == 600
    assert settings.get_profile("trioflow-ci").deadline is None
