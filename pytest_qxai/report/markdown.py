"""The Markdown report, sized for a pull-request comment: the verdict line, then a table, failures first."""

from __future__ import annotations

from typing import Any

from .blame import blame_markdown
from .json_report import results_of
from .text import KIND_LABELS, POWER_NOTE, SEQUENTIAL_NOTE, cells, markdown_text, ordered, verdict_label

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
        f"### {_ICONS.get(verdict, '')} pytest-qxai: {markdown_text(str(verdict).upper())}",
        "",
        f"Model {markdown_text(report['model'])}, quantization {markdown_text(report['quant'])}, baseline "
        f"{markdown_text(report['baseline_name'])}: {markdown_text(counts)}"
        + (f"; multiple testing: {markdown_text(method)}" if method else "") + ".",
        "",
    ]
    if summary.get("errors"):
        lines += ["**Did not run** (the gate cannot pass a run that did not check):", "",
                  *(f"- {markdown_text(error)}" for error in summary["errors"]), ""]
    results = ordered(results_of(report))
    if results:
        lines += ["| " + " | ".join(_COLUMNS) + " |", "|---|---|---|--:|--:|---|--:|--:|--:|--:|---|--:|--:|"]
        for r in results:
            row = cells(r)
            values = [row["verdict"], r.key, row["kind"], row["reference"], row["quantized"], row["delta [CI]"],
                      row["baseline"], row["p"], row["p adj"], row["n"], r.tolerance or "-", row["mdd"], row["n needed"]]
            escaped = [markdown_text(c) for c in values]
            escaped[0] = f"**{escaped[0]}**" if r.verdict != "pass" else escaped[0]
            lines.append("| " + " | ".join(escaped) + " |")
        lines += ["", f"_{POWER_NOTE}._"]
        if any("look" in (r.notes.get("sequential") or {}) for r in results):
            lines += ["", f"_{markdown_text(SEQUENTIAL_NOTE)}._"]
        reasons = [f"- **{markdown_text(verdict_label(r.verdict))}** {markdown_text(r.key)} "
                   f"({markdown_text(KIND_LABELS.get(r.kind, r.kind))}): {markdown_text(r.reason)}"
                   for r in results if r.verdict != "pass"]
        if reasons:
            lines += ["", "<details open><summary>Why</summary>", "", *reasons, "", "</details>"]
    if report.get("notes"):
        lines += ["", *(f"- {markdown_text(note)}" for note in report["notes"])]
    lines += blame_markdown(report)
    return "\n".join(lines) + "\n"

