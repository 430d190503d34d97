"""JSON, Markdown and HTML reports of a gate run, and the session that writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from pytest_qxai.gate.check import NOTHING_CHECKED, VERDICTS, CheckResult, summarize
from pytest_qxai.metrics import Metric
from pytest_qxai.options import QxaiConfig
from pytest_qxai.report import build_report, write_reports
from pytest_qxai.report.html import forest_rows, render_html
from pytest_qxai.report.markdown import render_markdown
from pytest_qxai.session import QxaiSession

ACC = Metric("nli", "accuracy", "share correct", "binary", tolerance="abs:0.03")
SIM = Metric("nle", "similarity", "cosine", "continuous", tolerance="abs:0.05")


class MarkdownSnapshot(SingleFileSnapshotExtension):
    """A report's Markdown as a golden ``.md`` file next to the tests (``__snapshots__/``), readable in a diff."""

    _write_mode = WriteMode.TEXT
    file_extension = "md"


CHECK_KEYS = {"suite", "metric", "kind", "reference", "quantized", "baseline", "delta", "ci", "p_value", "n",
              "tolerance", "verdict", "reason", "profiles", "p_adjusted", "mdd", "n_needed", "lost"}


def ran_session(config: QxaiConfig) -> QxaiSession:
    """A session with a failing binary check, a passing continuous one with profiles, and a skip."""
    session = QxaiSession(config, n_resamples=99)
    ref = np.ones(100)
    quant = ref.copy()
    quant[:20] = 0
    session.check(ACC, ref, quant)
    sim = np.linspace(0.2, 0.8, 50)
    session.check(SIM, sim, sim - 0.01, profiles={"per layer": {"reference": [0.1, 0.5, 0.9],
                                                                "quantized": [0.1, 0.4, None]}})
    session.skip(Metric("nle", "cc_shap", "", "continuous"), "no backward pass through this kernel")
    return session


def test_session_writes_all_three_reports(make_config: Callable[..., QxaiConfig], tmp_path: Path) -> None:
    config = make_config(report_json=tmp_path / "out" / "r.json", report_md=tmp_path / "r.md",
                         report_html=tmp_path / "r.html", update_baselines="all")
    session = ran_session(config)
    session.finish()
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert {"model", "quant", "baseline_name", "metadata", "checks", "summary"} <= set(report)
    assert report["model"] == "default" and report["quant"] == "bnb4" and report["baseline_name"] == "bnb4"
    assert all(CHECK_KEYS <= set(check) for check in report["checks"])
    assert report["checks"][0]["verdict"] == "fail"  # failures first
    assert report["summary"]["verdict"] == "fail" and report["summary"]["counts"]["fail"] == 1
    assert report["summary"]["errors"] == []
    assert report["metadata"]["quant"] == "bnb4" and report["metadata"]["seed"] == 0
    assert (tmp_path / "r.md").read_text().startswith("### ❌ pytest-qxai: FAIL")
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    assert any(line.startswith("qxai report: ") for line in session.terminal_lines())


def test_markdown_lists_failures_first_with_reasons(make_config: Callable[..., QxaiConfig],
                                                    snapshot: SnapshotAssertion) -> None:
    """The whole pull-request comment: failures first with their reasons, the columns, the mdd note, skips.

    A change to it is a change users see: review the diff, then accept it with ``pytest --snapshot-update``.
    """
    session = ran_session(make_config(update_baselines="all", baseline_dir=Path("baselines")))  # no tmp path in it
    report = build_report(session.results, model="m", quant="bnb4", baseline_name="bnb4")
    assert render_markdown(report) == snapshot(extension_class=MarkdownSnapshot)


def test_json_report_document(make_config: Callable[..., QxaiConfig], snapshot: SnapshotAssertion) -> None:
    """The machine-readable report, field by field (``schema`` names its version)."""
    session = ran_session(make_config(update_baselines="all", baseline_dir=Path("baselines")))
    report = build_report(session.results, model="m", quant="bnb4", baseline_name="bnb4")
    assert report == snapshot(extension_class=JSONSnapshotExtension)


def test_html_is_self_contained_with_plots(make_config: Callable[..., QxaiConfig]) -> None:
    pytest.importorskip("matplotlib")
    session = ran_session(make_config())
    page = render_html(build_report(session.results, model="m", quant="bnb4", baseline_name="bnb4"))
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert page.count("data:image/png;base64,") == 4  # the forest plot, one plot per suite (nli, nle), one profile
    assert "<h3>nle.similarity: per layer</h3>" in page and "<style>" in page
    assert page.index("<h2>Every check against its band</h2>") < page.index("<table>")  # the page opens with it
    assert "<th>mdd</th><th>n needed</th>" in page


def test_reports_are_written_atomically_and_only_when_asked(tmp_path: Path, make_config: Callable[..., QxaiConfig]
                                                            ) -> None:
    session = ran_session(make_config())
    report = build_report(session.results, model="m", quant="q", baseline_name="b")
    assert write_reports(report) == []
    written = write_reports(report, json_path=tmp_path / "a" / "r.json")
    assert written == [tmp_path / "a" / "r.json"] and [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_terminal_lines_table_and_overall_verdict(make_config: Callable[..., QxaiConfig]) -> None:
    lines = ran_session(make_config(ci=True)).terminal_lines()
    assert lines[0].startswith("model default, quant bnb4, baseline ")
    header = next(line for line in lines if line.startswith("verdict"))
    for column in ("suite", "metric", "kind", "reference", "quantized", "delta [CI]", "baseline", "p adj", "band",
                   "mdd", "n needed"):
        assert column in header
    rows = [line for line in lines if re.match(r"(FAIL|INCONCLUSIVE|IMPROVED|pass|skipped) +\|", line)]
    assert [row.split("|")[0].strip() for row in rows] == ["FAIL"] * 3 + ["pass", "skipped"]
    assert re.match(r"FAIL +\| nli +\| accuracy +\| vs ref +\| +1\.0000 \| +0\.8000 \| -0\.2000 \[", rows[1])
    assert lines[-2].startswith("mdd: the smallest degradation this run detects with 80 % power")
    assert lines[-1] == "qxai gate: FAIL (3 fail, 0 inconclusive, 0 improved, 1 pass, 1 skipped)"
    assert any("record one with --qxai-update-baselines outside CI" in line for line in lines)
    assert all(line.isascii() for line in lines)  # readable in any CI log encoding


def test_no_checks_no_summary(make_config: Callable[..., QxaiConfig]) -> None:
    assert QxaiSession(make_config()).terminal_lines() == []


def failed_setup(nodeid: str, suite: str, message: str) -> pytest.TestReport:
    """The report of a gate test whose fixture raised, as the plugin tags it (suite, not failed by the gate)."""
    report = pytest.TestReport(nodeid, (nodeid, 0, nodeid), {}, "failed", message, "setup")
    report.qxai_suite, report.qxai_gate_failed = suite, False  # type: ignore[attr-defined]
    return report


@given(st.lists(st.sampled_from(VERDICTS), max_size=8), st.lists(st.sampled_from(["a", "b"]), max_size=3))
def test_the_run_verdict_is_error_then_fail_then_inconclusive_then_pass(verdicts: list[str], errors: list[str]
                                                                        ) -> None:
    checks = [CheckResult("s", f"m{i}", "vs_reference", v, "") for i, v in enumerate(verdicts)]  # type: ignore[arg-type]
    summary = summarize(checks, errors)
    decided = [v for v in verdicts if v != "skipped"]
    expected = ("error" if errors or not decided else "fail" if "fail" in verdicts else
                "inconclusive" if "inconclusive" in verdicts else "pass")
    assert summary["verdict"] == expected and summary["checks"] == len(verdicts)
    assert summary["errors"] == list(dict.fromkeys(errors)) + ([] if decided else [NOTHING_CHECKED])


def test_an_errored_suite_makes_every_report_say_error_and_name_it(
    make_config: Callable[..., QxaiConfig], tmp_path: Path
) -> None:
    """A suite whose fixture raised did not check: ERROR in JSON, Markdown, HTML and the terminal, exit non-zero."""
    config = make_config(report_json=tmp_path / "r.json", report_md=tmp_path / "r.md", report_html=tmp_path / "r.html",
                         update_baselines="all")
    session = ran_session(config)
    nodeid = "suites/test_knowledge.py::test_knowledge[accuracy]"
    for _ in range(2):  # every test of the suite errors in setup; the suite is named once
        session.observe(failed_setup(nodeid, "knowledge", "RuntimeError: <inference> | tensor"))
    session.finish()
    error = (f"suite knowledge did not run to the end: {nodeid} errored in setup: RuntimeError: <inference> | tensor")
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["verdict"] == "error" and summary["errors"] == [error] and summary["counts"]["fail"] == 1
    markdown = (tmp_path / "r.md").read_text()
    assert markdown.startswith("### 🛑 pytest-qxai: ERROR")
    assert "RuntimeError: \\<inference\\> \\| tensor" in markdown  # a table-safe cell, markup escaped
    page = (tmp_path / "r.html").read_text()
    assert "pytest-qxai: ERROR</h1>" in page and "RuntimeError: &lt;inference&gt; | tensor" in page
    lines = session.terminal_lines()
    assert lines[-2:] == [f"ERROR {error}",
                          "qxai gate: ERROR (1 fail, 0 inconclusive, 0 improved, 1 pass, 3 skipped; 1 error(s))"]
    assert session.exit_failed()


@pytest.mark.parametrize("skip_all", [False, True], ids=["no-check", "all-skipped"])
def test_a_run_that_checked_nothing_is_an_error(make_config: Callable[..., QxaiConfig], tmp_path: Path,
                                                 skip_all: bool) -> None:
    session = QxaiSession(make_config(report_json=tmp_path / "r.json"))
    if skip_all:
        session.skip(SIM, "not applicable: reference at chance")
    session.finish()
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["verdict"] == "error" and summary["errors"] == [NOTHING_CHECKED]
    assert session.terminal_lines()[-1].startswith("qxai gate: ERROR (") and session.exit_failed()


@pytest.mark.parametrize("strict", [False, True])
def test_inconclusive_exits_zero_unless_strict(make_config: Callable[..., QxaiConfig], strict: bool) -> None:
    session = QxaiSession(make_config(strict=strict))
    session.results += [CheckResult("nle", "similarity", "vs_reference", "inconclusive", "", mdd=0.2, n_needed=400),
                        CheckResult("nli", "accuracy", "vs_reference", "pass", "")]
    assert session.summary()["verdict"] == "inconclusive" and session.exit_failed() is strict
    assert session.terminal_lines()[-1] == (
        "qxai gate: INCONCLUSIVE (0 fail, 1 inconclusive, 0 improved, 1 pass, 0 skipped)"
        + ("; --qxai-strict: exit 1" if strict else "; exit 0 (--qxai-strict would make it 1)"))
    row = next(line for line in session.terminal_lines() if line.startswith("INCONCLUSIVE "))
    assert re.search(r"\| +0\.2000 \| +400$", row)  # mdd and items needed, the table's last columns


def test_forest_plot_rows_are_in_band_units_with_worse_to_the_right() -> None:
    """1 is every check's band edge; a drop of a higher-is-better metric and a rise of a lower-is-better one are
    both positive; a band of zero width has no unit and is left to the table."""
    higher = CheckResult("s", "acc", "vs_reference", "fail", "", reference=0.8, delta=-0.1, ci=(-0.15, -0.05),
                         tolerance="abs:0.05")
    lower = CheckResult("s", "ppl", "vs_reference", "pass", "", reference=10.0, delta=0.1, ci=(-0.2, 0.4),
                        tolerance="rel:0.1", direction="lower")
    zero = CheckResult("s", "exact", "vs_reference", "pass", "", reference=1.0, delta=0.0, ci=(0.0, 0.0),
                       tolerance="abs:0")
    skipped = CheckResult("s", "gone", "vs_reference", "skipped", "")
    rows = {r.metric: (d, lo, hi) for r, d, lo, hi in forest_rows([higher, lower, zero, skipped])}
    assert set(rows) == {"acc", "ppl"}
    assert rows["acc"] == pytest.approx((2.0, 1.0, 3.0)) and rows["ppl"] == pytest.approx((0.1, -0.2, 0.4))
