"""The plain-text check table for the terminal summary and the ``qxai`` command (readable in CI logs)."""

from __future__ import annotations

import io
import re
from typing import Any, Sequence

from ..gate.check import VERDICTS, CheckResult

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
    return verdict.upper() if verdict in ("fail", "inconclusive", "improved", "error") else verdict


def p_cell(value: float | None) -> str:
    """A p-value to three significant digits, '-' when absent."""
    return "-" if value is None else f"{value:.3g}"


POWER_NOTE = ("mdd: the smallest degradation this run detects with 80 % power (metric units); "
              "n needed: items that would decide an inconclusive check")
"""The legend of the power columns, printed under every table that shows them."""


COLUMNS = ("verdict", "suite", "metric", "kind", "reference", "quantized", "delta [CI]", "baseline", "p", "p adj", "n",
           "band", "mdd", "n needed")
NUMERIC = ("reference", "quantized", "baseline", "p", "p adj", "n", "mdd", "n needed")
"""Columns aligned to the right."""


def cells(result: CheckResult) -> dict[str, str]:
    """The table cells of one check by column (:data:`COLUMNS`), shared by the terminal, Markdown and HTML."""
    return {
        "verdict": verdict_label(result.verdict), "suite": result.suite, "metric": result.metric,
        "kind": KIND_LABELS[result.kind], "reference": number(result.reference),
        "quantized": number(result.quantized), "delta [CI]": delta_cell(result), "baseline": number(result.baseline),
        "p": p_cell(result.p_value), "p adj": p_cell(result.p_adjusted), "n": n_cell(result),
        "band": result.tolerance, "mdd": number(result.mdd),
        "n needed": "-" if result.n_needed is None else str(result.n_needed),
    }


SEQUENTIAL_NOTE = ("n [items/budget: why]: under --qxai-budget, the items the check used of the suite's budget and "
                   "why it stopped; its p is the repeated p-value over looks (docs/sequential.md)")
"""The legend of the n column when a check ran in sequential mode."""


def n_cell(result: CheckResult) -> str:
    """Valid paired items; in sequential mode also the items used of the budget and why the check stopped."""
    seq = result.notes.get("sequential")
    if not seq or "look" not in seq:
        return str(result.n)
    return f"{result.n} [{seq['items']}/{seq['budget']}: {seq['stopped'] or 'suite stopped'}]"


def overall_line(summary: dict[str, Any]) -> str:
    """``qxai gate: FAIL (1 fail, 0 inconclusive, ...)``, from :func:`~pytest_qxai.gate.check.summarize`."""
    counts = ", ".join(f"{n} {v}" for v, n in summary["counts"].items())
    errors = len(summary.get("errors", []))
    return f"qxai gate: {summary['verdict'].upper()} ({counts}" + (f"; {errors} error(s)" if errors else "") + ")"


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """One ``ERROR ...`` line per thing that did not run, then :func:`overall_line`."""
    return [f"ERROR {error}" for error in summary.get("errors", [])] + [overall_line(summary)]


_MARKDOWN = re.compile(r"([\\`*_\[\]|~<>&])")
"""What can start markup inside a line (every escaped field sits inside one): emphasis, code, links, HTML,
table cells, strikethrough."""


def markdown_text(text: object) -> str:
    """Any value as literal Markdown text on one line: Markdown and HTML characters are backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def table_lines(results: Sequence[CheckResult]) -> list[str]:
    """One row per check, failures first, then one ``verdict check: reason`` line per row needing attention."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows = ordered(results)
    table = Table(box=box.ASCII2, show_edge=False, pad_edge=False)
    for name in COLUMNS:
        table.add_column(name, no_wrap=True, justify="right" if name in NUMERIC else "left")
    for r in rows:
        table.add_row(*(escape(cell) for cell in cells(r).values()))  # a name like "acc[en]" is text, not markup
    buffer = io.StringIO()
    Console(file=buffer, width=400, color_system=None, force_terminal=False, highlight=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    lines += [f"{verdict_label(r.verdict)} {r.key} ({KIND_LABELS[r.kind]}): {r.reason}"
              for r in rows if r.verdict != "pass"]
    sequential = any("look" in (r.notes.get("sequential") or {}) for r in rows)
    return lines + ([POWER_NOTE] if rows else []) + ([SEQUENTIAL_NOTE] if sequential else [])
