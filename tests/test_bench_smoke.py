"""Smoke test of the benchmark suite: ``python -m bench --quick --only W1,W2`` runs and checks.

The figures themselves are asserted by ``python -m bench --check``, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (ROOT / "bench" / "__main__.py").exists(), reason="bench/ is not in this checkout"
)


def test_quick_bench_runs_and_checks_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "W1,W2", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.md").read_text().startswith("# trioflow benchmark results")
    assert report["quick"] is True
    assert set(report["workloads"]) == {"W1", "W2"}
    for key, workload in report["workloads"].items():
        rows = workload["rows"]
        assert {"trioflow", "trio", "sequential"} <= set(rows), key
        for impl, row in rows.items():
            assert row["check"] == "ok", (key, impl, row["errors"])
            (run,) = row["runs"]
            assert run["result"]["count"] == run["params"]["n"]
            assert run["elapsed"] > 0
            assert run["peak_rss_kb"] > 0
        assert rows["trio"]["ratio"]["median"] == pytest.approx(1.0)
    # each workload's figures: vs hand-written trio, and vs the sequential loop (the limit)
    assert [f["workload"] for f in report["figures"]] == ["W1", "W1", "W2", "W2"]
    assert all(f["value"] is not None for f in report["figures"])
