"""The Markdown report, sized for a pull-request comment: the verdict line, then a table, failures first."""

from __future__ import annotations

from typing import Any

from .blame import blame_markdown
from .json_report import results_of
from .text import KIND_LABELS, POWER_NOTE, cells, ordered, verdict_label

_ICONS = {"fail": "❌", "inconclusive": "⚠️", "pass": "✅", "error": "🛑"}
_COLUMNS = ("verdict", "check", "kind", "reference", "quantized", "Δ [CI]", "baseline", "p", "p adj", "n", "band",
            "mdd", "n needed")


def render_markdown(report: dict[str, Any]) -> str:
    """A Markdown document from a report built by :func:`~pytest_qxai.report.json_report.build_report`."""
    summary = report["summary"]
    verdict = summary["verdict"]
    counts = ", ".join(f"{n} {v}" for v, n in summary["counts"].items())
    method = summary.get("multiple_testing")
    lines = [
        f"### {_ICONS.get(verdict, '')} pytest-qxai: {verdict.upper()}",
        "",
        f"Model `{report['model']}`, quantization `{report['quant']}`, baseline `{report['baseline_name']}`: "
        f"{counts}" + (f"; multiple testing: {_cell(method)}" if method else "") + ".",
        "",
    ]
    if summary.get("errors"):
        lines += ["**Did not run** (the gate cannot pass a run that did not check):", "",
                  *(f"- {_cell(error)}" for error in summary["errors"]), ""]
    results = ordered(results_of(report))
    if results:
        lines += ["| " + " | ".join(_COLUMNS) + " |", "|---|---|---|--:|--:|---|--:|--:|--:|--:|---|--:|--:|"]
        for r in results:
            row = cells(r)
            values = [f"**{row['verdict']}**" if r.verdict != "pass" else "pass", f"`{r.key}`", row["kind"],
                      row["reference"], row["quantized"], row["delta [CI]"], row["baseline"], row["p"],
                      row["p adj"], row["n"], f"`{r.tolerance}`" if r.tolerance else "-", row["mdd"],
                      row["n needed"]]
            lines.append("| " + " | ".join(_cell(c) for c in values) + " |")
        lines += ["", f"_{POWER_NOTE}._"]
        reasons = [f"- **{verdict_label(r.verdict)}** `{r.key}` ({KIND_LABELS[r.kind]}): {_cell(r.reason)}"
                   for r in results if r.verdict != "pass"]
        if reasons:
            lines += ["", "<details open><summary>Why</summary>", "", *reasons, "", "</details>"]
    if report.get("notes"):
        lines += ["", *(f"- {_cell(note)}" for note in report["notes"])]
    lines += blame_markdown(report)
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
