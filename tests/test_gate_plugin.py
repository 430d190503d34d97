"""The gate through pytest: the ``qxai_check`` fixture, baselines, reports, CI behaviour, xdist.

Tests of the session's end (summary, reports, JUnit properties, baseline writes and comparisons) run
three ways: without xdist, with ``-n 0`` and with ``-n 2`` (the ``plugin_args`` fixture). The six-run
workflow harness runs without workers; ``test_xdist_workers_record_and_compare_baselines`` walks the
same path under ``-n 2`` in two runs, because each ``-n 2`` session costs seconds of worker start-up.
"""

from __future__ import annotations

import json

import pytest
import scipy.stats  # noqa: F401 - imported once here: pytester drops modules first imported inside a run

from pytest_qxai.testing import baseline_files, check_baseline_workflow, run_gate

# Keep the inner sessions lean: these plugins only slow down every xdist worker's start.
LEAN = ("-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:cacheprovider")

CONFTEST = """
import pytest
from pytest_qxai.plugin import SESSION_KEY

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.stash[SESSION_KEY].n_resamples = 499  # fast and still deterministic
"""

SOURCE = """
from pytest_qxai.metrics import Metric

SIM = Metric("demo", "similarity", "cosine to gold", "continuous", tolerance="abs:0.05")
ACC = Metric("demo", "accuracy", "share correct", "binary", tolerance="abs:0.05")
IDS = [f"item{{i:03d}}" for i in range(80)]
REF = [0.2 + 0.6 * ((i * 37) % 80) / 80 for i in range(80)]
NOISE = [((i * 13) % 7 - 3) / 1000 for i in range(80)]

def test_similarity(qxai_check):
    quantized = [r + {gap} + e for r, e in zip(REF, NOISE)]
    qxai_check(SIM, REF, quantized, item_ids=IDS, fingerprint={{"data": "{data}"}},
               profiles={{"per layer": {{"reference": [0.1, 0.5], "quantized": [0.1, 0.4]}}}})

def test_accuracy(qxai_check):
    qxai_check(ACC, [1.0] * 80, [1.0] * 79 + [0.0], item_ids=IDS)
"""


def source(gap: float = 0.04, data: str = "v1") -> str:
    """The test module: the similarity gap quantized − reference is ``gap``, within the 0.05 band."""
    return SOURCE.format(gap=gap, data=data)


@pytest.fixture
def gate(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


@pytest.mark.parametrize("args", [(), ("-n", "0")], ids=["no-xdist", "xdist-n0"])
def test_baseline_workflow(gate: pytest.Pytester, args: tuple[str, ...]) -> None:
    """Fail in CI without a baseline, fail-and-create locally, pass, fail on a regression, regenerate."""
    baselines = check_baseline_workflow(gate, source(0.04), source(-0.04), args=(*LEAN, *args))
    assert list(baselines) == [gate.path / "baselines" / "default" / "bnb4.json"]
    doc = json.loads(next(iter(baselines.values())))
    assert set(doc["checks"]) == {"demo.similarity", "demo.accuracy"}
    assert doc["checks"]["demo.similarity"]["quantized"] == pytest.approx(0.4963 - 0.04, abs=0.001)


def test_xdist_workers_record_and_compare_baselines(gate: pytest.Pytester) -> None:
    """Workers' checks reach the controller, which writes the baseline; workers then compare against it."""
    gate.makepyfile(test_demo=source(0.04))
    result = run_gate(gate, *LEAN, "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["qxai baseline baselines/default/bnb4.json: 2 added"])
    recorded = json.loads((gate.path / "baselines" / "default" / "bnb4.json").read_text())
    assert set(recorded["checks"]) == {"demo.similarity", "demo.accuracy"}

    gate.makepyfile(test_demo=source(-0.04))
    result = run_gate(gate, *LEAN, "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAIL demo.similarity (vs base): similarity degraded by more than the band*",
                                 "qxai gate: FAIL (1 fail, 1 inconclusive, 0 improved, 2 pass, 0 skipped)"])


def test_summary_json_report_and_junit_properties(gate: pytest.Pytester, plugin_args: tuple[str, ...]) -> None:
    gate.makepyfile(test_demo=source(-0.2))
    result = run_gate(gate, *LEAN, *plugin_args, "--qxai-update-baselines", "--qxai-report-json=out/report.json",
                      "--junitxml=junit.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*qxai explainability gate*",
        "model default, quant bnb4, baseline baselines/default/bnb4.json",
        "verdict*suite*metric*kind*reference*quantized*delta [[]CI]*baseline*p*p adj*n*band*mdd*n needed",
        "FAIL *| demo *| similarity *| vs ref *| *0.4963 | *0.2963 | -0.2000 [[]*abs:0.05 *| *",
        "INCONCLUSIVE *| demo *| accuracy *| vs ref*",
        "FAIL demo.similarity (vs ref): similarity degraded by more than the band*",
        "qxai baseline baselines/default/bnb4.json: 2 added",
        "qxai report: out/report.json",
        "qxai gate: FAIL (1 fail, 1 inconclusive, 0 improved, 0 pass, 2 skipped)",
    ])
    result.stdout.fnmatch_lines(["*qxai demo.similarity vs ref FAIL: reference 0.4963, quantized 0.2963*"])
    report = json.loads((gate.path / "out" / "report.json").read_text())
    assert {"model", "quant", "baseline_name", "metadata", "checks", "summary"} <= set(report)
    assert report["summary"]["verdict"] == "fail" and len(report["checks"]) == 4
    failed = report["checks"][0]
    assert (failed["metric"], failed["kind"], failed["verdict"]) == ("similarity", "vs_reference", "fail")
    assert failed["n"] == 80
    assert failed["profiles"] == {"per layer": {"reference": [0.1, 0.5], "quantized": [0.1, 0.4]}}
    junit = (gate.path / "junit.xml").read_text()
    assert 'name="qxai.demo.similarity.vs_reference.verdict" value="fail"' in junit
    assert 'name="qxai.demo.accuracy.vs_reference.n" value="80"' in junit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "baselines/default/bnb4.json is not valid JSON"),
        ("foreign", "baselines/default/bnb4.json was recorded for model 'another/model', not 'default'"),
    ],
)
def test_unreadable_or_foreign_baseline_fails_with_one_line_naming_the_file(
    gate: pytest.Pytester, damage: str, message: str
) -> None:
    gate.makepyfile(test_demo=source())
    assert run_gate(gate, *LEAN, "--qxai-update-baselines").ret == pytest.ExitCode.OK
    path = gate.path / "baselines" / "default" / "bnb4.json"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_text(path.read_text().replace('"model": "default"', '"model": "another/model"'))
    before = path.read_bytes()
    for args in ((), ("--qxai-update-baselines",)):  # an explicit update does not overwrite it either
        result = run_gate(gate, *LEAN, *args)
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.assert_outcomes(failed=2)
        result.stdout.fnmatch_lines([f"qxai demo.similarity vs base FAIL:*{message}*"])
        assert "Traceback" not in result.stdout.str()
        assert path.read_bytes() == before


def test_stale_baseline_fails_naming_the_changed_fingerprint(
    gate: pytest.Pytester, plugin_args: tuple[str, ...]
) -> None:
    gate.makepyfile(test_demo=source())
    assert run_gate(gate, *LEAN, "--qxai-update-baselines").ret == pytest.ExitCode.OK
    path = gate.path / "baselines" / "default" / "bnb4.json"
    before = path.read_bytes()
    gate.makepyfile(test_demo=source(data="v2"))
    result = run_gate(gate, *LEAN, *plugin_args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*vs base FAIL:*stale baseline baselines/default/bnb4.json: fingerprint data "
                                 "changed; re-record with --qxai-update-baselines"])
    assert path.read_bytes() == before


def test_missing_mode_adds_and_prune_removes(gate: pytest.Pytester) -> None:
    gate.makepyfile(test_demo=source())
    assert run_gate(gate, *LEAN, "--qxai-update-baselines").ret == pytest.ExitCode.OK
    path = gate.path / "baselines" / "default" / "bnb4.json"
    recorded = path.read_bytes()

    gate.makepyfile(test_demo=source(gap=0.03))
    result = run_gate(gate, *LEAN, "--qxai-update-baselines=missing")
    assert result.ret == pytest.ExitCode.OK and path.read_bytes() == recorded  # nothing absent, nothing rewritten

    result = run_gate(gate, *LEAN, "--qxai-update-baselines", "-k", "accuracy")
    assert result.ret == pytest.ExitCode.OK
    assert set(json.loads(path.read_text())["checks"]) == {"demo.similarity", "demo.accuracy"}

    result = run_gate(gate, *LEAN, "--qxai-update-baselines", "--qxai-prune-baselines", "-k", "accuracy")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["qxai baseline baselines/default/bnb4.json: 1 pruned"])
    assert set(json.loads(path.read_text())["checks"]) == {"demo.accuracy"}


def test_ci_with_explicit_update_writes(gate: pytest.Pytester) -> None:
    gate.makepyfile(test_demo=source())
    result = run_gate(gate, *LEAN, "--qxai-update-baselines", ci=True)
    assert result.ret == pytest.ExitCode.OK
    assert baseline_files(gate.path / "baselines")


def test_tolerance_override_from_command_line_beats_ini(gate: pytest.Pytester) -> None:
    gate.makeini("[pytest]\nqxai_tolerance = similarity=abs:0.5\n")
    gate.makepyfile(test_demo=source(-0.2))
    assert run_gate(gate, *LEAN, "--qxai-update-baselines").ret == pytest.ExitCode.OK
    result = run_gate(gate, *LEAN, "--qxai-tolerance=demo.similarity=abs:0.1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAIL *| demo *| similarity *| vs ref *abs:0.1 *| *"])


def test_bad_tolerance_is_a_usage_error(gate: pytest.Pytester) -> None:
    gate.makepyfile(test_demo=source())
    result = run_gate(gate, *LEAN, "--qxai-tolerance=similarity=abs:lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qxai-tolerance similarity: tolerance band 'abs:lots': the band width must be a "
                                 "number, got 'lots'"])


def test_skip_records_the_metric_and_skips_the_test(gate: pytest.Pytester) -> None:
    gate.makepyfile(test_demo=source() + """
from pytest_qxai.metrics import register_metric

register_metric(Metric("demo", "second_hop", "share positive", "binary"))

def test_second_hop(qxai_check):
    qxai_check.skip("demo.second_hop", "no backward pass through this kernel")
""")
    result = run_gate(gate, *LEAN, "--qxai-update-baselines")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["skipped demo.second_hop (vs ref): no backward pass through this kernel",
                                 "qxai gate: INCONCLUSIVE (0 fail, 1 inconclusive, 0 improved, 1 pass, 3 skipped)*"])


def test_user_errors_fail_the_test_with_one_line(gate: pytest.Pytester) -> None:
    gate.makepyfile(test_demo="""
        def test_unknown(qxai_check):
            qxai_check("nope.metric", [1.0, 2.0], [1.0, 2.0])
    """)
    result = run_gate(gate, *LEAN)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["qxai: unknown metric 'nope.metric'; register it with *register_metric*"])
    assert "Traceback" not in result.stdout.str()


def test_gate_does_not_import_torch(pytester: pytest.Pytester) -> None:
    """Checks, baselines, the summary and the JSON/Markdown reports work without the model stack."""
    pytester.makeconftest(CONFTEST + """
def pytest_unconfigure(config):
    import sys
    open("heavy.txt", "w").write(" ".join(m for m in ("torch", "transformers") if m in sys.modules))
""")
    pytester.makepyfile(test_demo=source())
    result = pytester.runpytest_subprocess(*LEAN, "--qxai-update-baselines", "--qxai-report-json=r.json",
                                           "--qxai-report-md=r.md")
    assert result.ret == pytest.ExitCode.OK
    assert (pytester.path / "r.md").exists() and (pytester.path / "heavy.txt").read_text() == ""


SHARD_MODULE = """
from pytest_qxai.metrics import Metric

M = Metric("{suite}", "score", "a score", "continuous", tolerance="abs:0.05")

def test_score(qxai_check):
    qxai_check(M, [0.5 + i / 100 for i in range(20)], [0.5 + i / 100 + {gap} for i in range(20)],
               item_ids=[f"i{{i}}" for i in range(20)])
"""


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["no-xdist", "xdist-n2"])
def test_shards_split_modules_and_merge_into_one_verdict(gate: pytest.Pytester, args: tuple[str, ...]) -> None:
    """Shards run disjoint whole modules that together cover the run; `qxai merge` gives the joint verdict."""
    from pytest_qxai.cli import main

    gaps = {"alpha": 0.0, "beta": -0.2, "gamma": 0.01}
    gate.makepyfile(**{f"test_{suite}": SHARD_MODULE.format(suite=suite, gap=gap) for suite, gap in gaps.items()})
    ran: dict[str, set[str]] = {}
    for shard in ("1/2", "2/2"):
        report = gate.path / f"shard{shard[0]}.json"
        result = run_gate(gate, *LEAN, *args, f"--qxai-shard={shard}", "--qxai-update-baselines=missing",
                          f"--qxai-report-json={report}")
        ran[shard] = {c["suite"] for c in json.loads(report.read_text())["checks"]}
        assert result.ret == (pytest.ExitCode.TESTS_FAILED if "beta" in ran[shard] else pytest.ExitCode.OK)
    assert ran == {"1/2": {"alpha", "gamma"}, "2/2": {"beta"}}
    merged = gate.path / "merged.json"
    assert main(["merge", str(merged), str(gate.path / "shard1.json"), str(gate.path / "shard2.json")]) == 1
    summary = json.loads(merged.read_text())["summary"]
    assert summary["verdict"] == "fail" and summary["counts"]["fail"] == 1
    recorded = json.loads((gate.path / "baselines" / "default" / "bnb4.json").read_text())
    assert set(recorded["checks"]) == {"alpha.score", "beta.score", "gamma.score"}


@pytest.mark.parametrize(("value", "message"), [
    ("3/2", "--qxai-shard '3/2': write I/N with 1 <= I <= N, e.g. 2/4"),
    ("half", "--qxai-shard 'half': write I/N with 1 <= I <= N, e.g. 2/4"),
])
def test_a_malformed_shard_is_a_usage_error(gate: pytest.Pytester, value: str, message: str) -> None:
    gate.makepyfile(test_demo=source())
    result = run_gate(gate, *LEAN, f"--qxai-shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_pruning_a_shard_is_refused(gate: pytest.Pytester) -> None:
    gate.makepyfile(test_demo=source())
    result = run_gate(gate, *LEAN, "--qxai-shard=1/2", "--qxai-update-baselines=all", "--qxai-prune-baselines")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --qxai-prune-baselines cannot be combined with --qxai-shard*"])
    assert not baseline_files(gate.path / "baselines")
