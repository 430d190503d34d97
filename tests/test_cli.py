"""The ``qxai`` command: compare runs, show baselines, merge shard reports; exit 0/1/2."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pytest_qxai.cli import main
from pytest_qxai.gate.check import NOTHING_CHECKED, CheckResult
from pytest_qxai.metrics import Metric
from pytest_qxai.options import QxaiConfig
from pytest_qxai.report import build_report, write_reports
from pytest_qxai.session import QxaiSession

SIM = Metric("nle", "similarity", "cosine", "continuous", tolerance="abs:0.02")
ACC = Metric("nli", "accuracy", "share correct", "binary", tolerance="abs:0.03")


def write_run(path: Path, config: QxaiConfig, sim_shift: float, metrics: tuple[Metric, ...] = (SIM, ACC),
              errors: tuple[str, ...] = ()) -> Path:
    """Run the checks of a session with the given shift of the quantized similarity and write its JSON report
    (``errors``: what did not run in it)."""
    session = QxaiSession(config, n_resamples=99)
    ref = np.linspace(0.2, 0.8, 300)  # enough items that identical runs show no change within the bands
    for metric in metrics:
        if metric is SIM:
            session.check(SIM, ref, ref + sim_shift + 0.001 * np.sin(np.arange(300)))
        else:
            session.check(metric, np.ones(300), np.r_[np.zeros(1), np.ones(299)])
    report = build_report(session.results, model="m", quant="bnb4", baseline_name="bnb4", metadata={"seed": 0},
                          errors=errors)
    write_reports(report, json_path=path)
    return path


@pytest.fixture
def runs(tmp_path: Path, make_config: Callable[..., QxaiConfig]) -> dict[str, Path]:
    config = make_config(update_baselines="all")
    return {
        "old": write_run(tmp_path / "old.json", config, 0.015),
        "same": write_run(tmp_path / "same.json", config, 0.015),
        "worse": write_run(tmp_path / "worse.json", config, -0.015),
    }


def test_compare_identical_runs_passes(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(runs["old"]), str(runs["same"]), "--resamples", "99"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("qxai gate: PASS")


def test_compare_detects_a_regression(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(runs["old"]), str(runs["worse"]), "--resamples", "99"]) == 1
    out = capsys.readouterr().out
    assert "FAIL nle.similarity (vs base)" in out


def test_compare_report_against_a_baseline_file(tmp_path: Path, make_config: Callable[..., QxaiConfig],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(update_baselines="all")
    session = QxaiSession(config, n_resamples=99)
    ref = np.linspace(0.2, 0.8, 60)
    session.check(SIM, ref, ref + 0.015)
    session.finish()
    worse = write_run(tmp_path / "worse.json", config, -0.015, (SIM,))
    baseline = tmp_path / "baselines" / "default" / "bnb4.json"
    assert main(["compare", str(baseline), str(worse), "--resamples", "99"]) == 1
    assert main(["show", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert f"{baseline}: model default, 1 check(s)" in out and "similarity" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{", "not valid JSON"),
     ('{"schema": "x"}', "neither a pytest-qxai report nor a baseline"),
     ('{"schema": "pytest-qxai/baseline/1", "model": "m"}', "malformed")],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, runs: dict[str, Path], content: str | None, message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main(["compare", str(runs["old"]), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(bad) in err


@pytest.mark.parametrize("damage", ["one item id too few", "a value that is no number", "no model"])
def test_a_report_of_the_right_schema_with_wrong_contents_exits_2_with_one_line(
    tmp_path: Path, runs: dict[str, Path], damage: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """These ended in a traceback and exit 1, which reads as a regression."""
    report = json.loads(runs["old"].read_text())
    check = report["checks"][0]
    if damage == "one item id too few":
        check["item_ids"] = check["item_ids"][1:]
    elif damage == "a value that is no number":
        check["quantized_items"][0] = "abc"
    else:
        del report["model"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    assert main(["merge", str(tmp_path / "m.json"), str(bad)] if damage == "no model"
                else ["compare", str(runs["old"]), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is malformed" in err


def test_cache_prune_refuses_a_negative_age(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--older-than -1`` emptied the cache."""
    assert main(["cache", "prune", "--dir", str(tmp_path), "--older-than", "-1"]) == 2
    assert "give a number of days, 0 or more" in capsys.readouterr().err


def test_merge_keeps_a_change_a_shard_accepted(tmp_path: Path, make_config: Callable[..., QxaiConfig],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A shard run with --qxai-update-baselines=all reports a changed baseline inconclusive (accepted); merging
    decided it again and said FAIL, exit 1."""
    config = make_config(update_baselines="all")
    ref = np.linspace(0.2, 0.7, 60)
    first = QxaiSession(config, n_resamples=99)
    first.check(SIM, ref, ref + 0.2)
    first.finish()
    shard = QxaiSession(dataclasses.replace(config, report_json=tmp_path / "shard.json"), n_resamples=99)
    shard.check(SIM, ref, ref + 0.001 * np.sin(np.arange(60)))
    shard.finish()
    accepted = [r for r in shard.results if r.kind == "vs_baseline"]
    assert [r.verdict for r in accepted] == ["inconclusive"] and "accepted" in accepted[0].reason
    assert main(["merge", str(tmp_path / "m.json"), str(tmp_path / "shard.json")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("qxai gate: INCONCLUSIVE")


def test_merge_shards_into_one_verdict(tmp_path: Path, make_config: Callable[..., QxaiConfig],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(update_baselines="all")
    first = write_run(tmp_path / "s1.json", config, 0.0, (SIM,))
    second = write_run(tmp_path / "s2.json", config, 0.0, (ACC,))
    out = tmp_path / "merged.json"
    assert main(["merge", str(out), str(first), str(second), "--md", str(tmp_path / "m.md")]) == 0
    merged = json.loads(out.read_text())
    assert sorted(c["metric"] for c in merged["checks"]) == ["accuracy", "accuracy", "similarity", "similarity"]
    assert merged["summary"]["checks"] == 4 and (tmp_path / "m.md").exists()
    assert main(["merge", str(out), str(first), str(first)]) == 0  # identical duplicates are fine
    capsys.readouterr()


def test_merge_applies_holm_over_all_shards(tmp_path: Path, make_config: Callable[..., QxaiConfig],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Each shard corrects only for its own checks; the merged run corrects over every shard's fail decisions,
    so two shard failures at p = 0.03 and 0.04 are not confirmed by Holm over both (0.06, 0.06)."""
    config = make_config(update_baselines="all")
    shards = [write_run(tmp_path / f"s{i}.json", config, -0.2, (SIM,)) for i in range(2)]
    for shard, p, suite in zip(shards, (0.03, 0.04), ("nle", "ecqa")):
        report = json.loads(shard.read_text())
        report["checks"] = [c for c in report["checks"] if c["kind"] == "vs_reference"]
        report["checks"][0].update(p_value=p, p_adjusted=p, verdict="fail", suite=suite)
        report["summary"]["multiple_testing"] = "holm"
        shard.write_text(json.dumps(report))
    out = tmp_path / "merged.json"
    assert main(["merge", str(out), *map(str, shards)]) == 0
    merged = json.loads(out.read_text())
    assert {c["suite"]: round(c["p_adjusted"], 6) for c in merged["checks"]} == {"nle": 0.06, "ecqa": 0.06}
    assert {c["verdict"] for c in merged["checks"]} == {"inconclusive"}
    assert "does not confirm these shard failures" in " ".join(merged["notes"])
    capsys.readouterr()


def test_merge_refuses_conflicts_and_mixed_runs(tmp_path: Path, make_config: Callable[..., QxaiConfig],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(update_baselines="all")
    first = write_run(tmp_path / "s1.json", config, 0.0, (SIM,))
    other = write_run(tmp_path / "s2.json", config, -0.01, (SIM,))
    assert main(["merge", str(tmp_path / "o.json"), str(first), str(other)]) == 2
    assert "conflicts with" in capsys.readouterr().err
    data = json.loads(other.read_text())
    data["model"] = "another"
    other.write_text(json.dumps(data))
    assert main(["merge", str(tmp_path / "o.json"), str(first), str(other)]) == 2
    assert "model 'another' differs" in capsys.readouterr().err


def test_merge_fails_when_a_shard_failed(tmp_path: Path, make_config: Callable[..., QxaiConfig],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(update_baselines="all")
    failing = write_run(tmp_path / "s1.json", config, -0.2, (SIM,))
    assert main(["merge", str(tmp_path / "o.json"), str(failing)]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("qxai gate: FAIL")


def test_merge_is_error_when_a_shard_did_not_run_a_suite(tmp_path: Path, make_config: Callable[..., QxaiConfig],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A shard whose suite errored makes the merged run ERROR, named with its file; a shard that merely held no
    check does not (the other shards checked)."""
    config = make_config(update_baselines="all")
    passing = write_run(tmp_path / "s1.json", config, 0.0, (SIM,))
    empty = write_run(tmp_path / "s2.json", config, 0.0, ())
    assert json.loads(empty.read_text())["summary"]["errors"] == [NOTHING_CHECKED]
    assert main(["merge", str(tmp_path / "o.json"), str(passing), str(empty)]) == 0
    broken = write_run(tmp_path / "s3.json", config, 0.0, (ACC,), errors=("suite knowledge did not run to the end",))
    assert main(["merge", str(tmp_path / "o.json"), str(passing), str(broken), "--md", str(tmp_path / "o.md")]) == 1
    summary = json.loads((tmp_path / "o.json").read_text())["summary"]
    assert summary["verdict"] == "error" and summary["errors"] == [f"{broken}: suite knowledge did not run to the end"]
    assert (tmp_path / "o.md").read_text().startswith("### 🛑 pytest-qxai: ERROR")
    assert capsys.readouterr().out.strip().splitlines()[-2:] == [
        f"ERROR {broken}: suite knowledge did not run to the end",
        "qxai gate: ERROR (0 fail, 0 inconclusive, 0 improved, 2 pass, 2 skipped; 1 error(s))"]


def test_compare_is_error_when_a_run_did_not_check_or_nothing_matches(
    tmp_path: Path, runs: dict[str, Path], make_config: Callable[..., QxaiConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(update_baselines="all")
    broken = write_run(tmp_path / "broken.json", config, 0.015, errors=("suite nle did not run to the end",))
    assert main(["compare", str(runs["old"]), str(broken), "--resamples", "99"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-2] == f"ERROR {broken}: suite nle did not run to the end"
    other = write_run(tmp_path / "other.json", config, 0.0, (Metric("x", "y", "", "continuous"),))
    assert main(["compare", str(runs["old"]), str(other), "--resamples", "99"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-2] == f"ERROR {NOTHING_CHECKED}"


def test_inconclusive_exits_0_unless_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = build_report([CheckResult("nle", "similarity", "vs_reference", "inconclusive", "", n=20, mdd=0.3,
                                       n_needed=300)], model="m", quant="bnb4", baseline_name="bnb4")
    shard = write_reports(report, json_path=tmp_path / "s.json")[0]
    assert main(["merge", str(tmp_path / "o.json"), str(shard)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("qxai gate: INCONCLUSIVE (0 fail, 1 inc")
    assert main(["merge", str(tmp_path / "o.json"), str(shard), "--strict"]) == 1


def test_cli_does_not_import_torch() -> None:
    code = "import sys; from pytest_qxai.cli import main; sys.exit('torch' in sys.modules or 'pytest' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
