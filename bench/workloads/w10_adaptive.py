"""W10 adaptive concurrency: ``n=Adaptive(1, 64)`` against fixed ``n`` on one simulated downstream.

The downstream answers in ``BASE`` = 50 ms while at most ``C`` calls are in flight and in
``BASE * k / C`` with ``k > C`` in flight (``C`` parallel slots and a queue); ``C`` is 16 for the
first ``HALVE_AT`` seconds, then 8. No stage is told ``C``. Every implementation sends the same
``n`` items through ``process(call, n=...)`` under trio's ``MockClock`` (autojump), so the times
are *simulated* seconds (``elapsed_s``: from the first call to the last item's settlement): the
figures are the algorithm's, not this machine's. Implementations: ``adaptive``
(``Adaptive(min=1, max=64)``), ``fixed-best`` (``n=16``, the smallest fixed n with the most
throughput: the baseline), ``fixed-default`` (``n=1``) and ``fixed-max`` (``n=64``).

Each run's result carries the p95 latency of its calls over seconds 10-30 (``p95_x_base``, a
multiple of ``BASE``), and for ``adaptive`` the largest limit seen 20-30 s after ``C`` halved
over the new ``C`` (``settled_x_c``). The default run of ``adaptive`` also draws the figure of
docs/concepts/flow-control.md (limit and latency over time), :data:`FIGURE`.

``pg-adaptive`` / ``pg-fixed-*`` (when PostgreSQL and psycopg are here): the same, against a real
PostgreSQL sink (a row insert per call) beside concurrent load on the same table; see NOTES.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

TITLE = "W10 adaptive concurrency vs fixed n (simulated downstream)"
DESCRIPTION = (
    "{n} items through process(call, n=...) to a downstream of 50 ms up to C calls in flight and "
    "slower beyond (C = 16, halved to 8 after 30 s), in simulated time (MockClock)"
)
METRIC = "time"
BASELINE = "fixed-best"
SIZES = {"default": {"n": 15_000, "plot": True}, "quick": {"n": 1_500, "plot": False}}
#: n=1 does 20 items/s: fewer items keep its run short (throughput is compared); the PostgreSQL
#: runs insert PG_ROWS rows (300 in a quick run)
PEER_SIZES = {
    "fixed-default": {"n": 1_000, "plot": False},
    **{name: {"n": 3_000, "plot": False} for name in ("pg-adaptive", "pg-fixed-4", "pg-fixed-1",
                                                       "pg-fixed-64")},
}  # fmt: skip
BASE = 0.05
CAPACITY = 16
HALVE_AT = 30.0
#: the figure the default run of ``adaptive`` writes
FIGURE = Path(__file__).resolve().parents[2] / "docs" / "concepts" / "flow-control.png"


def expected(p: dict[str, Any]) -> dict[str, int]:
    n = p["n"]
    return {"sum": n * (n - 1) // 2, "count": n}


class Downstream:
    """``capacity`` parallel slots and a queue; ``capacity`` halves at ``HALVE_AT``."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.in_flight = 0
        #: (time the call ended since t0, its latency)
        self.calls: list[tuple[float, float]] = []

    def capacity(self, now: float) -> int:
        return CAPACITY if now - self.t0 < HALVE_AT else CAPACITY // 2

    async def __call__(self, item: int) -> int:
        import trio

        self.in_flight += 1
        now = trio.current_time()
        latency = BASE * max(1.0, self.in_flight / self.capacity(now))
        try:
            await trio.sleep(latency)
        finally:
            self.in_flight -= 1
        self.calls.append((now + latency - self.t0, latency))
        return item


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))] if ordered else float("nan")


def simulate(n_items: int, n: Any) -> dict[str, Any]:
    """Run ``n_items`` through ``process(downstream, n=n)`` in simulated time."""
    import trio
    import trio.testing

    import trioflow as tf

    total = {"sum": 0, "count": 0}
    limits: list[tuple[float, int]] = []
    out: dict[str, Any] = {}

    def acc(x: int) -> None:
        total["sum"] += x
        total["count"] += 1

    async def main() -> None:
        t0 = trio.current_time()
        down = Downstream(t0)
        pipeline = (
            tf.from_iterable(range(n_items)) | tf.process(down, n=n, name="call") | tf.sink(acc)
        )
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(pipeline.serve)

            async def sample() -> None:
                while True:
                    (entry,) = [s for s in handle.snapshot()["stages"] if s["name"] == "call"]
                    limits.append((trio.current_time() - t0, entry["workers"]))
                    await trio.sleep(0.25)

            nursery.start_soon(sample)
            report = await handle.wait()
            nursery.cancel_scope.cancel()
        out["elapsed_s"] = report.elapsed
        out["down"] = down

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    down: Downstream = out["down"]
    early = [lat for t, lat in down.calls if 10.0 <= t < HALVE_AT]
    result: dict[str, Any] = {
        **total,
        "elapsed_s": out["elapsed_s"],
        "p95_x_base": _p95(early) / BASE,
    }
    late = [limit for t, limit in limits if HALVE_AT + 20.0 <= t <= HALVE_AT + 30.0]
    if late:
        result["settled_x_c"] = max(late) / (CAPACITY // 2)
    result["_limits"] = limits
    result["_calls"] = down.calls
    return result


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def run_adaptive(p: dict[str, Any]) -> dict[str, Any]:
    import trioflow as tf

    result = simulate(p["n"], tf.Adaptive(min=1, max=64))
    if p.get("plot"):
        plot(result, simulate(p["n"], 64), simulate(p["n"], CAPACITY), FIGURE)
    return _strip(result)


def run_fixed(n: int) -> Any:
    def run(p: dict[str, Any]) -> dict[str, Any]:
        return _strip(simulate(p["n"], n))

    return run


def plot(
    adaptive: dict[str, Any], fixed_max: dict[str, Any], fixed_best: dict[str, Any], path: Path
) -> None:
    """Limit, capacity and p95 latency per second over time, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = min(adaptive["elapsed_s"], 60.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ts = [t for t, _ in adaptive["_limits"] if t <= end]
    top.step(ts, [limit for t, limit in adaptive["_limits"] if t <= end], where="post",
             label="Adaptive(1, 64): limit")  # fmt: skip
    top.step([0, HALVE_AT, end], [CAPACITY, CAPACITY // 2, CAPACITY // 2], where="post",
             linestyle="--", color="grey", label="hidden capacity C")  # fmt: skip
    top.set_ylabel("calls in flight")
    top.legend(loc="upper right")
    top.set_title("W10: a downstream of 50 ms up to C calls, slower beyond")
    for name, result in (("Adaptive(1, 64)", adaptive), ("n=64", fixed_max),
                         ("n=16", fixed_best)):  # fmt: skip
        seconds: list[float] = []
        p95: list[float] = []
        calls = sorted(result["_calls"])
        for second, group in itertools.groupby(calls, key=lambda c: int(c[0])):
            if second >= end:
                break
            seconds.append(second + 0.5)
            p95.append(_p95([lat for _, lat in group]) * 1000)
        bottom.plot(seconds, p95, label=name)
    bottom.axhline(2 * BASE * 1000, color="grey", linestyle=":", label="2x base latency")
    bottom.set_ylabel("p95 latency per second (ms)")
    bottom.set_xlabel("simulated seconds")
    bottom.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- a real PostgreSQL sink beside concurrent load ----------------------------------------------

#: rows a PostgreSQL run inserts (each call: one row, and an update of one of HOT_ROWS hot rows)
PG_ROWS = 3_000
HOT_ROWS = 4
#: threads of other load on the same server while the pipeline runs (a CPU-heavy query each)
PG_LOAD_THREADS = 2


def _pg_bin() -> Path | None:
    import shutil

    initdb = shutil.which("initdb")
    candidates = [Path(initdb).resolve().parent] if initdb else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if all((folder / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _pg_why() -> str | None:
    import os

    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "needs psycopg: pip install -e '.[postgres]'"
    if _pg_bin() is None:
        return "needs a PostgreSQL server (initdb, pg_ctl)"
    if os.geteuid() == 0:
        import pwd
        import shutil

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "as root, needs a 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "as root, needs runuser"
    return None


class _Postgres:
    """A throw-away cluster on 127.0.0.1 (as the ``postgres`` user when run as root)."""

    def __init__(self) -> None:
        import os
        import shutil
        import socket
        import subprocess
        import tempfile

        binary = _pg_bin()
        assert binary is not None
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if prefix:
            shutil.chown(self.dir, "postgres", "postgres")
        self.ctl = [*prefix, str(binary / "pg_ctl"), "-D", str(self.dir / "data")]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
        subprocess.run([*prefix, str(binary / "initdb"), "-D", str(self.dir / "data"),
                        "-U", "postgres", "--auth=trust"], **quiet)  # type: ignore[call-overload]  # fmt: skip
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        subprocess.run([*self.ctl, "-l", str(self.dir / "log"), "-w", "-o", options, "start"],
                       **quiet)  # type: ignore[call-overload]  # fmt: skip
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def stop(self) -> None:
        import shutil
        import subprocess

        subprocess.run([*self.ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_pg(spec: str) -> Any:
    """``process(insert, n=...)`` into a real PostgreSQL, beside other load on the server
    (``spec``: ``"adaptive"`` for ``Adaptive(min=1, max=64)``, or a fixed n).

    Each call inserts its row and bumps one of ``HOT_ROWS`` counters in the same transaction, so
    calls beyond a handful wait for each other's row locks: the database's real capacity, which
    no one tells the stage. The sync psycopg connection runs in a thread (psycopg's async one
    needs asyncio), one connection per call in flight.
    """

    def run(p: dict[str, Any]) -> dict[str, Any]:
        import threading
        import time

        import psycopg
        import trio

        import trioflow as tf

        n: Any = tf.Adaptive(min=1, max=64) if spec == "adaptive" else int(spec)
        server = _Postgres()
        stop_load = threading.Event()
        try:
            with psycopg.connect(server.dsn, autocommit=True) as setup:
                setup.execute("CREATE TABLE w10 (id bigint PRIMARY KEY, payload text)")
                setup.execute("CREATE TABLE hot (k int PRIMARY KEY, v bigint)")
                setup.execute(
                    "INSERT INTO hot SELECT k, 0 FROM generate_series(0, %s) k", (HOT_ROWS - 1,)
                )

            def load() -> None:
                with psycopg.connect(server.dsn, autocommit=True) as conn:
                    while not stop_load.is_set():
                        conn.execute("SELECT sum(v) FROM generate_series(1, 200000) v").fetchone()

            loaders = [threading.Thread(target=load, daemon=True) for _ in range(PG_LOAD_THREADS)]
            for thread in loaders:
                thread.start()
            idle: list[psycopg.Connection[Any]] = []
            latencies: list[float] = []
            total = {"sum": 0, "count": 0}

            def insert(item: int) -> None:
                conn = idle.pop() if idle else psycopg.connect(server.dsn)
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO w10 VALUES (%s, %s)", (item, "x" * 100))
                        conn.execute("UPDATE hot SET v = v + 1 WHERE k = %s", (item % HOT_ROWS,))
                finally:
                    idle.append(conn)

            threads = trio.CapacityLimiter(64)

            async def call(item: int) -> int:
                started = time.perf_counter()
                await trio.to_thread.run_sync(insert, item, limiter=threads)
                latencies.append(time.perf_counter() - started)
                return item

            def acc(item: int) -> None:
                total["sum"] += item
                total["count"] += 1

            async def main() -> float:
                started = time.perf_counter()
                await (tf.from_iterable(range(p["n"])) | tf.process(call, n=n) | tf.sink(acc)).run()
                return time.perf_counter() - started

            elapsed = trio.run(main)
            stop_load.set()
            for thread in loaders:
                thread.join(10)
            for conn in idle:
                conn.close()
            return {**total, "elapsed_s": elapsed, "p95_ms": _p95(latencies) * 1000}
        finally:
            stop_load.set()
            server.stop()

    return run


IMPLS = {
    "adaptive": run_adaptive,
    "fixed-best": run_fixed(CAPACITY),
    "fixed-default": run_fixed(1),
    "fixed-max": run_fixed(64),
}
_PG_WHY = _pg_why()
SKIPPED: dict[str, str] = {}
for _name, _spec in (("pg-adaptive", "adaptive"), ("pg-fixed-4", "4"), ("pg-fixed-1", "1"),
                     ("pg-fixed-64", "64")):  # fmt: skip
    if _PG_WHY is None:
        IMPLS[_name] = run_pg(_spec)
    else:
        SKIPPED[_name] = _PG_WHY
NOTES = {
    "adaptive": "process(call, n=Adaptive(min=1, max=64)); its p95 over 10-30 s and its limit "
    "20-30 s after C halved are checked (see the figures)",
    "fixed-best": "process(call, n=16): 16 = C, the most throughput at the base latency",
    "fixed-default": "process(call) (n=1): 1,000 items",
    "fixed-max": "process(call, n=64): the throughput of n=16 at up to 8x the latency",
    "pg-*": f"a real PostgreSQL: {PG_ROWS:,} calls, each inserting a row and updating one of "
    f"{HOT_ROWS} hot rows in one transaction, beside {PG_LOAD_THREADS} threads of CPU-heavy "
    "queries on the same server; wall-clock time; the ratio column compares with the simulated "
    "fixed-best (meaningless): compare the pg rows with each other (p95 in the JSON results)",
}
