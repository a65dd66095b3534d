"""The benchmark runner: fresh subprocess per measurement, interleaved rounds, checked results.

``python -m bench``                run W1-W7 (3 rounds), write bench/results/latest.{md,json}
``python -m bench --quick``        tiny sizes, 1 round (CI smoke)
``python -m bench --only W1,W2``   a subset
``python -m bench --repeat 5``     more rounds
``python -m bench --check``        check the figures of the last run; exit 1 listing unmet ones
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from .workloads import MODULES, load

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results"
REPRODUCE = "python -m bench"
CHILD_TIMEOUT = 300.0
PEERS = ("trio", "trioflow", "aiostream", "slurry", "pypeln", "attrs")


# -- running ------------------------------------------------------------------------------------


def sizes_for(module: Any, impl: str, quick: bool) -> dict[str, Any]:
    """The parameters of one implementation's run."""
    params = dict(module.SIZES["quick" if quick else "default"])
    if not quick:
        params.update(getattr(module, "PEER_SIZES", {}).get(impl, {}))
    return params


def run_child(key: str, impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; return its JSON, or an ``error``."""
    cmd = [sys.executable, "-m", "bench.child", key, impl, json.dumps(params)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    try:
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": f"unreadable output: {proc.stdout[-200:]!r}"}


def check_result(module: Any, params: dict[str, Any], got: dict[str, Any]) -> str:
    """``"ok"``, or what is wrong with the run's sum/count."""
    if "error" in got:
        return "error"
    want = module.expected(params)
    res = got["result"]
    bad = [f"{k} {res.get(k)} != {v}" for k, v in want.items() if res.get(k) != v]
    return "ok" if not bad else "WRONG: " + "; ".join(bad)


def installed(impl: str) -> str | None:
    """Why ``impl`` cannot run here (a peer package missing), or None."""
    package = impl.split("+")[0]
    if package not in ("slurry", "aiostream", "pypeln"):
        return None
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return f"not installed ({package}); pip install {package}"
    return None


def run_suite(keys: list[str], repeat: int, quick: bool, log: Callable[[str], None]) -> dict:
    """Run every implementation of every workload ``repeat`` times, interleaved."""
    modules = {k: load(k) for k in keys}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {} for k in keys}
    missing: dict[str, dict[str, str]] = {k: {} for k in keys}
    for key, module in modules.items():
        for impl in module.IMPLS:
            why = installed(impl)
            if why:
                missing[key][impl] = why
            else:
                runs[key][impl] = []
    total = sum(len(r) for r in runs.values()) * repeat
    done = 0
    started = time.perf_counter()
    for round_ in range(repeat):
        for key, module in modules.items():
            impls = list(runs[key])
            # rotate the order every round so no implementation always runs first or last
            shift = round_ % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                params = sizes_for(module, impl, quick)
                got = run_child(key, impl, params)
                got["params"] = params
                got["check"] = check_result(module, params, got)
                got["round"] = round_
                runs[key][impl].append(got)
                done += 1
                secs = got.get("elapsed", float("nan"))
                log(
                    f"[{done}/{total} {time.perf_counter() - started:6.1f}s] round {round_ + 1} "
                    f"{key} {impl:<14} {secs:7.3f}s {got['check']} {got.get('error', '')}"
                )
    return {"runs": runs, "missing": missing}


# -- summarising --------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _count(run: dict[str, Any]) -> int:
    return int(run["result"]["count"]) if "result" in run else 0


def _throughput(run: dict[str, Any]) -> float:
    if run.get("check") != "ok":
        return float("nan")
    return _count(run) / run["elapsed"]


def _metric(module: Any, run: dict[str, Any]) -> dict[str, float]:
    """The figures of one run, by the workload's kind (and its probe, measured in the child)."""
    nan = float("nan")
    ok = run.get("check") == "ok"
    res = run.get("result", {})
    probe = run.get("probe") if ok else None
    if module.METRIC == "time":
        m = {"throughput": _throughput(run)}
        ceiling = getattr(module, "ceiling", None)
        if ceiling is not None:
            # the items/s this run's own probe allows, and the share of it the run reached
            m["ceiling"] = ceiling(probe) if probe else nan
            m["of_ceiling"] = m["throughput"] / m["ceiling"]
            in_run = res.get("sleep_in_run_s") if ok else None
            if in_run:
                # the same ceiling with the sleep as the workers got it during the run
                m["slots_busy"] = m["throughput"] / ceiling({"sleep_s": in_run})
        return m
    if module.METRIC == "latency":
        m = {
            "p50_ms": res["p50_ms"] if ok else nan,
            "p99_ms": res["p99_ms"] if ok else nan,
            "max_ms": res["max_ms"] if ok else nan,
        }
        for name in getattr(module, "RESULT_FIGURES", ()):
            m[name] = res[name] if ok else nan
        for name in getattr(module, "PROBE_FIGURES", ()):
            m[name] = probe[name] if probe else nan
        return m
    # memory
    small, large = res.get("peak_small_kb", nan), res.get("peak_large_kb", nan)
    return {
        "peak_small_mb": small / 1024 if ok else nan,
        "peak_large_mb": large / 1024 if ok else nan,
        "growth": large / small if ok else nan,
        "rss_small_mb": res.get("rss_small_kb", nan) / 1024 if ok else nan,
        "rss_large_mb": res.get("rss_large_kb", nan) / 1024 if ok else nan,
    }


def _ratio_value(module: Any, m: dict[str, float], base: dict[str, float]) -> float:
    """One round's ratio to the baseline: speed-up (time), latency multiple, or growth."""
    if module.METRIC == "time":
        return m["throughput"] / base["throughput"]
    if module.METRIC == "latency":
        return m["p99_ms"] / base["p99_ms"]
    return m["growth"]


def summarise(suite: dict[str, Any]) -> dict[str, Any]:
    """Per workload and implementation: figures and per-round ratios (median, min, max)."""
    out: dict[str, Any] = {}
    for key, impls in suite["runs"].items():
        module = load(key)
        base_name = getattr(module, "BASELINE", "trio")
        base_runs = {r["round"]: r for r in impls.get(base_name, [])}
        rows: dict[str, Any] = {}
        for impl, runs in impls.items():
            metrics = [_metric(module, r) for r in runs]
            figures = {name: _stats([m[name] for m in metrics]) for name in metrics[0]}
            ratios = []
            for r, m in zip(runs, metrics, strict=True):
                base = base_runs.get(r["round"])
                if module.METRIC == "memory":
                    ratios.append(m["growth"])
                elif base is not None:
                    ratios.append(_ratio_value(module, m, _metric(module, base)))
            checks = sorted({r["check"] for r in runs})
            errors = sorted({r["error"] for r in runs if "error" in r})
            rows[impl] = {
                "params": runs[0]["params"],
                "figures": figures,
                "ratio": _stats(ratios),
                "peak_rss_mb": _stats(
                    [r["peak_rss_kb"] / 1024 for r in runs if "peak_rss_kb" in r]
                ),
                "check": "ok" if checks == ["ok"] else ", ".join(checks),
                "errors": errors,
                "runs": runs,
            }
        out[key] = {
            "title": module.TITLE,
            "description": module.DESCRIPTION.format(**module.SIZES["default"]),
            "metric": module.METRIC,
            "baseline": base_name,
            "rows": rows,
            "notes": getattr(module, "NOTES", {}),
            "skipped": {**getattr(module, "SKIPPED", {}), **suite["missing"].get(key, {})},
        }
    return out


def _paired(summary: dict[str, Any], key: str, num: str, den: str, metric: str) -> Any:
    """Per-round ratio of ``num`` to ``den`` on ``metric`` (median, min, max)."""
    rows = summary.get(key, {}).get("rows", {})
    if num not in rows or den not in rows:
        return None
    den_runs = {r["round"]: r for r in rows[den]["runs"]}
    module = load(key)
    values = []
    for run in rows[num]["runs"]:
        other = den_runs.get(run["round"])
        if other is not None:
            values.append(_metric(module, run)[metric] / _metric(module, other)[metric])
    return _stats(values)


#: (workload, label, target text, how to compute, op, bound). Every value is a ratio (or, for W7,
#: a lateness) taken per round against a baseline measured in the same round, or in the same
#: child process (W3's ceiling), and judged on its median over the rounds.
FIGURES: list[tuple[str, str, str, Callable[[dict[str, Any]], Any], str, float]] = [
    ("W1", "W1 trioflow vs hand-written trio", ">= 5x",
     lambda s: _ratio(s, "W1", "trioflow"), ">=", 5.0),
    ("W1", "W1 trioflow vs sequential loop", ">= 0.85x",
     lambda s: _paired(s, "W1", "trioflow", "sequential", "throughput"), ">=", 0.85),
    ("W2", "W2 trioflow vs hand-written trio", ">= 30x",
     lambda s: _ratio(s, "W2", "trioflow"), ">=", 30.0),
    ("W2", "W2 trioflow vs sequential loop", ">= 0.6x",
     lambda s: _paired(s, "W2", "trioflow", "sequential", "throughput"), ">=", 0.6),
    ("W3", "W3 trioflow vs trio pool of 100 tasks", ">= 0.9x",
     lambda s: _ratio(s, "W3", "trioflow"), ">=", 0.9),
    ("W3", "W3 trioflow vs its ceiling (100 / one lone 1 ms sleep, same process)", ">= 0.9x",
     lambda s: _figure(s, "W3", "trioflow", "of_ceiling"), ">=", 0.9),
    ("W4", "W4 trioflow peak RSS after 5M / after 100k", "<= 1.10",
     lambda s: _ratio(s, "W4", "trioflow"), "<=", 1.10),
    ("W5", "W5 trioflow p99 latency / hand-written trio p99", "<= 1.5x",
     lambda s: _ratio(s, "W5", "trioflow"), "<=", 1.5),
    ("W6", "W6 throughput with acks / without", ">= 0.7 (acks cost <= 30%)",
     lambda s: _ratio(s, "W6", "trioflow+acks"), ">=", 0.7),
    ("W7", "W7 p99 lateness of a 10 ms sleeper beside trioflow W2 (ms)", "<= 5 ms",
     lambda s: _figure(s, "W7", "trioflow", "p99_ms"), "<=", 5.0),
    ("W8", "W8 acks cost, batch shape: messages / plain data", ">= 0.75x",
     lambda s: _paired(s, "W8", "batch-acks", "batch-plain", "throughput"), ">=", 0.75),
    ("W8", "W8 acks cost, one stage: messages / plain data", ">= 0.75x",
     lambda s: _paired(s, "W8", "one-acks", "one-plain", "throughput"), ">=", 0.75),
    ("W9", "W9 Kafka, 4 partitions, 5 ms handler: trioflow n=64 by key / confluent-kafka loop",
     ">= 10x", lambda s: _ratio(s, "W9", "trioflow"), ">=", 10.0),
    ("W10", "W10 Adaptive(1, 64) throughput / best fixed n (simulated downstream)", ">= 0.9x",
     lambda s: _ratio(s, "W10", "adaptive"), ">=", 0.9),
    ("W10", "W10 Adaptive(1, 64) p95 latency over 10-30 s / base latency", "<= 2x",
     lambda s: _result(s, "W10", "adaptive", "p95_x_base"), "<=", 2.0),
    ("W10", "W10 Adaptive(1, 64) limit 20-30 s after C halved / new C", "<= 1.5x",
     lambda s: _result(s, "W10", "adaptive", "settled_x_c"), "<=", 1.5),
    ("W11", "W11 OpenTelemetry with a no-op provider / no instrument", ">= 0.9x",
     lambda s: _ratio(s, "W11", "trioflow+noop"), ">=", 0.9),
]  # fmt: skip


def _ratio(summary: dict[str, Any], key: str, impl: str) -> Any:
    row = summary.get(key, {}).get("rows", {}).get(impl)
    return None if row is None else row["ratio"]


def _result(summary: dict[str, Any], key: str, impl: str, name: str) -> Any:
    """A figure the implementation returned itself (median, min, max over its good runs)."""
    row = summary.get(key, {}).get("rows", {}).get(impl)
    if row is None:
        return None
    return _stats([r["result"][name] for r in row["runs"] if name in r.get("result", {})])


def _figure(summary: dict[str, Any], key: str, impl: str, name: str) -> Any:
    """One of a row's own figures (median, min, max over the rounds)."""
    row = summary.get(key, {}).get("rows", {}).get(impl)
    return None if row is None else row["figures"].get(name)


def figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's figures, evaluated on the median of the per-round ratios."""
    out = []
    for key, label, target, compute, op, bound in FIGURES:
        if key not in summary:
            continue
        value = compute(summary)
        if value is None:
            met = None
        else:
            med = value["median"]
            met = med >= bound if op == ">=" else med <= bound
        out.append({"workload": key, "figure": label, "target": target, "op": op,
                    "bound": bound, "value": value, "met": met})  # fmt: skip
    return out


# -- reporting ----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    versions = {}
    for name in PEERS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    commit = commit or os.environ.get("BENCH_COMMIT", "")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "commit": commit,
    }


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _span(s: dict[str, float] | None, digits: int = 2, suffix: str = "") -> str:
    if s is None:
        return "-"
    return (
        f"{_fmt(s['median'], digits)}{suffix} [{_fmt(s['min'], digits)}-{_fmt(s['max'], digits)}]"
    )


def _size(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in params.items())


#: columns a workload's probe (or extra result figures) add to its table: (title, name, digits)
_PROBE_COLUMNS = {
    "samples": ("wake-ups", 0),
    "ceiling": ("ceiling (items/s)", 0),
    "of_ceiling": ("of ceiling", 2),
    "slots_busy": ("of in-run ceiling", 2),
    "idle_p50_ms": ("idle p50 (ms)", 3),
    "idle_max_ms": ("idle max (ms)", 3),
}


def _extra_columns(w: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The probe's columns present in this workload's rows, in a fixed order."""
    names: set[str] = set()
    for row in w["rows"].values():
        names.update(row["figures"])
    return [(title, name, d) for name, (title, d) in _PROBE_COLUMNS.items() if name in names]


def _cell(row: dict[str, Any], name: str, digits: int) -> str:
    return _span(row["figures"].get(name), digits)


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# trioflow benchmark results",
        "",
        f"{env['date']}; {env['cpus']} CPUs; {env['implementation']} {env['python']}; "
        f"{env['platform']}; commit {env['commit'] or '?'}.",
        "Versions: "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in env["versions"].items())
        + ".",
        f"Mode: {'quick (smoke sizes: figures mean nothing)' if report['quick'] else 'default'}; "
        f"{report['repeat']} interleaved round(s), each run in a fresh process; "
        f"wall time {report['wall_s']:.0f} s. Reproduce: `{report['command']}`.",
        "",
        "Cells are median [min-max] over the rounds. Ratios are taken per round against the "
        "baseline's run in the same round (throughput ratio: higher is faster; W5, W7: p99 "
        "multiple, lower is better; W4: peak RSS after the large count / after the small one). "
        "W3's *ceiling* is 100 / the duration of one 1 ms sleep, measured in the same child "
        "process as the run; W7's *idle* columns are the sleeper's lateness on an idle loop in "
        "the same process.",
        "",
        "## Figures",
        "",
        "| figure | target | measured | met |",
        "| --- | --- | --- | --- |",
    ]
    for f in report["figures"]:
        met = "n/a" if f["met"] is None else ("yes" if f["met"] else "**no**")
        lines.append(f"| {f['figure']} | {f['target']} | {_span(f['value'])} | {met} |")
    for w in report["workloads"].values():
        lines += ["", f"## {w['title']}", "", w["description"] + ".", ""]
        base = "hand-written trio" if w["baseline"] == "trio" else w["baseline"]
        extra = _extra_columns(w)
        head = "".join(f" {title} |" for title, _, _ in extra)
        rule = " --- |" * len(extra)
        if w["metric"] == "time":
            lines += [
                f"| implementation | items | throughput (items/s) | vs {base} |{head} "
                "peak RSS (MB) | result |",
                f"| --- | --- | --- | --- |{rule} --- | --- |",
            ]
            for impl, row in w["rows"].items():
                cells = "".join(f" {_cell(row, name, d)} |" for _, name, d in extra)
                lines.append(
                    f"| {impl} | {_size(row['params'])} | "
                    f"{_span(row['figures']['throughput'], 0)} | "
                    f"{_span(row['ratio'])}x |{cells} {_span(row['peak_rss_mb'], 1)} | "
                    f"{row['check']} |"
                )
        elif w["metric"] == "latency":
            lines += [
                f"| implementation | items | p50 (ms) | p99 (ms) | max (ms) |{head} "
                f"p99 vs {base} | result |",
                f"| --- | --- | --- | --- | --- |{rule} --- | --- |",
            ]
            for impl, row in w["rows"].items():
                f = row["figures"]
                cells = "".join(f" {_cell(row, name, d)} |" for _, name, d in extra)
                lines.append(
                    f"| {impl} | {_size(row['params'])} | {_span(f['p50_ms'], 3)} | "
                    f"{_span(f['p99_ms'], 3)} | {_span(f['max_ms'], 3)} |{cells} "
                    f"{_span(row['ratio'])}x | {row['check']} |"
                )
        else:
            lines += [
                "| implementation | items | peak RSS at small (MB) | peak RSS at large (MB) "
                "| growth | current RSS small → large (MB) | result |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for impl, row in w["rows"].items():
                f = row["figures"]
                lines.append(
                    f"| {impl} | {_size(row['params'])} | {_span(f['peak_small_mb'], 1)} | "
                    f"{_span(f['peak_large_mb'], 1)} | {_span(row['ratio'], 3)} | "
                    f"{_fmt((f['rss_small_mb'] or {}).get('median'), 1)} → "
                    f"{_fmt((f['rss_large_mb'] or {}).get('median'), 1)} | {row['check']} |"
                )
        for impl, why in w["skipped"].items():
            lines.append(f"| {impl} | not run: {why} |")
        notes = [f"- {impl}: {text}" for impl, text in w["notes"].items()]
        errors = [f"- {impl} error: {e}" for impl, row in w["rows"].items() for e in row["errors"]]
        if notes or errors:
            lines += ["", *notes, *errors]
    return "\n".join(lines) + "\n"


# -- checking -----------------------------------------------------------------------------------


def check(out_dir: Path) -> int:
    """Exit status 0 when every figure of the last run is met; else list the unmet ones."""
    path = out_dir / "latest.json"
    if not path.exists():
        print(f"no results at {path}: run `{REPRODUCE}` first", file=sys.stderr)
        return 2
    report = json.loads(path.read_text())
    if report.get("quick"):
        print("note: these are --quick results; the figures are not meaningful", file=sys.stderr)
    bad = [f for f in report["figures"] if f["met"] is not True]
    wrong = [
        f"{key} {impl}: {row['check']}"
        for key, w in report["workloads"].items()
        for impl, row in w["rows"].items()
        if row["check"] != "ok"
    ]
    for f in report["figures"]:
        state = {True: "met", False: "UNMET", None: "not measured"}[f["met"]]
        print(f"{state:>12}  {f['figure']}: {_span(f['value'])} (target {f['target']})")
    for w in wrong:
        print(f"{'WRONG':>12}  {w}")
    if bad or wrong:
        print(f"{len(bad)} figure(s) unmet, {len(wrong)} wrong result(s)", file=sys.stderr)
        return 1
    return 0


# -- CLI ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round (CI smoke)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W2")
    parser.add_argument("--check", action="store_true", help="check the last run's figures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)

    if args.check:
        return check(args.out)
    keys = [k.strip().upper() for k in args.only.split(",") if k.strip()] or list(MODULES)
    unknown = [k for k in keys if k not in MODULES]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    suite = run_suite(keys, repeat, args.quick, log)
    summary = summarise(suite)
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    report = {
        "environment": environment(),
        "quick": args.quick,
        "repeat": repeat,
        "command": command.strip(),
        "wall_s": time.perf_counter() - started,
        "figures": figures(summary),
        "workloads": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / "latest.md").write_text(text)
    print(text)
    wrong = [
        f"{k} {i}" for k, w in summary.items() for i, r in w["rows"].items() if r["check"] != "ok"
    ]
    if wrong:
        log("wrong or failed results: " + ", ".join(wrong))
        return 1
    return 0
