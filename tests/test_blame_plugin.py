"""``--qxai-blame`` through pytest: options, skipped blames with their one-line reasons, reports, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scipy.stats  # noqa: F401 - imported once here: pytester drops modules first imported inside a run

from pytest_qxai.report.blame import blame_lines
from pytest_qxai.report.html import render_html
from pytest_qxai.report.markdown import render_markdown

LEAN = ("-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:cacheprovider", "--qxai-update-baselines")

FAILING = """
from pytest_qxai.metrics import Metric

ACC = Metric("demo", "accuracy", "share correct", "binary", tolerance="abs:0.05")
IDS = [f"item{i:03d}" for i in range(80)]

def test_accuracy(qxai_check):
    qxai_check(ACC, [1.0] * 80, [1.0] * 40 + [0.0] * 40, item_ids=IDS)

def test_passing(qxai_check):
    qxai_check(Metric("demo", "fine", "share", "binary", tolerance="abs:0.05"), [1.0] * 80, [1.0] * 80,
               item_ids=IDS)
"""


def _blames(path: Path) -> dict[str, dict]:
    return {b["check"]: b for b in json.loads(path.read_text())["blame"]}


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["no-xdist", "xdist-n2"])
def test_blame_of_a_metric_without_remeasure_is_skipped_with_its_reason(pytester: pytest.Pytester,
                                                                       args: tuple[str, ...]) -> None:
    pytester.makepyfile(FAILING)
    result = pytester.runpytest_subprocess("--qxai-blame", "--qxai-report-json=r.json", *args, *LEAN)
    result.assert_outcomes(failed=1, passed=1)
    blames = _blames(pytester.path / "r.json")
    assert list(blames) == ["demo.accuracy"]  # only the failing check is blamed
    assert blames["demo.accuracy"]["status"] == "skipped"
    assert blames["demo.accuracy"]["reason"] == ("blame not supported for this metric: the demo suite cannot "
                                                "re-measure accuracy")
    result.stdout.fnmatch_lines(["blame demo.accuracy: skipped: blame not supported for this metric*"])


def test_named_targets_that_did_not_fail_or_did_not_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(FAILING)
    result = pytester.runpytest_subprocess("--qxai-blame=demo.fine,demo.missing", "--qxai-report-json=r.json", *LEAN)
    result.assert_outcomes(failed=1, passed=1)
    blames = _blames(pytester.path / "r.json")
    assert set(blames) == {"demo.fine", "demo.missing"}
    assert blames["demo.fine"]["reason"] == "demo.fine did not fail (verdict pass): nothing to blame"
    assert blames["demo.missing"]["reason"] == "--qxai-blame demo.missing names no check that ran"


def test_backend_without_module_skipping_says_so_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(FAILING)
    result = pytester.runpytest_subprocess("--quant=gptq4", "--qxai-blame", "--qxai-report-json=r.json", *LEAN)
    result.stdout.fnmatch_lines(["blame demo.accuracy: skipped: the gptq backend cannot keep modules in full "
                                 "precision (keep= works with bnb, hqq, quanto, torchao)"])


def test_without_the_option_there_is_no_blame(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(FAILING)
    result = pytester.runpytest_subprocess("--qxai-report-json=r.json", *LEAN)
    assert "blame" not in json.loads((pytester.path / "r.json").read_text())
    assert "blame demo" not in result.stdout.str()


@pytest.mark.parametrize(("args", "message"), [
    (["--qxai-blame=recall"], "--qxai-blame 'recall': name checks as SUITE.METRIC[,SUITE.METRIC]"),
    (["--qxai-blame-verify"], "--qxai-blame-verify needs --qxai-blame"),
    (["--qxai-blame", "--qxai-blame-target=1.5"], "--qxai-blame-target '1.5': give a share in (0, 1]"),
    (["--quant=hqq4:keep=mlp.x"], "--quant hqq4: keep=mlp.x: 'mlp.x' is not LAYER, FIRST-LAST"),
])
def test_bad_blame_input_is_one_usage_error_line(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(*args, *LEAN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr.str()


def test_keep_naming_a_layer_the_model_lacks_exits_4_once_loaded(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytest.importorskip("optimum.quanto")
    from tests.tiny import LAYERS, build_tiny_model

    folder = build_tiny_model(tmp_path)
    pytester.makepyfile("def test_x(qxai_pair):\n    pass\n")
    result = pytester.runpytest_subprocess(f"--qxai-model={folder}", f"--quant=quanto-int8:keep={LAYERS}",
                                           "--qxai-no-cache", *LEAN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert (f"keep names layer {LAYERS}, but the model has {LAYERS} decoder layers (0-{LAYERS - 1})") in text
    assert "Traceback" not in text


BLAMED = {
    "check": "knowledge.recall_accuracy", "status": "blamed", "reason": "", "target": 0.5, "items": 9,
    "groups": [{"keep": "0-29", "layers": 30, "parameters": 100, "share": 1.0, "ci": [1.0, 1.0]},
               {"keep": "17-19", "layers": 3, "parameters": 10, "share": 0.67, "ci": [0.33, 1.0]}],
    "proposal": "hqq2:keep=17-19", "proposal_keep": "17-19", "proposal_share": 0.67, "proposal_ci": [0.33, 1.0],
    "verification": {"verdict": "pass", "recovered_share": 0.78, "recovered_ci": [0.5, 1.0],
                     "quantized_bytes": 2**20 * 40, "proposal_bytes": 2**20 * 52},
    "cost": {"measurements": 27, "seconds": 41.5}, "nodeid": "",
}


def test_reports_show_the_blame() -> None:
    report = {"model": "m", "quant": "hqq2", "baseline_name": "b", "checks": [], "notes": [], "metadata": {},
              "summary": {"checks": 0, "counts": {}, "verdict": "fail"}, "blame": [BLAMED]}
    line = blame_lines([BLAMED])[0]
    assert line == ("blame knowledge.recall_accuracy: 9 regressed items, 27 restorations measured in 41.5 s; "
                    "proposed hqq2:keep=17-19: recovers 67% [33%, 100%] of the regression (target 50%); verified: "
                    "PASS, recovered 78% [50%, 100%], memory 52.0 MiB (+12.0 MiB over 40.0 MiB)")
    markdown = render_markdown(report)
    assert "#### Layer blame" in markdown and "| `17-19` | 3 | 10 | 67% [33%, 100%] |" in markdown
    page = render_html(report)
    assert "<h2>Layer blame</h2>" in page and page.count("data:image/png;base64") == 1


def test_damage_spread_over_the_layers_is_reported_as_no_localized_cause() -> None:
    """The blame object, the terminal line, the JSON form and the Markdown/HTML reports say "no localized cause"
    and propose no spec when only a restoration of more than a quarter of the layers reaches the target."""
    from pytest_qxai.blame.run import Blame, _summary
    from pytest_qxai.blame.search import search
    from pytest_qxai.gate.check import CheckResult
    from test_blame_search import all_or_nothing, one_per_layer

    check = CheckResult("knowledge", "recall_accuracy", "vs_reference", "fail", "")
    blame = _summary(check, search(30, all_or_nothing(30), one_per_layer, target=0.5), 0.5, 11, 30)
    assert blame.status == "blamed" and blame.proposal is None and blame.spread_layers == 30
    assert blame.reason == ("no localized cause: the damage is spread over 30 layers (the fewest whose restoration "
                            "recovers 50% of the regression: keep=0-29, 100%; a proposal keeps at most 7 of 30 "
                            "layers, 25%)")
    stored = Blame.from_dict(json.loads(json.dumps(blame.to_dict() | {"cost": {"measurements": 21, "seconds": 9}})))
    assert stored.spread_layers == 30 and stored.proposal is None
    line = blame_lines([stored.to_dict()])[0]
    assert line.startswith("blame knowledge.recall_accuracy: 11 regressed items, 21 restorations measured in 9 s; "
                           "no localized cause: the damage is spread over 30 layers")
    report = {"model": "m", "quant": "hqq2", "baseline_name": "b", "checks": [], "notes": [], "metadata": {},
              "summary": {"checks": 0, "counts": {}, "verdict": "fail"}, "blame": [stored.to_dict()]}
    assert "no localized cause: the damage is spread over 30 layers" in render_markdown(report)
    assert "no localized cause: the damage is spread over 30 layers" in render_html(report)
