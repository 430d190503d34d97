"""Multiplicity control and per-model band files through pytest: options, exit codes, what the summary says."""

from __future__ import annotations

import json

import pytest

from pytest_qxai.testing import baseline_files, run_gate

LEAN = ("-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:cacheprovider")

CONFTEST = """
import pytest
from pytest_qxai.metrics import Metric, register_metric
from pytest_qxai.plugin import SESSION_KEY

ACC = register_metric(Metric("demo", "accuracy", "share correct", "binary", bounds=(0.0, 1.0), tolerance="abs:0.03"))
SAME = register_metric(Metric("demo", "same", "share correct", "binary", bounds=(0.0, 1.0), tolerance="abs:0.03"))

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.stash[SESSION_KEY].n_resamples = 199
"""

SOURCE = """
from conftest import ACC, SAME

IDS = [f"item{i:03d}" for i in range(100)]

def test_accuracy(qxai_check):
    qxai_check(ACC, [1.0] * 100, [0.0] * 8 + [1.0] * 92, item_ids=IDS)  # one-sided p = 0.024 at the band

def test_same(qxai_check):
    qxai_check(SAME, [1.0] * 100, [1.0] * 100, item_ids=IDS)
"""


@pytest.fixture
def gate(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_demo=SOURCE)
    return pytester


def usage_error(result: pytest.RunResult, message: str) -> None:
    """Exit 4 with the message on one ERROR line and no traceback."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_holm_at_the_end_adds_a_failure_the_test_time_bound_could_not_make(gate: pytest.Pytester) -> None:
    """Planned: 4 decisions (p * 4 = 0.095 at test time); made: 2 (Holm: p * 2 = 0.047 fails)."""
    result = run_gate(gate, *LEAN, "--qxai-update-baselines", "--qxai-report-json=r.json")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "qxai: holm over the run's 2 fail decisions failed 1 more check(s) at the end (their tests had passed): "
        "demo.accuracy vs_reference",
        "qxai gate: FAIL (1 fail*",
    ])
    report = json.loads((gate.path / "r.json").read_text())
    assert report["metadata"]["multiple_testing"] == "holm"
    check = next(c for c in report["checks"] if c["metric"] == "accuracy")
    assert check["verdict"] == "fail" and check["p_adjusted"] == pytest.approx(2 * check["p_value"])


def test_without_multiplicity_control_the_test_itself_fails(gate: pytest.Pytester) -> None:
    result = run_gate(gate, *LEAN, "--qxai-update-baselines", "--qxai-multiple-testing=none")
    result.assert_outcomes(passed=1, failed=1)
    assert "more check(s) at the end" not in result.stdout.str()


@pytest.mark.parametrize("args", [("--qxai-multiple-testing=sidak",), ("-o", "qxai_multiple_testing=Sidak")])
def test_an_unknown_method_is_a_usage_error(gate: pytest.Pytester, args: tuple[str, ...]) -> None:
    usage_error(run_gate(gate, *LEAN, *args), "is not valid; use one of holm, bh, none")


BANDS = """
model = "{model}"

[bands."{key}"]
band = "{band}"
measurement = "two fp32 runs on different CPUs differ by up to 0.09 on 100 items"
"""


def write_bands(gate: pytest.Pytester, model: str = "default", key: str = "demo.accuracy",
                band: str = "abs:0.2") -> None:
    folder = gate.path / "baselines" / "default"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bands.toml").write_text(BANDS.format(model=model, key=key, band=band))


def test_a_model_band_file_sets_the_band_for_that_model(gate: pytest.Pytester) -> None:
    write_bands(gate)
    result = run_gate(gate, *LEAN, "--qxai-update-baselines", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.OK
    report = json.loads((gate.path / "r.json").read_text())
    check = next(c for c in report["checks"] if c["metric"] == "accuracy" and c["kind"] == "vs_reference")
    assert (check["tolerance"], check["verdict"]) == ("abs:0.2", "pass")


def test_the_command_line_beats_the_band_file(gate: pytest.Pytester) -> None:
    write_bands(gate)
    result = run_gate(gate, *LEAN, "--qxai-update-baselines", "--qxai-multiple-testing=none",
                      "--qxai-tolerance=demo.accuracy=abs:0.03")
    result.assert_outcomes(passed=1, failed=1)


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ({"key": "demo.acuracy"}, "unknown metric 'demo.acuracy'"),
        ({"band": "abs:wide"}, "demo.accuracy: tolerance band 'abs:wide': the band width must be a number"),
        ({"model": "another/model"}, "is for model 'another/model', not 'default'"),
    ],
)
def test_a_bad_band_file_is_a_usage_error_and_nothing_is_written(gate: pytest.Pytester, bands: dict[str, str],
                                                                 message: str) -> None:
    write_bands(gate, **bands)
    before = baseline_files(gate.path)
    usage_error(run_gate(gate, *LEAN, "--qxai-update-baselines"), message)
    assert baseline_files(gate.path) == before
