"""The run's verdict through pytest: test outcomes match check verdicts, and a run that did not check is never green.

Outcomes: a fail is a FAILED test, a skipped or not-applicable check a SKIPPED one with its reason, an
inconclusive check a PASSED one (FAILED under ``--qxai-strict``). The run's verdict is ERROR, with a non-zero
exit status, when a suite errored, an xdist worker crashed or nothing was checked. Run without xdist, with
``-n 0`` and with ``-n 2`` where the outcome could depend on it (the ``plugin_args`` fixture).
"""

from __future__ import annotations

import json

import pytest
import scipy.stats  # noqa: F401 - imported once here: pytester drops modules first imported inside a run

from pytest_qxai.gate.check import NOTHING_CHECKED
from pytest_qxai.session import STOPPED_EARLY
from pytest_qxai.testing import baseline_files, run_gate
from test_gate_plugin import CONFTEST, LEAN

OUTCOMES = """
from pytest_qxai.metrics import Metric, SuiteResult

SIM = Metric("demo", "similarity", "cosine to gold", "continuous", tolerance="abs:0.05")
DROP = Metric("demo", "drop", "cosine to gold", "continuous", tolerance="abs:0.05")
SHAP = Metric("demo", "cc_shap", "self-consistency", "continuous", tolerance="abs:0.05")
IDS = [f"item{i:03d}" for i in range(80)]
REF = [0.2 + 0.6 * ((i * 37) % 80) / 80 for i in range(80)]
NOISE = [((i * 13) % 7 - 3) / 1000 for i in range(80)]

def test_within(qxai_check):
    qxai_check(SIM, REF, [r + e for r, e in zip(REF, NOISE)], item_ids=IDS)

def test_beyond(qxai_check):
    qxai_check(DROP, REF, [r - 0.3 + e for r, e in zip(REF, NOISE)], item_ids=IDS)

def test_not_applicable(qxai_check):
    result = SuiteResult("demo", IDS, {}, {}, {}, skipped={"cc_shap": "not applicable: reference at chance"})
    qxai_check.suite(result, [SHAP])
"""

INCONCLUSIVE = """
from pytest_qxai.metrics import Metric

NOISY = Metric("demo", "noisy", "cosine to gold", "continuous", tolerance="abs:0.05")
IDS = [f"item{i}" for i in range(10)]
REF = [0.5] * 10
SPREAD = [0.25, -0.25, 0.2, -0.2, 0.15, -0.15, 0.1, -0.1, 0.05, -0.05]

def test_noisy(qxai_check):  # a mean drop just beyond the band with a spread that ten items cannot resolve
    qxai_check(NOISY, REF, [r - 0.06 + s for r, s in zip(REF, SPREAD)], item_ids=IDS)
"""

ERRORED = """
import pytest
from pytest_qxai.metrics import Metric

M = Metric("facts", "accuracy", "share correct", "binary", tolerance="abs:0.05")

@pytest.fixture(scope="module")
def result():
    raise RuntimeError("Cannot set version_counter for inference tensor")

@pytest.mark.parametrize("k", range(2))
def test_facts(result, qxai_check, k):
    qxai_check(M, [1.0] * 10, [1.0] * 10)
"""


@pytest.fixture
def gate(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def test_outcomes_match_verdicts(gate: pytest.Pytester, plugin_args: tuple[str, ...]) -> None:
    """pass: PASSED; fail: FAILED; not applicable: SKIPPED with its reason; the run: FAIL, exit 1."""
    gate.makepyfile(test_demo=OUTCOMES)
    result = run_gate(gate, *LEAN, *plugin_args, "-rs", "--qxai-update-baselines", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*qxai demo.drop vs ref FAIL: *",
                                 "SKIPPED [[]1[]] test_demo.py:*: not applicable: reference at chance"])
    checks = json.loads((gate.path / "r.json").read_text())["checks"]
    verdicts = {c["metric"]: c["verdict"] for c in checks if c["kind"] == "vs_reference"}
    assert verdicts == {"similarity": "pass", "drop": "fail", "cc_shap": "skipped"}


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["no-xdist", "xdist-n2"])
def test_inconclusive_passes_unless_strict(gate: pytest.Pytester, args: tuple[str, ...]) -> None:
    """Exit 0 and a PASSED test by default; with --qxai-strict (or its ini twin) a FAILED test and exit 1."""
    gate.makepyfile(test_noisy=INCONCLUSIVE)
    result = run_gate(gate, *LEAN, *args, "--qxai-update-baselines")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["INCONCLUSIVE demo.noisy (vs ref): *",
                                 "qxai gate: INCONCLUSIVE (0 fail, 1 inconclusive, *); exit 0 (--qxai-strict would "
                                 "make it 1)"])
    for strict in (("--qxai-strict",), ("-o", "qxai_strict=true")):
        result = run_gate(gate, *LEAN, *args, *strict)
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*qxai demo.noisy vs ref INCONCLUSIVE (--qxai-strict fails it): *",
                                     "qxai gate: INCONCLUSIVE (0 fail, *); --qxai-strict: exit 1"])


def test_an_errored_suite_makes_the_run_error(gate: pytest.Pytester, plugin_args: tuple[str, ...]) -> None:
    """A suite whose fixture raised is named once; the run is ERROR in the terminal and the report, exit 1."""
    gate.makepyfile(test_facts=ERRORED, test_noisy=INCONCLUSIVE)
    result = run_gate(gate, *LEAN, *plugin_args, "--qxai-update-baselines", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=2)
    error = ("suite facts did not run to the end: test_facts.py::test_facts[[]*[]] errored in setup: "
             "RuntimeError: Cannot set version_counter for inference tensor")
    result.stdout.fnmatch_lines([f"ERROR {error}", "qxai gate: ERROR (0 fail, 1 inconclusive, *; 1 error(s))"])
    summary = json.loads((gate.path / "r.json").read_text())["summary"]
    assert summary["verdict"] == "error" and len(summary["errors"]) == 1
    assert summary["errors"][0].startswith("suite facts did not run to the end: test_facts.py::")


def test_an_errored_suite_keeps_its_stored_baseline(gate: pytest.Pytester) -> None:
    """Even asked to prune, a run in which a suite did not run to the end deletes none of its stored records."""
    gate.makepyfile(test_facts=ERRORED.replace('raise RuntimeError("Cannot set version_counter for inference '
                                               'tensor")', "return None"), test_noisy=INCONCLUSIVE)
    assert run_gate(gate, *LEAN, "--qxai-update-baselines").ret == pytest.ExitCode.OK
    recorded = baseline_files(gate.path / "baselines")
    assert set(json.loads(next(iter(recorded.values())))["checks"]) == {"facts.accuracy", "demo.noisy"}
    gate.makepyfile(test_facts=ERRORED)
    result = run_gate(gate, *LEAN, "--qxai-update-baselines", "--qxai-prune-baselines")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["qxai: the run had errors (suite facts did not run to the end: *), so nothing "
                                 "was pruned from the baseline"])
    assert set(json.loads(next(iter(baseline_files(gate.path / "baselines").values())))["checks"]) == {
        "facts.accuracy", "demo.noisy"}


def test_a_run_that_checked_nothing_is_an_error(gate: pytest.Pytester, plugin_args: tuple[str, ...]) -> None:
    """Gate tests that decide nothing (here: none calls the gate) pass, yet the run is ERROR and exits 1."""
    gate.makepyfile(test_empty="def test_nothing(qxai_check):\n    pass\n")
    result = run_gate(gate, *LEAN, *plugin_args, "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"ERROR {NOTHING_CHECKED}",
                                 "qxai gate: ERROR (0 fail, 0 inconclusive, 0 improved, 0 pass, 0 skipped; "
                                 "1 error(s))"])
    assert json.loads((gate.path / "r.json").read_text())["summary"]["errors"] == [NOTHING_CHECKED]


@pytest.mark.parametrize("stop", ["pytest.exit('stopped by hand')", "assert False, 'a plain test failed'"],
                         ids=["interrupted", "exitfirst"])
def test_a_run_stopped_before_every_test_ran_is_an_error_unless_a_check_failed(
    gate: pytest.Pytester, stop: str,
) -> None:
    """One passing check, then the run stops (pytest.exit, or -x after a failing non-gate test): the reports said
    PASS. A run stopped early with no failing check is ERROR; one that already failed a check stays FAIL."""
    gate.makepyfile(test_a_noisy=INCONCLUSIVE.replace("- 0.06", "- 0.0").replace("0.25, -0.25, 0.2, -0.2, 0.15, "
                    "-0.15, 0.1, -0.1, 0.05, -0.05", "0.001, -0.001, 0.002, -0.002, 0, 0, 0.001, -0.001, 0, 0"),
                    test_b_stop=f"import pytest\n\ndef test_stop():\n    {stop}\n",
                    test_c_facts=ERRORED.replace('raise RuntimeError("Cannot set version_counter for inference '
                                                 'tensor")', "return None"))
    result = run_gate(gate, *LEAN, "-x", "--qxai-update-baselines", "--qxai-report-json=r.json")
    summary = json.loads((gate.path / "r.json").read_text())["summary"]
    assert summary["counts"]["pass"] >= 1 and summary["verdict"] == "error", result.stdout.str()
    assert summary["errors"] == [STOPPED_EARLY] and result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"ERROR {STOPPED_EARLY}"])


def test_collect_only_gives_no_verdict_and_writes_nothing(gate: pytest.Pytester) -> None:
    gate.makepyfile(test_noisy=INCONCLUSIVE)
    result = run_gate(gate, *LEAN, "--collect-only", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.OK and "qxai gate" not in result.stdout.str()
    assert not (gate.path / "r.json").exists()


def test_a_run_without_gate_tests_is_left_alone(pytester: pytest.Pytester) -> None:
    """With the plugin installed, a test suite that never uses the gate gets no gate section and keeps exit 0."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest(*LEAN)
    assert result.ret == pytest.ExitCode.OK and "qxai gate" not in result.stdout.str()


def test_a_crashed_worker_makes_the_run_error(gate: pytest.Pytester) -> None:
    """The checks a crashed xdist worker held never reach the controller: the run names the suite, exit 1."""
    gate.makepyfile(test_crash=INCONCLUSIVE + "\n\ndef test_crash(qxai_check):\n    import os\n    os._exit(3)\n")
    result = run_gate(gate, *LEAN, "-n", "2", "--dist", "loadfile", "--max-worker-restart=0", "--qxai-update-baselines",
                      "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["ERROR xdist worker gw* crashed (*); the checks of crash that ran there are lost",
                                 "ERROR suite crash did not run to the end: test_crash.py::test_crash: worker 'gw*' "
                                 "crashed while running 'test_crash.py::test_crash'",
                                 "qxai gate: ERROR (*; 3 error(s))"])
    summary = json.loads((gate.path / "r.json").read_text())["summary"]
    assert summary["verdict"] == "error" and NOTHING_CHECKED in summary["errors"]
