"""The blame sections of the reports: terminal lines, Markdown, and an HTML bar chart per blamed check.

Each takes the JSON form of the blames (``report["blame"]``), so ``qxai`` commands can render stored reports.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

from .text import markdown_text

TERMINAL_GROUPS = 6
"""Restorations listed per check in the terminal: the best recovery per parameter kept first."""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _interval(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{_pct(ci[0])}, {_pct(ci[1])}]"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def headline(blame: dict[str, Any]) -> str:
    """One line: what was blamed, the proposal (or why none), the verification, and the cost."""
    key = blame["check"]
    if blame["status"] == "skipped":
        return f"blame {key}: skipped: {blame['reason']}"
    cost = blame.get("cost", {})
    head = (f"blame {key}: {blame['items']} regressed items, {cost.get('measurements')} restorations measured in "
            f"{cost.get('seconds')} s")
    if blame.get("proposal") is None:
        return f"{head}; {blame['reason']}"
    line = (f"{head}; proposed {blame['proposal']}: recovers {_pct(blame['proposal_share'])}"
            f"{_interval(blame.get('proposal_ci'))} of the regression (target {_pct(blame['target'])})")
    check = blame.get("verification")
    if check:
        extra = check["proposal_bytes"] - check["quantized_bytes"]
        line += (f"; verified: {check['verdict'].upper()}, recovered {_pct(check['recovered_share'])}"
                 f"{_interval(check.get('recovered_ci'))}, memory {_mb(check['proposal_bytes'])} "
                 f"({'+' if extra >= 0 else ''}{_mb(extra)} over {_mb(check['quantized_bytes'])})")
    return line


def _ranked(blame: dict[str, Any]) -> list[dict[str, Any]]:
    """Restorations by recovery per parameter kept, the best first."""
    return sorted(blame.get("groups", []), key=lambda g: -g["share"] / max(g["parameters"], 1))


def blame_lines(blames: Sequence[dict[str, Any]]) -> list[str]:
    """The terminal section: a headline per blamed check and its most efficient restorations."""
    lines: list[str] = []
    for blame in blames:
        lines.append(headline(blame))
        groups = _ranked(blame)[:TERMINAL_GROUPS]
        if groups:
            lines.append("  keep=" + "; ".join(f"{g['keep']} {_pct(g['share'])}{_interval(g['ci'])}" for g in groups))
    return lines


def blame_markdown(report: dict[str, Any]) -> list[str]:
    """The Markdown section (empty without blame): headline per check, then every restoration measured."""
    blames = report.get("blame")
    if not blames:
        return []
    lines = ["", "#### Layer blame", ""]
    for blame in blames:
        lines.append(f"- {markdown_text(headline(blame))}")
        if blame.get("groups"):
            lines += ["", "  | keep= | layers | parameters | recovery [95% CI] |", "  |---|--:|--:|---|"]
            lines += [f"  | `{g['keep']}` | {g['layers']} | {g['parameters']:,} | {_pct(g['share'])}"
                      f"{_interval(g['ci'])} |" for g in blame["groups"]]
            lines.append("")
    return lines


def blame_html(report: dict[str, Any], png: Any) -> list[str]:
    """The HTML section: a headline and a bar chart (recovery share with its interval) per blamed check."""
    blames = report.get("blame")
    if not blames:
        return []
    parts = ["<h2>Layer blame</h2>"]
    for blame in blames:
        parts.append(f"<p>{html.escape(headline(blame))}</p>")
        if blame.get("groups") and png is not None:
            parts.append(png(_chart(blame)))
    return parts


def _chart(blame: dict[str, Any]) -> Any:
    """Horizontal bars: each restoration's recovery share with its interval; dashed: the target; dark: proposed."""
    from matplotlib.figure import Figure

    groups = blame["groups"]
    fig = Figure(figsize=(7, 0.28 * len(groups) + 1.0), layout="constrained")
    ax = fig.subplots()
    rows = range(len(groups))
    shares = [g["share"] for g in groups]
    errors = [[max(g["share"] - g["ci"][0], 0) for g in groups], [max(g["ci"][1] - g["share"], 0) for g in groups]]
    colors = ["#1565c0" if g["keep"] == blame.get("proposal_keep") else "#90a4ae" for g in groups]
    ax.barh(rows, shares, xerr=errors, color=colors, capsize=2)
    ax.axvline(blame["target"], color="#c62828", linestyle="--", linewidth=0.8)
    ax.set_yticks(list(rows), [f"keep={g['keep']}" for g in groups], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of the regression recovered (95% paired bootstrap CI)")
    ax.set_title(f"{blame['check']}: restoring full-precision sublayers", fontsize=9)
    return fig
