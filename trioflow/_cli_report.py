"""What ``trioflow run`` prints: the final report as a table, and the live progress display.

The progress display uses rich when it is installed (``trioflow[cli]``) and stderr is a
terminal: a live table redrawn in place, one row a stage. tqdm draws one bar per known total;
a pipeline has several stages, no total, and figures (in-flight, failures, latency) that are
columns, not bars, so a table fits. Otherwise a plain line goes to stderr every few seconds.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, TextIO

import trio

from ._report import RunReport

if TYPE_CHECKING:
    from ._runner import PipelineHandle

__all__ = ["print_report"]


def _ms(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.2f} s"


def _rate(x: float) -> str:
    return f"{x:,.0f}/s" if x >= 10 else f"{x:.1f}/s"


def _report_rows(report: RunReport) -> list[list[str]]:
    rows = [["stage", "done", "rate", "busy", "failed", "p50", "p99"]]
    for name, st in report.stages.items():
        rows.append(
            [
                name,
                f"{st.count:,}",
                _rate(st.rate(report.elapsed)),
                f"{st.busy_fraction(report.elapsed):.0%}",
                f"{st.failed:,}",
                _ms(st.p50),
                _ms(st.p99),
            ]
        )
    return rows


def _totals_lines(report: RunReport) -> list[str]:
    lines = [
        f"received   {report.received:>10,}",
        f"acked      {report.acked:>10,}   (filtered {report.filtered:,})",
        f"failed     {report.failed:>10,}   (dead-lettered {report.dead_lettered:,})",
    ]
    for reason, count in sorted(report.failed_by_reason.items()):
        lines.append(f"  {reason:<28} {count:>8,}")
    lines += [
        f"retried    {report.retried:>10,}",
        f"unsettled  {report.unsettled:>10,}"
        + (
            f"   (ack errors {report.ack_errors:,}, on_failure errors "
            f"{report.failure_handler_errors:,}: left un-acked)"
            if report.ack_errors or report.failure_handler_errors
            else ""
        ),
        f"elapsed    {report.elapsed:>10.2f} s   ({report.throughput:,.0f} messages/s)",
        f"end-to-end p50 {_ms(report.end_to_end.p50)}, p99 {_ms(report.end_to_end.p99)}",
    ]
    for source, figures in report.sources.items():
        shown = ", ".join(f"{k} {v:,.0f}" for k, v in figures.items())
        lines.append(f"source {source}: {shown}")
    return lines


def print_report(report: RunReport, out: TextIO) -> None:
    """The final report as a table (rich on a terminal, aligned text otherwise)."""
    rows = _report_rows(report)
    rich = load_rich() if out.isatty() else None
    if rich is not None:
        console = rich.console.Console(file=out)
        table = rich.table.Table(title="stages", title_justify="left")
        for i, head in enumerate(rows[0]):
            table.add_column(head, justify="left" if i == 0 else "right")
        for row in rows[1:]:
            table.add_row(*row)
        for line in _totals_lines(report):
            console.print(line, highlight=False)
        console.print(table)
        return
    for line in _totals_lines(report):
        print(line, file=out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print("  ".join(cells).rstrip(), file=out)
    out.flush()


def load_rich() -> Any:
    try:
        for part in ("console", "live", "table"):
            importlib.import_module(f"rich.{part}")
    except ImportError:
        return None
    return importlib.import_module("rich")


def _progress_table(rich: Any, snap: dict[str, Any]) -> Any:
    t = snap["totals"]
    e2e = snap["end_to_end"]
    caption = (
        f"{snap['state']}  {snap['elapsed']:.1f} s   received {t['received']:,}  "
        f"acked {t['acked']:,}  failed {t['failed']:,}  in flight {t['unsettled']:,}  "
        f"ingest {_rate(t['ingest_rate'])}  end-to-end p99 {_ms(e2e['p99'])}"
    )
    table = rich.table.Table(title=caption, title_justify="left", expand=False)
    for i, head in enumerate(
        ["stage", "kind", "rate", "done", "in-flight", "fill", "failed", "busy", "p99"]
    ):
        table.add_column(head, justify="left" if i < 2 else "right")
    for st in snap["stages"]:
        table.add_row(
            st["name"],
            st["kind"] + (f" x{st['workers']}" if st["workers"] > 1 else ""),
            _rate(st["rate"]),
            f"{st['count']:,}",
            f"{st['in_flight']:,}",
            f"{st['fill']:.0%}",
            f"{st['failed']:,}",
            f"{st['busy']:.0%}",
            _ms(st["p99"]),
        )
    return table


def _log_line(snap: dict[str, Any]) -> str:
    t = snap["totals"]
    stages = "  ".join(
        f"{s['name']} {_rate(s['rate'])} in-flight {s['in_flight']}" for s in snap["stages"]
    )
    return (
        f"trioflow: {snap['elapsed']:.1f}s {snap['state']} received={t['received']} "
        f"acked={t['acked']} failed={t['failed']} in_flight={t['unsettled']} "
        f"ingest={t['ingest_rate']:.1f}/s | {stages}"
    )


async def progress(handle: PipelineHandle, mode: str, every: float) -> None:
    """Live table (``live``) or a log line every ``every`` seconds (``log``) on stderr."""
    if mode == "live":
        rich = load_rich()
        assert rich is not None
        console = rich.console.Console(stderr=True)
        # auto_refresh=False: rich would redraw from its own thread, reading live figures
        # while the pipeline changes them; here every redraw runs in the pipeline's thread
        live = rich.live.Live(console=console, auto_refresh=False, transient=True)
        live.start()
        try:
            while True:
                live.update(_progress_table(rich, handle.snapshot()), refresh=True)
                await trio.sleep(0.5)
        finally:
            live.stop()
    else:
        while True:
            await trio.sleep(every)
            print(_log_line(handle.snapshot()), file=sys.stderr, flush=True)
