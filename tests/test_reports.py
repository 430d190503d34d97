"""JSON, Markdown and HTML reports of a gate run, and the session that writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pytest_qxai.metrics import Metric
from pytest_qxai.options import QxaiConfig
from pytest_qxai.report import build_report, write_reports
from pytest_qxai.report.html import render_html
from pytest_qxai.report.markdown import render_markdown
from pytest_qxai.session import QxaiSession

ACC = Metric("nli", "accuracy", "share correct", "binary", tolerance="abs:0.03")
SIM = Metric("nle", "similarity", "cosine", "continuous", tolerance="abs:0.05")
CHECK_KEYS = {"suite", "metric", "kind", "reference", "quantized", "baseline", "delta", "ci", "p_value", "n",
              "tolerance", "verdict", "reason", "profiles"}


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
    assert report["metadata"]["quant"] == "bnb4" and report["metadata"]["seed"] == 0
    assert (tmp_path / "r.md").read_text().startswith("### ❌ pytest-qxai: FAIL")
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    assert any(line.startswith("qxai report: ") for line in session.terminal_lines())


def test_markdown_lists_failures_first_with_reasons(make_config: Callable[..., QxaiConfig]) -> None:
    session = ran_session(make_config(update_baselines="all"))
    text = render_markdown(build_report(session.results, model="m", quant="bnb4", baseline_name="bnb4"))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| verdict |") and "**FAIL**" in rows[1] and "| nli.accuracy |" in rows[1]
    assert "- **FAIL** nli.accuracy (vs ref): accuracy degraded" in text
    assert "no backward pass through this kernel" in text


def test_html_is_self_contained_with_plots(make_config: Callable[..., QxaiConfig]) -> None:
    pytest.importorskip("matplotlib")
    session = ran_session(make_config())
    page = render_html(build_report(session.results, model="m", quant="bnb4", baseline_name="bnb4"))
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert page.count("data:image/png;base64,") == 3  # one plot per suite (nli, nle) + one profile
    assert "<h3>nle.similarity: per layer</h3>" in page and "<style>" in page


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
    for column in ("suite", "metric", "kind", "reference", "quantized", "delta [CI]", "baseline", "band"):
        assert column in header
    rows = [line for line in lines if re.match(r"(FAIL|WARN|IMPROVED|pass|skipped) +\|", line)]
    assert [row.split("|")[0].strip() for row in rows] == ["FAIL"] * 3 + ["pass", "skipped"]
    assert re.match(r"FAIL +\| nli +\| accuracy +\| vs ref +\| +1\.0000 \| +0\.8000 \| -0\.2000 \[", rows[1])
    assert lines[-1] == "qxai gate: FAIL (3 fail, 0 warn, 0 improved, 1 pass, 1 skipped)"
    assert any("record one with --qxai-update-baselines outside CI" in line for line in lines)
    assert all(line.isascii() for line in lines)  # readable in any CI log encoding


def test_no_checks_no_summary(make_config: Callable[..., QxaiConfig]) -> None:
    assert QxaiSession(make_config()).terminal_lines() == []
