"""Sequential item budgets (``--qxai-budget``): error rates under optional stopping (seeded Monte-Carlo), the
items a clear case saves, and the option through pytest on a stand-in suite (docs/sequential.md)."""

from __future__ import annotations

import dataclasses
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats  # noqa: F401 - imported once here: pytester drops modules first imported inside a run
from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.config import PROFILES, Budget, parse_budget
from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.gate.sequential import plan, run_looks
from pytest_qxai.gate.spending import share, spent
from pytest_qxai.testing import run_gate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gate_simulation import ALPHA, Scenario, mc_limit  # noqa: E402
from sequential_simulation import sequential_outcomes  # noqa: E402

BUDGET = 200


@given(st.integers(2, 5000), st.floats(1e-6, 0.5), st.one_of(st.none(), st.integers(0, 5000)))
def test_looks_are_nested_prefixes_ending_at_the_budget_and_spend_exactly_alpha(
        budget: int, alpha: float, head: int | None) -> None:
    """Also with a time budget's planned first look (``head``): an extra look before the equal steps, only when
    it is below the first of them and at least a paired test's two items."""
    looks = plan(budget, head=head)
    equal = plan(budget).looks
    assert list(looks.looks) == sorted(set(looks.looks)) and looks.looks[-1] == budget and looks.looks[0] >= 2
    assert looks.looks == ((head, *equal) if head is not None and 2 <= head < equal[0] else equal)
    shares = [share(looks.fractions(j), alpha) for j in range(len(looks.looks))]
    assert all(s >= 0 for s in shares) and sum(shares) == pytest.approx(1.0)
    assert spent(1.0, alpha) == pytest.approx(alpha)


@pytest.mark.parametrize("scenario, reps, head", [(Scenario("binary", discordance=0.3), 1000, None),
                                                  (Scenario("binary", discordance=0.3), 1000, 6),
                                                  (Scenario("continuous", shape="normal"), 300, None)],
                         ids=["binary", "binary-time-budget-head", "continuous"])
def test_error_rates_hold_under_the_stopping_rule(scenario: Scenario, reps: int, head: int | None) -> None:
    """At D = b a check stopped by the rule fails at most alpha of the time; at D = 1.1 b it passes at most alpha
    of the time (looks on nested prefixes of one draw per run, as a suite makes them), also with the early first
    look a time budget plans (``head``)."""
    at_band, _ = sequential_outcomes(scenario, BUDGET, scenario.band, reps, seed=1, head=head)
    beyond, _ = sequential_outcomes(scenario, BUDGET, 1.1 * scenario.band, reps, seed=2, head=head)
    assert np.mean([v == "fail" for v in at_band]) <= mc_limit(ALPHA, reps)
    assert np.mean([v in ("pass", "improved") for v in beyond]) <= mc_limit(ALPHA, reps)


def test_the_fixed_n_rule_at_every_look_would_break_the_guarantee() -> None:
    """The negative control: the same looks, each tested at the full alpha, fail too often at D = b (so the
    simulation above can see a broken stopping rule)."""
    scenario = Scenario("binary", discordance=0.3)
    naive, _ = sequential_outcomes(scenario, BUDGET, scenario.band, 400, seed=1, naive=True)
    assert np.mean([v == "fail" for v in naive]) > mc_limit(ALPHA, 400)


def test_a_check_far_from_its_band_stops_well_before_the_budget() -> None:
    """A degradation of 5 bands fails, and an unchanged metric passes, each with most of the budget unspent."""
    scenario = Scenario("binary", discordance=0.3)
    verdicts, used = sequential_outcomes(scenario, 600, 5 * scenario.band, 100, seed=3)
    assert np.mean([v == "fail" for v in verdicts]) > 0.95 and used.mean() < 0.5 * 600
    continuous = Scenario("continuous")
    verdicts, used = sequential_outcomes(continuous, 600, -continuous.band / 2, 100, seed=4)
    assert np.mean([v in ("pass", "improved") for v in verdicts]) > 0.95 and used.mean() < 0.7 * 600


def test_a_bonferroni_share_raises_the_bar_of_every_look() -> None:
    """With the run's planned family of 20 decisions a degradation at 2 bands fails less often than alone."""
    scenario = Scenario("binary", discordance=0.3)
    alone, _ = sequential_outcomes(scenario, BUDGET, 2 * scenario.band, 200, seed=5)
    shared, _ = sequential_outcomes(scenario, BUDGET, 2 * scenario.band, 200, seed=5, family=20)
    assert np.mean([v == "fail" for v in shared]) < np.mean([v == "fail" for v in alone])


@pytest.fixture(scope="module")
def tiny_runtime(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from test_arch import tiny_runtime_at

    return tiny_runtime_at(tmp_path_factory.mktemp("tiny"))


LOOKED = {
    "knowledge": ("run_knowledge", {"measure_recall": 1}),
    "attribution": ("run_attribution", {"_side_result": 2}),
    "faithfulness": ("run_nle_faithfulness", {"counterfactual_test": 1, "ecqa_counterfactual_test": 1,
                                              "cc_shap_scores": 1}),
    "counterfactual": ("run_counterfactual", {"text_scores": 1}),
    "nle": ("run_nle", {"explain": 1, "explain_ecqa": 1, "quality": 0}),
}
"""Suites that cache one look's batch at a time: their run function, and the measuring functions (with the
position of their per-item argument) that a look may call only on its new items."""


@pytest.mark.parametrize("module", sorted(LOOKED))
def test_looks_measure_only_their_new_items_and_give_the_values_of_one_run(
    module: str, tiny_runtime: Any, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a budget of 10 the second look (4 items) measures only its 2 new items per model and part, and its
    values and notes are those of one run on 4 items (the competence test aside: it runs on the budget's items)."""
    import importlib

    from test_arch import tiny_pair

    from pytest_qxai.storage import DiskCache

    methods = importlib.import_module(f"pytest_qxai.methods.{module}")
    run_name, measuring = LOOKED[module]
    measured: list[tuple[str, int]] = []
    for name, position in measuring.items():
        original = getattr(methods, name)
        monkeypatch.setattr(methods, name, lambda *args, name=name, position=position, original=original, **kw: (
            measured.append((name, len(args[position]))) or original(*args, **kw)))
    run = getattr(methods, run_name)
    pair = tiny_pair(tiny_runtime, make_config(budget=Budget(items=10), samples=2))
    pair.cache = DiskCache(tmp_path / "cache")
    run(pair)
    first = sorted(measured)
    assert {n for _, n in first} == {2} and {name for name, _ in first} == set(measuring)
    looked = run(dataclasses.replace(pair, config=dataclasses.replace(pair.config, samples=4)))
    assert sorted(measured[len(first):]) == first
    at_once = run(tiny_pair(tiny_runtime, make_config(samples=4)))
    assert looked.item_ids == at_once.item_ids and set(looked.reference) == set(at_once.reference)
    assert {**looked.notes, "precondition": None} == {**at_once.notes, "precondition": None}
    for name in at_once.reference:
        for side in ("reference", "quantized"):
            np.testing.assert_allclose(getattr(looked, side)[name], getattr(at_once, side)[name], rtol=0, atol=1e-5)


def test_task_predictions_are_scored_once_per_item_and_side_across_suites_and_looks(
    tiny_runtime: Any, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In sequential mode the suites' label predictions, asked for at any item count, are cached in blocks cut at
    the task suite's looks: no item is scored twice on a side, and the values are those of one fixed-n call."""
    from test_arch import tiny_pair

    from pytest_qxai.methods import task
    from pytest_qxai.storage import DiskCache

    scored: list[int] = []
    original = task.nli_logprobs
    monkeypatch.setattr(task, "nli_logprobs", lambda runtime, items: scored.append(len(items)) or original(
        runtime, items))
    pair = tiny_pair(tiny_runtime, make_config(budget=Budget(items=10)))
    pair.cache = DiskCache(tmp_path / "cache")
    assert task.TASK_ACCURACY_SUITE.look_items(pair.config) == (2, 4, 6, 8, 10)
    asked = [task.nli_predictions(pair, pair.reference, n) for n in (3, 4, 2, 7, 3)]
    assert scored == [2, 2, 2, 2]  # blocks [0, 2) and [2, 4) for 3 items, then [4, 6) and [6, 8) for 7
    assert [len(p.item_ids) for p in asked] == [3, 4, 2, 7, 3]
    at_once = task.nli_predictions(tiny_pair(tiny_runtime, make_config(samples=7)), pair.reference, 7)
    assert asked[3].item_ids == at_once.item_ids
    np.testing.assert_allclose(asked[3].logprobs, at_once.logprobs, rtol=0, atol=1e-5)


CONFTEST = """
import dataclasses
import pytest
from pytest_qxai.plugin import SESSION_KEY

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.stash[SESSION_KEY].n_resamples = 499

@dataclasses.dataclass
class StandIn:
    config: object

@pytest.fixture(scope="session")
def qxai_pair(pytestconfig):
    return StandIn(pytestconfig.stash[SESSION_KEY].config)
"""

SUITE = """
import os
import numpy as np
import pytest
from pytest_qxai.metrics import Metric, SuiteResult, register_metric

ACC = register_metric(Metric("seqdemo", "accuracy", "share correct", "binary", bounds=(0.0, 1.0), tolerance="abs:0.05"))
SCORE = register_metric(Metric("seqdemo", "score", "a score", "continuous", tolerance="abs:0.05"))
GAP = float(os.environ["QXAI_DEMO_GAP"])

def run_demo(pair):
    n = pair.config.samples or 60
    with open(os.environ["QXAI_DEMO_LOG"], "a") as log:
        log.write(f"{n}\\n")
    rng = np.random.default_rng(0)  # one seeded order: a smaller n is a prefix of a larger one
    acc = (rng.random(1000) < 0.7).astype(float)
    flipped = np.where(rng.random(1000) < GAP * 10, 0.0, acc)
    score = rng.normal(0.5, 0.2, 1000)
    noise = rng.normal(0.0, 0.02, 1000)
    late = n < int(os.environ.get("QXAI_DEMO_LATE", "0"))  # the score's precondition fails on fewer items
    skipped = {"score": f"not applicable: reference at chance on demo (n={n})"} if late else {}
    if os.environ.get("QXAI_DEMO_NO_DATA"):  # the score needs data this run does not have
        skipped = {"score": "not applicable: no demo data in this run"}
    return SuiteResult("seqdemo", [f"i{i}" for i in range(n)], {"accuracy": acc[:n], "score": score[:n]},
                       {"accuracy": flipped[:n], "score": score[:n] - 2 * GAP + noise[:n]},
                       {"data": f"demo-{n}" if os.environ.get("QXAI_DEMO_FP_BY_N") else "demo-v1"}, skipped=skipped)

@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(run_demo)

@pytest.mark.parametrize("metric", [ACC, SCORE], ids=str)
def test_seqdemo(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
"""

LEAN = ("-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:cacheprovider", "-p", "no:randomly")


@pytest.fixture
def demo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stand-in suite (no model) whose quantized side is degraded by ``$QXAI_DEMO_GAP``; returns the call log."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_seqdemo=SUITE)
    monkeypatch.setenv("QXAI_DEMO_LOG", str(tmp_path / "calls.txt"))
    return tmp_path / "calls.txt"


def sequential_notes(path: Path) -> dict[str, dict[str, object]]:
    """``suite.metric kind`` -> the check's ``notes["sequential"]`` from a JSON report."""
    report = json.loads(path.read_text())
    return {f"{r['suite']}.{r['metric']} {r['kind']}": r["notes"]["sequential"] for r in report["checks"]
            if r["kind"] == "vs_reference" and r["verdict"] != "skipped"}


@pytest.mark.parametrize("workers", [(), ("-n", "2", "-p", "xdist")], ids=["serial", "xdist"])
def test_budget_stops_a_degraded_suite_early_and_a_rerun_stops_at_the_same_place(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch, workers: tuple[str, ...],
) -> None:
    monkeypatch.setenv("QXAI_DEMO_GAP", "0.05")  # 50 % of correct items lost, scores down by two bands
    args = (*LEAN, *workers, "--qxai-budget=400", "--qxai-update-baselines", "--qxai-report-json=r.json",
            "--qxai-report-md=r.md")
    result = run_gate(pytester, *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    notes = sequential_notes(pytester.path / "r.json")
    accuracy = notes["seqdemo.accuracy vs_reference"]
    assert accuracy["stopped"] == "fail shown" and int(accuracy["items"]) < 400, notes  # type: ignore[call-overload]
    looks = sorted({int(n) for n in demo.read_text().split()})  # under xdist each worker may run the module
    assert looks == [80, 160, 240, 320, 400][: len(looks)] and len(looks) < 5, looks  # nested looks, stopped early
    result.stdout.fnmatch_lines(["*accuracy*FAIL*sequential: * of 400 items (look * of 5), fail shown*"])
    assert r"/400: fail shown\]" in (pytester.path / "r.md").read_text()  # Markdown escapes the bracket
    run_gate(pytester, *args)
    assert sequential_notes(pytester.path / "r.json") == notes


def test_budget_passes_an_unchanged_suite_and_stops_when_every_check_is_decided(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QXAI_DEMO_GAP", "0")
    result = run_gate(pytester, *LEAN, "--qxai-budget=1000", "--qxai-update-baselines", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    notes = sequential_notes(pytester.path / "r.json")
    assert {n["stopped"] for n in notes.values()} == {"non-inferiority shown"}, notes
    assert json.loads((pytester.path / "r.json").read_text())["metadata"]["budget"] == "1000"
    looks = [int(n) for n in demo.read_text().split()]
    assert looks[-1] == max(int(n["items"]) for n in notes.values()) < 1000, (looks, notes)  # type: ignore[call-overload]
    result.stdout.fnmatch_lines(["*[[]*/1000: non-inferiority shown[]]*", "*n [[]items/budget: why[]]*",
                                 "--qxai-budget: seqdemo used * of 1000 items (every check decided)"])


def test_a_reference_not_yet_above_chance_keeps_the_suite_looking(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A precondition that failed on few items (a reference not yet above chance) is no decision: the suite goes on."""
    monkeypatch.setenv("QXAI_DEMO_GAP", "0")
    monkeypatch.setenv("QXAI_DEMO_LATE", "500")  # accuracy alone is decided at 400
    result = run_gate(pytester, *LEAN, "--qxai-budget=1000", "--qxai-update-baselines", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    notes = sequential_notes(pytester.path / "r.json")
    assert notes["seqdemo.score vs_reference"]["stopped"] == "non-inferiority shown", notes
    assert int(notes["seqdemo.score vs_reference"]["items"]) >= 600  # type: ignore[call-overload]
    assert int(notes["seqdemo.accuracy vs_reference"]["items"]) == 400  # type: ignore[call-overload]


def test_a_metric_without_its_data_does_not_keep_the_suite_looking(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A skip that more items cannot change (no data of the kind in the run) is settled: the suite stops with the rest."""
    monkeypatch.setenv("QXAI_DEMO_GAP", "0")
    monkeypatch.setenv("QXAI_DEMO_NO_DATA", "1")
    result = run_gate(pytester, *LEAN, "--qxai-budget=1000", "--qxai-update-baselines", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    notes = sequential_notes(pytester.path / "r.json")
    assert int(notes["seqdemo.accuracy vs_reference"]["items"]) == 400  # type: ignore[call-overload]
    assert max(int(n) for n in demo.read_text().split()) == 400  # no look after the last decision
    result.stdout.fnmatch_lines(["skipped seqdemo.score (vs ref): not applicable: no demo data in this run"])


def test_the_competence_skip_stays_open_and_a_missing_data_skip_is_settled() -> None:
    """The suites' own precondition sentence is the one kind of ``not applicable`` a look leaves open."""
    from pytest_qxai.gate.check import CheckResult
    from pytest_qxai.gate.sequential import decided
    from pytest_qxai.methods import task  # noqa: F401 - registers the task metrics
    from pytest_qxai.methods.outcomes import require_competence
    from pytest_qxai.metrics import SuiteResult, get_metric

    result = SuiteResult("task_accuracy", [], {}, {}, {})
    metric = get_metric("task_accuracy.esnli_accuracy")
    assert not require_competence(result, "e-SNLI", np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]), 1 / 3, [metric])
    at_chance = CheckResult("task_accuracy", "esnli_accuracy", "vs_reference", "skipped", result.skipped[metric.name])
    no_data = dataclasses.replace(at_chance, reason="not applicable: no e-SNLI data in this run (sentiment)")
    assert not decided(at_chance) and decided(no_data)


def test_without_a_budget_the_suite_runs_once_at_its_fixed_count(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QXAI_DEMO_GAP", "0")
    result = run_gate(pytester, *LEAN, "--qxai-update-baselines")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert demo.read_text().split() == ["60"]
    assert "items/budget" not in result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (("--qxai-budget=1",), "--qxai-budget must be at least 2 items, got 1"),
    (("--qxai-budget=x",), "--qxai-budget 'x': give N items or a profile (smoke, standard, full)"),
    (("--qxai-budget=50", "--qxai-samples=20"), "--qxai-budget and --qxai-samples both set the items per suite"),
])
def test_a_bad_budget_is_one_line_and_a_usage_error(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], message: str,
) -> None:
    monkeypatch.setenv("QXAI_DEMO_GAP", "0")
    result = run_gate(pytester, *LEAN, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str() + result.stdout.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert not demo.exists()


def test_the_ini_twin_sets_the_budget(pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QXAI_DEMO_GAP", "0.05")
    pytester.makeini("[pytest]\nqxai_budget = 100\n")
    run_gate(pytester, *LEAN, "--qxai-update-baselines")
    assert demo.read_text().split()[0] == "20"  # the first look of a budget of 100


PROFILE_SUITE = """
import os
import numpy as np
from pytest_qxai.metrics import Metric, SuiteResult
from pytest_qxai.suite import Suite, get_suite, register_suite
from pytest_qxai.testing import suite_test

ACC = Metric("seqprof", "accuracy", "share correct", "binary", bounds=(0.0, 1.0), tolerance="abs:0.05")

def run_prof(pair):
    n, part = get_suite("seqprof").items(pair.config), get_suite("seqprof").items(pair.config, "part")
    with open(os.environ["QXAI_DEMO_LOG"], "a") as log:
        log.write(f"{n}:{part}\\n")
    acc = (np.random.default_rng(0).random(1000) < 0.7).astype(float)
    return SuiteResult("seqprof", [f"i{i}" for i in range(n)], {"accuracy": acc[:n]}, {"accuracy": acc[:n]},
                       {"data": "demo-v1"})

SUITE = register_suite(Suite("seqprof", "a stand-in", (ACC,), run_prof, {"smoke": 10, "standard": 400, "full": 1000},
                             budgets={"part": {"smoke": 3, "standard": 40, "full": 100}}, item_cost=20.0))
test_seqprof = suite_test(SUITE)
"""


@pytest.mark.parametrize("budget, looks", [("standard", ["80:8", "160:16"]), ("smoke", ["2:2", "4:2"]),
                                           ("full,10min", ["30:3", "200:20"]), ("standard,60min", ["80:8", "160:16"]),
                                           ("full,10s", ["2:2", "200:20"])])
def test_a_profile_budget_gives_each_suite_and_its_parts_their_own_counts(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch, budget: str, looks: list[str],
) -> None:
    """``--qxai-budget=standard`` caps each suite at its standard count and a look at 1/5, 2/5, … of it, its parts
    (here 40 items at standard) in the same proportion; an unchanged suite stops once decided. A time budget
    first looks at the items the suite's cost (20 s per item) fits in it, when fewer than a fifth (10 min: 30),
    and at least at two (10 s)."""
    pytester.makepyfile(test_seqprof=PROFILE_SUITE)
    result = run_gate(pytester, *LEAN, f"--qxai-budget={budget}", "--qxai-update-baselines",
                      "--qxai-report-json=r.json", "test_seqprof.py")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert demo.read_text().split()[:2] == looks
    total = {"standard": 400, "smoke": 10, "full,10min": 1000, "standard,60min": 400, "full,10s": 1000}[budget]
    assert {n["budget"] for n in sequential_notes(pytester.path / "r.json").values()} == {total}


def test_a_profile_budget_needs_the_suite_a_bare_function_gets_one_line(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A suite function passed alone has no counts to take a profile's from: its tests error with one line."""
    monkeypatch.setenv("QXAI_DEMO_GAP", "0")
    result = run_gate(pytester, *LEAN, "--qxai-budget=standard", "test_seqdemo.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*--qxai-budget=standard gives each suite its standard count: run a registered*"])
    assert not demo.exists()


def test_a_time_budget_starts_no_look_it_cannot_finish() -> None:
    """With a time budget, a look whose pace (the latest look's seconds per item) would end it past the budget is
    not started: the undecided checks end inconclusive, ``time spent``, with the items they used."""
    from pytest_qxai.gate.check import CheckResult, check_vs_reference
    from pytest_qxai.gate.tolerance import parse_tolerance
    from pytest_qxai.metrics import Metric

    metric = Metric("clock", "score", "a score", "continuous", tolerance="abs:0.05")
    clock = [0.0]
    values, change = np.random.default_rng(0).normal(0.0, 1.0, (2, 100))

    def evaluate(n: int, fractions: Any) -> list[CheckResult]:
        clock[0] += n * 1.0  # one second per item, every look recomputing its items
        return [check_vs_reference(metric, parse_tolerance("abs:0.05"), values[:n], values[:n] - 0.05 + change[:n],
                                   [f"i{i}" for i in range(n)], n_resamples=99, fractions=fractions)]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pytest_qxai.gate.sequential.time.perf_counter", lambda: clock[0])
        (check,) = run_looks(plan(100), evaluate, family=1, seconds=75.0)  # looks of 20, 40: 60 s; 60 more > 75
    assert check.verdict == "inconclusive" and check.notes["sequential"]["stopped"] == "time spent"
    assert check.notes["sequential"]["items"] == 40 and "time spent" in check.reason


@given(st.one_of(st.integers(2, 10**6), st.sampled_from(PROFILES)), st.one_of(st.none(), st.integers(1, 10**5)))
def test_a_budget_reads_back_as_written(limit: int | str, seconds: int | None) -> None:
    """What the report records (``str(budget)``) parses back to the same budget."""
    budget = Budget(limit if isinstance(limit, int) else None, "standard" if isinstance(limit, int) else limit,
                    None if seconds is None else float(seconds))
    assert parse_budget(str(budget), "standard") == budget


@pytest.mark.parametrize("text, budget", [("400", Budget(400, "smoke")), ("full", Budget(None, "full")),
                                          ("5min", Budget(None, "smoke", 300.0)), ("90S", Budget(None, "smoke", 90.0)),
                                          ("standard, 2.5min", Budget(None, "standard", 150.0))])
def test_budget_forms(text: str, budget: Budget) -> None:
    """A number of items, a profile, a time (the run's ``--qxai-profile`` counts then cap the items), or both."""
    assert parse_budget(text, "smoke") == budget


@pytest.mark.parametrize("text", ["", "standard,full", "400,standard", "5min,6min", "0s", "1", "5 hours", "-3", "²"])
def test_a_malformed_budget_is_a_usage_error(text: str) -> None:
    with pytest.raises(QxaiUsageError, match="--qxai-budget"):
        parse_budget(text, "standard")


@given(st.text(max_size=12))
def test_any_budget_text_parses_or_is_a_usage_error(text: str) -> None:
    """Never a traceback: superscripts and other Unicode digits that ``int`` refuses included ("²")."""
    try:
        parse_budget(text, "standard")
    except QxaiUsageError:
        pass


def test_under_exitfirst_a_suite_stops_at_the_look_that_shows_a_failure() -> None:
    """``-x`` ends the run at its first failure: the suite's other checks are not run to the budget for a report
    nobody will read; they end inconclusive and say why."""
    from pytest_qxai.gate.check import CheckResult, check_vs_reference
    from pytest_qxai.gate.tolerance import parse_tolerance
    from pytest_qxai.metrics import Metric

    broken = Metric("xfirst", "broken", "a score", "continuous", tolerance="abs:0.05")
    close = Metric("xfirst", "close", "a score", "continuous", tolerance="abs:0.05")
    values, change = np.random.default_rng(0).normal(0.0, 1.0, (2, 500))
    looks: list[int] = []

    def evaluate(n: int, fractions: Any) -> list[CheckResult]:
        looks.append(n)
        ids = [f"i{i}" for i in range(n)]
        return [check_vs_reference(metric, parse_tolerance("abs:0.05"), values[:n], values[:n] - shift + change[:n],
                                   ids, n_resamples=99, fractions=fractions)
                for metric, shift in ((broken, 2.0), (close, 0.05))]

    checks = {c.metric: c for c in run_looks(plan(500), evaluate, family=1, stop_at_fail=True)}
    assert checks["broken"].verdict == "fail" and looks == [100]
    assert checks["close"].verdict == "inconclusive" and "first failure (-x)" in checks["close"].reason
    looks.clear()
    assert {c.metric: c.verdict for c in run_looks(plan(500), evaluate, family=1)}["broken"] == "fail"
    assert len(looks) > 1  # without -x the suite goes on for its other check


@given(st.integers(1, 400), st.one_of(st.none(), st.integers(2, 400)), st.sampled_from(["array", "list", "dict"]))
def test_batches_cut_at_the_looks_and_joined_parts_are_the_whole(n: int, limit: int | None, kind: str) -> None:
    """A method cached one look's batch at a time gives, joined, what one batch of all its items gives."""
    from pytest_qxai.config import look_counts
    from pytest_qxai.gate.sequential import batches
    from pytest_qxai.models.pair import join_parts

    looks = None if limit is None else look_counts(limit)
    cuts = batches(n, looks)
    assert cuts[0][0] == 0 and cuts[-1][1] == n and all(a < b for a, b in cuts)
    assert all(stop == start for (_, stop), (start, _) in zip(cuts, cuts[1:]))
    assert {stop for _, stop in cuts[:-1]} <= set(looks or ())
    whole = np.arange(n * 2.0).reshape(n, 2)

    def value(rows: np.ndarray) -> Any:
        return {"array": rows, "list": rows.tolist(), "dict": {"a": rows, "b": {"c": rows[:, 0].tolist()}}}[kind]

    joined = join_parts([value(whole[a:b]) for a, b in cuts])
    assert repr(joined) == repr(value(whole))


def test_a_reference_at_chance_settles_once_the_budget_could_not_show_it_above_chance() -> None:
    """The futility rule: at 20 of 72 correct (chance 1/3) the competence test on a budget of 120 would pass with
    predictive probability under 1 % (settled); at 0 of 2, or 8 of 24, a few items say too little (the suite keeps
    looking); at the budget every skip is settled; without the test's counts the skip stays open."""
    from pytest_qxai.gate.check import CheckResult
    from pytest_qxai.gate.sequential import decided
    from pytest_qxai.metrics import AT_CHANCE

    def skip(correct: int, n: int) -> CheckResult:
        return CheckResult("s", "m", "vs_reference", "skipped", f"{AT_CHANCE} on e-SNLI", notes={"precondition": {
            "correct": correct, "n": n, "chance": 1 / 3, "alpha": 0.05, "dependent_metrics": ["m"]}})

    assert decided(skip(20, 72), 120 / 72) and not decided(skip(0, 2), 60.0) and not decided(skip(8, 24), 5.0)
    assert decided(skip(8, 24), 1.0)
    assert not decided(CheckResult("s", "m", "vs_reference", "skipped", f"{AT_CHANCE} on e-SNLI"), 5.0)
    tested_on_the_budget = skip(40, 120)
    tested_on_the_budget.notes["precondition"]["settled"] = True
    assert decided(tested_on_the_budget, 5.0)


def test_the_standard_suites_test_competence_on_the_whole_budget_in_sequential_mode(make_config: Any) -> None:
    """A look tests the reference's competence on the budget's items (the last look's), so the outcome cannot
    change between looks; outside sequential mode on the items given."""
    from types import SimpleNamespace

    from pytest_qxai.methods import standard_suites
    from pytest_qxai.methods.outcomes import competence_items

    standard_suites()
    looked = SimpleNamespace(config=make_config(budget=Budget(None, "standard"), profile="standard",
                                                share=Fraction(1, 5)))
    assert competence_items(looked, "nle", 24) == (120, True)  # type: ignore[arg-type]
    assert competence_items(looked, "nle_faithfulness", 24) == (120, True)  # type: ignore[arg-type]
    fixed = SimpleNamespace(config=make_config(profile="standard"))
    assert competence_items(fixed, "nle", 120) == (120, False)  # type: ignore[arg-type]


def test_the_futility_rule_rarely_drops_a_competent_reference_and_mostly_stops_one_at_chance() -> None:
    """Seeded Monte-Carlo of docs/sequential.md's figures (budget 120, chance 1/3): at the accuracy that gives the
    budget's competence test 95 % power the rule settles at most 3 % of runs early; at chance most of them."""
    from futility_simulation import accuracy_for_power, settled_early

    competent, _ = settled_early(120, 1 / 3, accuracy_for_power(120, 1 / 3, 0.95), reps=1000, seed=1)
    at_chance, used = settled_early(120, 1 / 3, 1 / 3, reps=1000, seed=2)
    assert competent <= 0.03 and at_chance >= 0.6 and used <= 0.8, (competent, at_chance, used)


def test_skips_of_the_run_are_settled_and_skips_more_items_may_lift_stay_open() -> None:
    """A skip that no item count changes (integrated gradients on a CPU, no backward pass) settles at the first
    look; a skip for too few items per label keeps the suite looking (it was settled at once, never tested)."""
    from types import SimpleNamespace

    from pytest_qxai.gate.check import CheckResult
    from pytest_qxai.gate.sequential import decided
    from pytest_qxai.methods.attribution import gradient_plan

    def side(ok: bool) -> SimpleNamespace:
        return SimpleNamespace(role="quantized", backward_ok=lambda: (ok, "no backward"),
                               runtime=SimpleNamespace(device=SimpleNamespace(type="cpu")))

    reasons = [gradient_plan(SimpleNamespace(sides=(side(True), side(ok)), reference=side(True))) for ok in (True, False)]
    too_few = "4 e-SNLI items give too few per NLI label for cross-validated probes (smallest label count 1, ...)"
    for reason, settled in [*((r, True) for r in reasons), (too_few, False)]:
        assert reason is not None
        assert decided(CheckResult("attribution", "ig_sufficiency", "vs_reference", "skipped", reason), 5.0) is settled


def test_a_budget_beyond_the_data_spends_the_rest_of_alpha_where_the_data_ends() -> None:
    """A 40-item file under a budget of a million: once a look adds no item, it is tested as the last one (its
    fractions (t, 1)), so the check gets the whole alpha a fixed run on the 40 items gets, and says so."""
    from pytest_qxai.gate.check import check_vs_reference
    from pytest_qxai.gate.tolerance import parse_tolerance
    from pytest_qxai.metrics import Metric

    metric, band = Metric("s", "acc", "", "binary", bounds=(0, 1)), parse_tolerance("abs:0.1")
    ref = (np.random.default_rng(3).random(40) < 0.7).astype(float)
    ids = [str(i) for i in range(40)]
    calls: list[tuple[int, tuple[float, float]]] = []

    def evaluate(n: int, fractions: tuple[float, float]) -> list[Any]:
        calls.append((n, fractions))
        k = min(n, 40)
        return [check_vs_reference(metric, band, ref[:k], ref[:k].copy(), ids[:k], n_resamples=199,
                                   fractions=fractions)]

    (check,) = run_looks(plan(1_000_000), evaluate, family=1)
    assert check_vs_reference(metric, band, ref, ref.copy(), ids).verdict == check.verdict == "pass"
    assert [f for _, f in calls] == [(0.0, 0.2), (0.2, 0.4), (0.2, 1.0)]
    assert "all 40 items the data has, budget 1000000 (look 2 of 5)" in check.reason


def test_a_baseline_of_other_items_is_skipped_at_a_sequential_look_never_failed_as_stale(
    pytester: pytest.Pytester, demo: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The built-in suites fingerprint the items they ran, and a look runs a prefix of the budget's items: a
    baseline recorded at a fixed count differs from the looks by design. There the comparison is skipped with
    its reason (it failed every look as a stale baseline before); a fixed run still fails a stale one."""
    monkeypatch.setenv("QXAI_DEMO_GAP", "0")
    monkeypatch.setenv("QXAI_DEMO_FP_BY_N", "1")
    run_gate(pytester, *LEAN, "--qxai-update-baselines")  # a fixed run of 60 items records the baseline
    result = run_gate(pytester, *LEAN, "--qxai-budget=1000", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    checks = json.loads((pytester.path / "r.json").read_text())["checks"]
    assert {r["verdict"] for r in checks if r["kind"] == "vs_reference"} == {"pass"}
    versus = [r for r in checks if r["kind"] == "vs_baseline"]
    assert versus and all(r["verdict"] == "skipped" and "recorded on other items" in r["reason"] for r in versus)
    assert run_gate(pytester, *LEAN).ret == pytest.ExitCode.OK  # the baseline's own items: compared
    stale = run_gate(pytester, *LEAN, "--qxai-samples=80")
    assert stale.ret == pytest.ExitCode.TESTS_FAILED and "stale baseline" in stale.stdout.str()
