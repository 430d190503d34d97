"""The Markdown report, sized for a pull-request comment: the verdict line, then a table, failures first."""

from __future__ import annotations

from typing import Any

from .blame import blame_markdown
from .json_report import results_of
from .text import KIND_LABELS, delta_cell, number, ordered, verdict_label

_ICONS = {"fail": "❌", "warn": "⚠️", "pass": "✅"}


def render_markdown(report: dict[str, Any]) -> str:
    """A Markdown document from a report built by :func:`~pytest_qxai.report.json_report.build_report`."""
    summary = report["summary"]
    verdict = summary["verdict"]
    counts = ", ".join(f"{n} {v}" for v, n in summary["counts"].items())
    lines = [
        f"### {_ICONS.get(verdict, '')} pytest-qxai: {verdict.upper()}",
        "",
        f"Model `{report['model']}`, quantization `{report['quant']}`, baseline `{report['baseline_name']}`: "
        f"{counts}.",
        "",
    ]
    results = ordered(results_of(report))
    if results:
        lines += ["| verdict | check | kind | reference | quantized | Δ [CI] | baseline | p | n | band |",
                  "|---|---|---|--:|--:|---|--:|--:|--:|---|"]
        for r in results:
            cells = [f"**{verdict_label(r.verdict)}**" if r.verdict != "pass" else "pass", f"`{r.key}`",
                     KIND_LABELS[r.kind], number(r.reference), number(r.quantized), delta_cell(r),
                     number(r.baseline), "-" if r.p_value is None else f"{r.p_value:.3g}", str(r.n),
                     f"`{r.tolerance}`" if r.tolerance else "-"]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
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
