"""The Markdown report, sized for a pull-request comment: the verdict line, then a table, failures first."""

from __future__ import annotations

import re
from typing import Any

from .json_report import results_of
from .text import KIND_LABELS, delta_cell, number, ordered, verdict_label

_ICONS = {"fail": "❌", "warn": "⚠️", "pass": "✅"}


def render_markdown(report: dict[str, Any]) -> str:
    """A Markdown document from a report built by :func:`~pytest_qxai.report.json_report.build_report`."""
    summary = report["summary"]
    verdict = summary["verdict"]
    counts = ", ".join(f"{n} {v}" for v, n in summary["counts"].items())
    lines = [
        f"### {_ICONS.get(verdict, '')} pytest-qxai: {_cell(str(verdict).upper())}",
        "",
        f"Model {_cell(report['model'])}, quantization {_cell(report['quant'])}, baseline "
        f"{_cell(report['baseline_name'])}: {_cell(counts)}.",
        "",
    ]
    results = ordered(results_of(report))
    if results:
        lines += ["| verdict | check | kind | reference | quantized | Δ [CI] | baseline | p | n | band |",
                  "|---|---|---|--:|--:|---|--:|--:|--:|---|"]
        for r in results:
            cells = [_cell(c) for c in (verdict_label(r.verdict), r.key, KIND_LABELS.get(r.kind, r.kind),
                                        number(r.reference), number(r.quantized), delta_cell(r), number(r.baseline),
                                        "-" if r.p_value is None else f"{r.p_value:.3g}", r.n, r.tolerance or "-")]
            cells[0] = f"**{cells[0]}**" if r.verdict != "pass" else cells[0]
            lines.append("| " + " | ".join(cells) + " |")
        reasons = [f"- **{_cell(verdict_label(r.verdict))}** {_cell(r.key)} "
                   f"({_cell(KIND_LABELS.get(r.kind, r.kind))}): {_cell(r.reason)}"
                   for r in results if r.verdict != "pass"]
        if reasons:
            lines += ["", "<details open><summary>Why</summary>", "", *reasons, "", "</details>"]
    if report.get("notes"):
        lines += ["", *(f"- {_cell(note)}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


_MARKUP = re.compile(r"([\\`*_\[\]|~<>&])")
"""What can start markup inside a line (every escaped field sits inside one): emphasis, code, links, HTML,
table cells, strikethrough."""


def _cell(text: object) -> str:
    """Any value as literal Markdown text on one line: Markdown and HTML characters are backslash-escaped."""
    return _MARKUP.sub(r"\\\1", " ".join(str(text).split()))
