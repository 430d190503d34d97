"""The HTML report: one self-contained page (inline CSS, plots as base64 PNG) to attach to a release.

It opens with a forest plot: every decided check's interval in units of its band, coloured by verdict (the
usual picture of non-inferiority results). Per suite, a dot-and-interval plot shows each metric's reference
and quantized values next to the paired difference and the band edges; checks that carry per-layer profiles
get line plots. matplotlib (the ``ml`` extra) is imported only here, without pyplot, so the user's backend is
untouched; without it the page has the tables only.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ..gate.check import CheckResult
from ..gate.tolerance import parse_tolerance
from .blame import blame_html
from .json_report import results_of
from .text import COLUMNS, KIND_LABELS, NUMERIC, POWER_NOTE, cells, ordered

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLORS = {"fail": "#c62828", "inconclusive": "#ef6c00", "improved": "#2e7d32", "pass": "#37474f",
           "skipped": "#9e9e9e", "error": "#6a1b9a"}
_FOREST_REACH = 6.0
"""The forest plot's x axis ends at this many bands; longer intervals end in an arrow."""
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#212121}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:bold}
.errors{border-left:4px solid #6a1b9a;padding:0.2em 1em;background:#f3e5f5}
pre{background:#f5f5f5;padding:1em;overflow:auto;font-size:12px}
img{max-width:100%}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a report built by :func:`~pytest_qxai.report.json_report.build_report`."""
    results = ordered(results_of(report))
    summary = report["summary"]
    counts = ", ".join(f"{n} {v}" for v, n in summary["counts"].items())
    verdict = summary["verdict"]
    method = summary.get("multiple_testing")
    parts = [
        f"<h1 style='color:{_COLORS.get(verdict, '#212121')}'>pytest-qxai: {_e(str(verdict).upper())}</h1>",
        f"<p>Model <code>{_e(report['model'])}</code>, quantization <code>{_e(report['quant'])}</code>, "
        f"baseline <code>{_e(report['baseline_name'])}</code>: {_e(counts)}"
        + (f"; multiple testing: {_e(method)}" if method else "") + ".</p>",
    ]
    if summary.get("errors"):
        parts.append("<div class='errors'><p><b>Did not run</b> (the gate cannot pass a run that did not check):"
                     "</p><ul>" + "".join(f"<li>{_e(e)}</li>" for e in summary["errors"]) + "</ul></div>")
    try:
        from matplotlib.figure import Figure  # noqa: F401 - probe only
    except ImportError:
        parts.append("<p>Plots need matplotlib: <code>pip install pytest-qxai[ml]</code>.</p>")
        plots: list[str] = blame_html(report, None)
    else:
        from matplotlib import rc_context

        with rc_context({"text.parse_math": False}):  # names are text: "a$x^{$b" is no formula to typeset
            parts.append(_forest_plot(results))
            plots = _suite_plots(results) + _profile_plots(results) + blame_html(report, _png)
    parts += [_table(results), f"<p><i>{_e(POWER_NOTE)}.</i></p>", *plots]
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("<h2>Run metadata</h2><pre>" + _e(json.dumps(report.get("metadata", {}), indent=2,
                                                               sort_keys=True)) + "</pre>")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>pytest-qxai: {_e(verdict)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _table(results: list[CheckResult]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in (*COLUMNS, "reason"))
    rows = []
    for r in results:
        row = cells(r)
        color = _COLORS.get(r.verdict, "#212121")
        tds = [f"<td class='verdict' style='color:{color}'>{_e(row['verdict'])}</td>"]
        tds += [f"<td class='num'>{_e(row[c])}</td>" if c in NUMERIC else
                f"<td><code>{_e(row[c])}</code></td>" if c == "band" else f"<td>{_e(row[c])}</td>"
                for c in COLUMNS[1:]]
        rows.append("<tr>" + "".join(tds) + f"<td>{_e(r.reason)}</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def forest_rows(results: list[CheckResult]) -> list[tuple[CheckResult, float, float, float]]:
    """``(check, degradation, low, high)`` in units of the check's band, for every check with an interval.

    Positive is worse (the metric's bad direction), so 1 is the band's edge for every check; a check whose
    band has zero or infinite width has no such unit and is left out (the table shows it).
    """
    rows = []
    for r in sorted(results, key=lambda r: (r.key, list(KIND_LABELS).index(r.kind))):
        if r.verdict == "skipped" or r.delta is None or r.ci is None or r.reference is None:
            continue
        edge = parse_tolerance(r.tolerance).threshold(r.reference)
        if not 0 < edge < math.inf:
            continue
        sign = -1.0 if r.direction == "higher" else 1.0
        low, high = sorted((sign * r.ci[0] / edge, sign * r.ci[1] / edge))
        rows.append((r, sign * r.delta / edge, low, high))
    return rows


def _forest_plot(results: list[CheckResult]) -> str:
    """Every check's interval against its band, one row each, coloured by verdict (:func:`forest_rows`)."""
    from matplotlib.figure import Figure

    rows = forest_rows(results)
    if not rows:
        return "<p>No check has an interval to plot.</p>"
    finite = [abs(v) for _, d, lo, hi in rows for v in (d, lo, hi) if math.isfinite(v)]
    reach = min(max([1.5, *finite]), _FOREST_REACH) * 1.08
    fig = Figure(figsize=(9, 0.24 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    for y, (r, degradation, low, high) in enumerate(rows):
        color = _COLORS[r.verdict]
        ax.plot([max(low, -reach), min(high, reach)], [y, y], color=color, linewidth=2, solid_capstyle="butt")
        if abs(degradation) <= reach:
            ax.plot([degradation], [y], "o", color=color, markersize=4)
        for end, marker in ((-reach, "<"), (reach, ">")):  # an interval running off the plot ends in an arrow
            if (low < end) if end < 0 else (high > end):
                ax.plot([end], [y], marker, color=color, markersize=5)
    ax.axvline(0, color="#9e9e9e", linewidth=0.8)
    ax.axvline(1, color="#c62828", linestyle="--", linewidth=1)
    ax.axvline(-1, color="#2e7d32", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{r.key} ({KIND_LABELS[r.kind]})" for r, *_ in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(-reach, reach)
    ax.set_xlabel("degradation in units of the band (0: no change; dashed 1: the band, fail beyond it; "
                  "dotted -1: improved)", fontsize=8)
    seen = sorted({r.verdict for r, *_ in rows}, key=list(_COLORS).index)
    for verdict in seen:
        ax.plot([], [], color=_COLORS[verdict], linewidth=2, label=verdict)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return f"<h2>Every check against its band</h2>{_png(fig)}"


def _suite_plots(results: list[CheckResult]) -> list[str]:
    """Per suite: reference and quantized values with the CI (left), the difference and band (right)."""
    from matplotlib.figure import Figure

    by_suite: dict[str, list[CheckResult]] = defaultdict(list)
    for r in results:
        if r.kind == "vs_reference" and r.verdict != "skipped" and r.delta is not None:
            by_suite[r.suite].append(r)
    parts = []
    for suite in sorted(by_suite):
        checks = sorted(by_suite[suite], key=lambda r: r.metric)
        fig = Figure(figsize=(9, 0.55 * len(checks) + 0.9), layout="constrained")
        axes = fig.subplots(len(checks), 2, squeeze=False)
        for row, r in enumerate(checks):
            assert r.reference is not None and r.quantized is not None and r.delta is not None
            low, high = r.ci if r.ci is not None else (r.delta, r.delta)
            color = _COLORS[r.verdict]
            left, right = axes[row]
            left.plot([r.reference], [0], "o", color="#1565c0", label="reference")
            left.errorbar([r.quantized], [0], xerr=[[r.delta - low], [high - r.delta]], fmt="s", color=color,
                          capsize=3, label="quantized (CI)")
            right.errorbar([r.delta], [0], xerr=[[r.delta - low], [high - r.delta]], fmt="D", color=color, capsize=3)
            right.axvline(0, color="#9e9e9e", linewidth=0.8)
            band = parse_tolerance(r.tolerance)
            edge = band.threshold(r.reference)
            for x in ((-edge, edge) if band.two_sided else (-edge,) if r.direction == "higher" else (edge,)):
                right.axvline(x, color="#c62828", linestyle="--", linewidth=0.8)
            left.set_ylabel(r.metric, rotation=0, ha="right", va="center")
            for ax in (left, right):
                ax.set_yticks([])
        axes[0][0].set_title("reference vs quantized", fontsize=9)
        axes[0][1].set_title("quantized − reference (CI; dashed: band)", fontsize=9)
        axes[0][0].legend(fontsize=7, loc="best")
        parts.append(f"<h2>{_e(suite)}</h2>{_png(fig)}")
    return parts


def _profile_plots(results: list[CheckResult]) -> list[str]:
    """Per-layer line plots for checks that carry ``profiles`` ({title: {series: values}})."""
    from matplotlib.figure import Figure

    parts = []
    for r in results:
        if r.kind != "vs_reference" or not r.profiles:
            continue
        for title, series in sorted(r.profiles.items()):
            fig = Figure(figsize=(7, 3), layout="constrained")
            ax = fig.subplots()
            for label, values in sorted(series.items()):
                ax.plot(range(len(values)), [float("nan") if v is None else v for v in values], marker=".",
                        label=label)
            ax.set_xlabel("layer")
            ax.set_title(f"{r.key}: {title}", fontsize=9)
            ax.legend(fontsize=7)
            parts.append(f"<h3>{_e(r.key)}: {_e(title)}</h3>{_png(fig)}")
    if parts:
        parts.insert(0, "<h2>Per-layer profiles</h2>")
    return parts


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _e(text: object) -> str:
    """Any value as HTML text: every field of a report may come from a file someone else wrote."""
    return html.escape(str(text))
