"""The plain-text check table for the terminal summary and the ``qxai`` command (readable in CI logs)."""

from __future__ import annotations

import io
from typing import Sequence

from ..gate.check import VERDICTS, CheckResult, summarize

KIND_LABELS = {"vs_reference": "vs ref", "vs_baseline": "vs base", "reference_drift": "ref drift"}


def ordered(results: Sequence[CheckResult]) -> list[CheckResult]:
    """Failures first, then inconclusive checks, improvements, passes and skips; by check key within each."""
    kinds = list(KIND_LABELS)
    return sorted(results, key=lambda r: (VERDICTS.index(r.verdict), r.key, kinds.index(r.kind)))


def number(value: float | None, signed: bool = False) -> str:
    """A value for a table cell: four decimals for everyday magnitudes, '-' when absent."""
    if value is None or value != value:
        return "-"
    sign = "+" if signed else ""
    return f"{value:{sign}.4f}" if abs(value) < 1e4 else f"{value:{sign}.4g}"


def delta_cell(result: CheckResult) -> str:
    """``delta [lo, hi]``."""
    if result.delta is None:
        return "-"
    if result.ci is None:
        return number(result.delta, signed=True)
    return f"{number(result.delta, True)} [{number(result.ci[0], True)}, {number(result.ci[1], True)}]"


def verdict_label(verdict: str) -> str:
    """Verdicts that need attention in capitals."""
    return verdict.upper() if verdict in ("fail", "inconclusive", "improved") else verdict


def overall_line(results: Sequence[CheckResult]) -> str:
    """``qxai gate: FAIL (1 fail, 0 inconclusive, ...)``."""
    summary = summarize(results)
    counts = ", ".join(f"{n} {v}" for v, n in summary["counts"].items())
    return f"qxai gate: {summary['verdict'].upper()} ({counts})"


def table_lines(results: Sequence[CheckResult]) -> list[str]:
    """One row per check, failures first, then one ``verdict check: reason`` line per row needing attention."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.ASCII2, show_edge=False, pad_edge=False)
    for name in ("verdict", "suite", "metric", "kind", "reference", "quantized", "delta [CI]", "baseline",
                 "p", "n", "band"):
        table.add_column(name, no_wrap=True, justify="right" if name in ("reference", "quantized", "baseline",
                                                                          "p", "n") else "left")
    rows = ordered(results)
    for r in rows:
        table.add_row(verdict_label(r.verdict), r.suite, r.metric, KIND_LABELS[r.kind], number(r.reference),
                      number(r.quantized), delta_cell(r), number(r.baseline),
                      "-" if r.p_value is None else f"{r.p_value:.3g}", str(r.n), r.tolerance)
    buffer = io.StringIO()
    Console(file=buffer, width=400, color_system=None, force_terminal=False, highlight=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    lines += [f"{verdict_label(r.verdict)} {r.key} ({KIND_LABELS[r.kind]}): {r.reason}"
              for r in rows if r.verdict != "pass"]
    return lines
