"""The gate's decision: fail when the data show a degradation beyond the band, pass when they show one within it,
inconclusive otherwise (with what would decide it); vs reference and vs baseline alike."""

from __future__ import annotations

import json
import re
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai.baselines import record_of
from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.gate.check import (
    CheckResult,
    check_vs_baseline,
    check_vs_reference,
    metadata_changes,
    summarize,
)
from pytest_qxai.gate.tolerance import parse_tolerance
from pytest_qxai.metrics import Metric, SuiteResult
from pytest_qxai.options import QxaiConfig
from pytest_qxai.session import QxaiSession

FAST = {"n_resamples": 199}
ACC = Metric("nli", "accuracy", "share correct", "binary", "higher")
SIM = Metric("nle", "similarity", "cosine to gold", "continuous", "higher")
PPL = Metric("nle", "perplexity", "fluency", "continuous", "lower")


def ids(n: int) -> list[str]:
    return [f"item-{i}" for i in range(n)]


def binary_pair(n: int, lost: int, gained: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference all-correct except the ``gained`` items; quantized loses ``lost`` items."""
    ref = np.ones(n)
    ref[:gained] = 0
    quant = ref.copy()
    quant[:gained] = 1
    quant[gained : gained + lost] = 0
    return ref, quant


def vs_ref(metric: Metric, band: str, ref: np.ndarray, quant: np.ndarray) -> CheckResult:
    return check_vs_reference(metric, parse_tolerance(band), ref, quant, ids(ref.size), **FAST)


def test_significant_degradation_beyond_the_band_fails() -> None:
    result = vs_ref(ACC, "abs:0.03", *binary_pair(200, lost=20))
    assert result.verdict == "fail"
    assert result.delta == pytest.approx(-0.1)
    assert result.reference == 1.0 and result.quantized == pytest.approx(0.9) and result.n == 200
    assert result.ci is not None and result.ci[0] <= -0.1 <= result.ci[1] and result.ci[1] < -0.03
    assert result.p_value is not None and result.p_value < 0.05 and result.p_adjusted == result.p_value
    assert "degraded" in result.reason and "Tango score" in result.reason and "abs:0.03" in result.reason


def test_degradation_shown_within_the_band_passes() -> None:
    """D = 0.1 with its upper bound inside a 0.15 band: non-inferiority shown, though D is clearly not 0."""
    result = vs_ref(ACC, "abs:0.15", *binary_pair(200, lost=20))
    assert result.verdict == "pass" and result.ci is not None and result.ci[0] > -0.15
    assert "within the band" in result.reason and result.n_needed is None


def test_an_interval_that_straddles_the_band_is_inconclusive_with_what_would_decide_it() -> None:
    result = vs_ref(ACC, "abs:0.03", *binary_pair(10, lost=2))
    assert result.verdict == "inconclusive" and result.p_value is not None and result.p_value >= 0.05
    assert result.ci is not None and result.ci[0] < -0.03 < result.ci[1]
    assert result.mdd is not None and result.mdd > 0.03
    assert result.n_needed is not None and result.n_needed > 10
    assert f"about {result.n_needed} items would decide it" in result.reason


def test_the_band_is_the_null_hypothesis_of_the_fail_test() -> None:
    """A degradation exactly at the band is not a failure however many items show it."""
    result = vs_ref(ACC, "abs:0.1", *binary_pair(2000, lost=200))
    assert result.verdict == "inconclusive" and result.p_value is not None and result.p_value > 0.4


def test_significant_improvement_is_reported_not_failed() -> None:
    ref, quant = binary_pair(200, lost=0, gained=30)
    result = vs_ref(ACC, "abs:0.03", ref, quant)
    assert result.verdict == "improved" and result.delta == pytest.approx(0.15)


def test_two_sided_band_fails_both_ways() -> None:
    ref, quant = binary_pair(200, lost=0, gained=30)
    result = vs_ref(ACC, "abs:0.03,two-sided", ref, quant)
    assert result.verdict == "fail" and "changed" in result.reason


def test_lower_is_better_metric_degrades_upwards() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(10, 20, 100)
    assert vs_ref(PPL, "rel:0.05", ref, ref * 1.2).verdict == "fail"
    assert vs_ref(PPL, "rel:0.05", ref, ref * 0.8).verdict == "improved"


def test_relative_band_scales_with_the_reference() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.4, 0.6, 200)
    quant = ref - 0.04 + rng.normal(0, 0.01, 200)
    assert vs_ref(SIM, "rel:0.1", ref, quant).verdict == "pass"  # band ±0.05 around 0.5
    assert vs_ref(SIM, "rel:0.05", ref, quant).verdict == "fail"  # band ±0.025


def test_alpha_decides_significance() -> None:
    result = vs_ref(ACC, "abs:0.03", *binary_pair(100, lost=8))
    assert result.p_value is not None and 0.01 < result.p_value < 0.05 and result.verdict == "fail"
    assert vs_ref(ACC, "abs:0.03,alpha=0.01", *binary_pair(100, lost=8)).verdict == "inconclusive"


def test_the_planned_family_raises_the_bar_at_test_time() -> None:
    ref, quant = binary_pair(100, lost=8)
    result = check_vs_reference(ACC, parse_tolerance("abs:0.03"), ref, quant, ids(100), family=10, **FAST)
    assert result.p_value is not None and result.p_adjusted == pytest.approx(min(1.0, 10 * result.p_value))
    assert result.verdict == "inconclusive"


def test_identical_values_decide_only_with_enough_items() -> None:
    """No spread is not proof: a share 1 - alpha**(1/n) of unseen items could still differ anywhere."""
    bounded = Metric("nle", "share", "a share", "continuous", "higher", bounds=(0.0, 1.0))
    values = np.linspace(0, 1, 300)
    assert vs_ref(bounded, "abs:0.03", values, values.copy()).verdict == "pass"
    assert vs_ref(bounded, "abs:0.03", values[:24], values[:24].copy()).verdict == "inconclusive"


def test_the_same_model_on_both_sides_passes_by_identity_only_where_every_item_agrees() -> None:
    """``--quant=none``: identical values of one model pass at any n; one differing item goes back to the test."""
    values = np.linspace(0, 1, 24)
    values[3] = np.nan
    same = check_vs_reference(SIM, parse_tolerance("abs:0.03"), values, values.copy(), ids(24), same_model=True,
                              **FAST)
    assert (same.verdict, same.delta, same.ci, same.p_value) == ("pass", 0.0, (0.0, 0.0), 1.0)
    assert "delta 0 by identity" in same.reason and same.n == 23
    moved = values.copy()
    moved[0] += 1e-6
    tested = check_vs_reference(SIM, parse_tolerance("abs:0.03"), values, moved, ids(24), same_model=True, **FAST)
    assert "by identity" not in tested.reason and "bootstrap" in tested.reason
    assert vs_ref(SIM, "abs:0.03", values, values.copy()).verdict == "inconclusive"  # two models: data only


def test_nan_items_are_not_applicable_and_n_counts_pairs() -> None:
    ref = np.array([0.5, np.nan, 0.7, 0.6, np.nan])
    quant = np.array([0.5, 0.4, np.nan, 0.6, np.nan])
    result = vs_ref(SIM, "abs:0.1", ref, quant)
    assert result.n == 2 and result.delta == 0.0
    assert result.reference_items == [0.5, None, 0.7, 0.6, None]
    assert result.lost == {"reference": 1, "quantized": 1}  # the last item is NaN on both: not a unit of the metric


def test_fewer_than_two_pairs_is_skipped_with_the_reason() -> None:
    result = vs_ref(SIM, "abs:0.1", np.array([0.5, np.nan]), np.array([0.1, 0.2]))
    assert result.verdict == "skipped" and "only 1 item" in result.reason and result.delta is None


unit_values = st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=40, deadline=None)
@given(values=unit_values, band=st.sampled_from(["abs:0", "rel:0", "abs:0,two-sided", "abs:0.1"]),
       metric=st.sampled_from([ACC, SIM, PPL]))
def test_a_zero_difference_never_fails(values: list[float], band: str, metric: Metric) -> None:
    ref = np.round(values) if metric.kind == "binary" else np.array(values)
    assert vs_ref(metric, band, ref, ref.copy()).verdict in ("pass", "inconclusive")


@settings(max_examples=30, deadline=None)
@given(ref=unit_values, noise=st.lists(st.floats(-0.5, 0.5, allow_nan=False), min_size=40, max_size=40),
       small=st.floats(0, 0.3), extra=st.floats(0, 0.3), two_sided=st.booleans())
def test_bands_are_monotone_in_the_tolerance(
    ref: list[float], noise: list[float], small: float, extra: float, two_sided: bool
) -> None:
    """Widening the band never turns a pass into a failure, nor a non-failure into one."""
    a = np.array(ref)
    b = a + np.array(noise[: a.size])
    suffix = ",two-sided" if two_sided else ""
    narrow = vs_ref(SIM, f"abs:{small}{suffix}", a, b)
    wide = vs_ref(SIM, f"abs:{small + extra}{suffix}", a, b)
    if wide.verdict == "fail":
        assert narrow.verdict == "fail"
    if narrow.verdict == "pass":
        assert wide.verdict in ("pass", "improved")


def baseline_of(result: CheckResult, fingerprint: dict[str, str] | None = None) -> dict:
    result.fingerprint = fingerprint or {}
    return record_of(result)


def test_regression_against_the_baseline_fails_while_the_reference_check_passes() -> None:
    """Re-quantization regression: the gap moved from +0.04 to -0.04 (band 0.05 each way vs reference)."""
    rng = np.random.default_rng(2)
    ref = rng.uniform(0.3, 0.7, 150)
    old = vs_ref(SIM, "abs:0.05", ref, ref + 0.04 + rng.normal(0, 0.01, 150))
    new = vs_ref(SIM, "abs:0.05", ref, ref - 0.04 + rng.normal(0, 0.01, 150))
    assert old.verdict == new.verdict == "pass"
    results = check_vs_baseline(new, baseline_of(old), parse_tolerance("abs:0.05"), baseline_file="b.json",
                                current_metadata={}, stored_metadata={}, **FAST)
    assert [r.kind for r in results] == ["vs_baseline"]
    assert results[0].verdict == "fail" and results[0].delta == pytest.approx(-0.08, abs=0.01)
    assert results[0].baseline == pytest.approx(old.quantized)
    assert "b.json" in results[0].reason


def test_baseline_items_are_matched_by_id_not_position() -> None:
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.3, 0.7, 60)
    quant = ref - rng.uniform(0, 0.02, 60)
    old = vs_ref(SIM, "abs:0.05", ref, quant)
    stored = baseline_of(old)
    stored["items"] = dict(reversed(list(stored["items"].items())))
    results = check_vs_baseline(old, stored, parse_tolerance("abs:0.05"), baseline_file="b.json",
                                current_metadata={}, stored_metadata={}, **FAST)
    assert results[0].delta == 0.0 and results[0].verdict == "pass" and results[0].n == 60


def test_stale_fingerprint_fails_naming_the_key() -> None:
    ref, quant = binary_pair(50, lost=1)
    old = vs_ref(ACC, "abs:0.05", ref, quant)
    stored = baseline_of(old, {"data": "aaa", "templates": "t1"})
    old.fingerprint = {"data": "bbb", "templates": "t1"}
    (result,) = check_vs_baseline(old, stored, parse_tolerance("abs:0.05"), baseline_file="baselines/m/bnb4.json",
                                  current_metadata={}, stored_metadata={}, **FAST)
    assert result.verdict == "fail"
    assert result.reason == ("stale baseline baselines/m/bnb4.json: fingerprint data changed; "
                             "re-record with --qxai-update-baselines")


def test_reference_drift_is_inconclusive_with_the_recorded_cause() -> None:
    rng = np.random.default_rng(4)
    ref = rng.uniform(0.3, 0.7, 100)
    noise = rng.normal(0, 0.002, 100)
    old = vs_ref(SIM, "abs:0.02", ref, ref - 0.01 + noise)
    new = vs_ref(SIM, "abs:0.02", ref + 0.1 + noise, ref + 0.09 + noise)
    results = check_vs_baseline(
        new, baseline_of(old), parse_tolerance("abs:0.02"), baseline_file="b.json",
        current_metadata={"libraries": {"transformers": "5.23.0"}, "model_hash": "abc"},
        stored_metadata={"libraries": {"transformers": "5.17.0"}, "model_hash": "abc"}, **FAST)
    assert [(r.kind, r.verdict) for r in results] == [("vs_baseline", "pass"), ("reference_drift", "inconclusive")]
    assert "the reference itself changed" in results[1].reason
    assert "libraries.transformers 5.17.0->5.23.0" in results[1].reason


def test_metadata_changes_lists_differing_leaves() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}}
    new = {"a": 1, "b": {"c": 5}, "e": 0}
    assert metadata_changes(old, new) == ["b.c 2->5", "b.d 3->?", "e ?->0"]


def test_summary_counts_and_overall_verdict() -> None:
    def r(verdict: str) -> CheckResult:
        return CheckResult("s", "m", "vs_reference", verdict, "")  # type: ignore[arg-type]

    assert summarize([r("pass"), r("improved")])["verdict"] == "pass"
    assert summarize([r("pass"), r("inconclusive")])["verdict"] == "inconclusive"
    summary = summarize([r("fail"), r("inconclusive"), r("skipped")])
    assert summary["verdict"] == "fail" and summary["counts"]["skipped"] == 1 and summary["checks"] == 3


def test_result_dict_round_trip() -> None:
    result = vs_ref(SIM, "abs:0.05", np.array([0.1, 0.2, np.nan]), np.array([0.1, 0.25, 0.3]))
    assert CheckResult.from_dict(result.to_dict()) == result


@pytest.mark.parametrize(
    ("reference", "quantized", "item_ids", "message"),
    [
        ([1.0, 0.0], [1.0], None, "2 reference values, 1 quantized values and 2 item ids"),
        ([1.0, 0.0], [1.0, 0.0], ["a", "a"], "item ids are not unique"),
        ([1.0, 0.5], [1.0, 0.0], None, "nli.accuracy is binary: per-item values must be 0, 1 or NaN"),
    ],
)
def test_session_rejects_malformed_values(make_config: Callable[..., QxaiConfig], reference: list[float],
                                          quantized: list[float], item_ids: list[str] | None, message: str) -> None:
    with pytest.raises(QxaiUsageError, match=re.escape(message)):
        QxaiSession(make_config()).check(ACC, reference, quantized, item_ids=item_ids)


def test_check_suite_takes_its_profiles_and_records_skips(make_config: Callable[..., QxaiConfig]) -> None:
    session = QxaiSession(make_config(update_baselines="all"), n_resamples=99)
    values = np.linspace(0, 1, 300)
    suite = SuiteResult(
        "nle", ids(300), {"similarity": values}, {"similarity": values}, {"data": "d"},
        profiles={"similarity/per layer": {"reference": [1.0]}, "other": {"reference": [2.0]}},
        skipped={"perplexity": "no scorer model"},
    )
    (checked, recorded) = session.check_suite(suite, SIM)
    assert checked.verdict == "pass" and checked.profiles == {"similarity/per layer": {"reference": [1.0]}}
    assert checked.fingerprint == {"data": "d"} and recorded.verdict == "skipped"
    (skipped,) = session.check_suite(suite, PPL)
    assert (skipped.verdict, skipped.reason) == ("skipped", "no scorer model")


def test_worker_output_merges_on_the_controller(make_config: Callable[..., QxaiConfig]) -> None:
    worker = QxaiSession(make_config(), n_resamples=99)
    worker.metadata.update({"model_id": "org/model", "versions": {"torch": "2.13.0"}})
    worker.check(SIM, np.linspace(0, 1, 10), np.linspace(0, 1, 10))
    data = json.loads(json.dumps(worker.to_workeroutput()))  # what crosses the process boundary
    controller = QxaiSession(make_config(), n_resamples=99)
    controller.merge_workeroutput(data)
    assert controller.results == worker.results
    assert controller.model_id == "org/model" and controller.metadata["versions"] == {"torch": "2.13.0"}


def test_each_workers_device_is_kept(make_config: Callable[..., QxaiConfig],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    controller = QxaiSession(make_config(), n_resamples=99)
    for worker_id, device in (("gw0", "cuda:0"), ("gw1", "cuda:1")):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker_id)
        worker = QxaiSession(make_config(), n_resamples=99)
        worker.metadata.update({"device": device, "cpu_threads": 16, "load_seconds": 4.0, "model_id": "m"})
        controller.merge_workeroutput(json.loads(json.dumps(worker.to_workeroutput())))
    assert controller.metadata["workers"] == {
        "gw0": {"device": "cuda:0", "cpu_threads": 16, "load_seconds": 4.0},
        "gw1": {"device": "cuda:1", "cpu_threads": 16, "load_seconds": 4.0},
    }
    assert "workers" in controller.run_metadata() and "workers" not in controller.run_metadata(stable=True)


def test_an_item_changed_by_an_infinite_amount_fails_whatever_the_other_items_do() -> None:
    """A log-probability of -inf on one item makes the mean change -inf: certain, not an undefined interval."""
    logprob = Metric("k", "logprob", "log-probability", "continuous", "higher")
    ref = np.linspace(-3.0, -1.0, 300)
    quant = ref.copy()
    quant[7] = -np.inf
    result = vs_ref(logprob, "abs:0.1", ref, quant)
    assert (result.verdict, result.delta, result.p_value) == ("fail", -np.inf, 0.0)
    assert "infinite" in result.reason
    quant[8] = np.inf  # infinities of both signs: the mean change is undefined, nothing is shown
    assert vs_ref(logprob, "abs:0.1", ref, quant).verdict == "inconclusive"


def test_an_item_at_the_same_infinity_on_both_sides_is_unchanged_and_hides_no_regression() -> None:
    """-inf on both sides is a change of 0 (was NaN, read as improved): the other items' loss of 3 nats fails."""
    logprob = Metric("k", "logprob", "log-probability", "continuous", "higher")
    ref = np.r_[-np.inf, np.linspace(-2.0, -1.0, 50)]
    loss = np.r_[0.0, np.random.default_rng(0).normal(3.0, 0.3, 50)]
    result = vs_ref(logprob, "abs:0.1", ref, ref - loss)
    assert result.verdict == "fail" and result.delta == pytest.approx(-loss.mean())
    assert vs_ref(logprob, "abs:0.1", ref, ref.copy()).verdict == "pass"


def test_equal_values_of_a_metric_without_bounds_show_no_range_and_do_not_pass() -> None:
    """The span of an unbounded metric comes from the values seen; all equal values give no span, not a zero one."""
    rank = Metric("k", "log_rank", "log10 rank", "continuous", "lower")
    for n in (2, 24, 300):
        result = vs_ref(rank, "abs:0.05", np.zeros(n), np.zeros(n))
        assert result.verdict == "inconclusive" and result.ci == (-np.inf, np.inf)


def test_resamples_without_spread_do_not_count_as_unchanged() -> None:
    """Six unchanged items and two that lost 0.02: a resample of only unchanged items lies infinitely far from
    the mean in t (its se* is 0), so it widens the interval instead of narrowing it to a pass."""
    bounded = Metric("nle", "share", "a share", "continuous", "higher", bounds=(0.0, 1.0))
    ref = np.full(8, 0.5)
    quant = ref.copy()
    quant[:2] -= 0.02
    assert vs_ref(bounded, "abs:0.05", ref, quant).verdict == "inconclusive"


def test_the_reason_names_the_items_left_out_per_side() -> None:
    ref = np.linspace(0.2, 0.8, 40)
    quant = ref.copy()
    quant[:30] = np.nan
    result = vs_ref(SIM, "abs:0.1", ref, quant)
    assert result.n == 10 and "left out: 30 quantized item(s) without a value" in result.reason


@pytest.mark.parametrize("field, value", [("direction", "Higher"), ("direction", "up"), ("kind", "Binary"),
                                          ("bounds", (1.0, -1.0)), ("bounds", (0.0, 0.0))])
def test_a_metric_outside_the_gate_vocabulary_is_refused(field: str, value: str) -> None:
    """Any direction but "higher" was read as lower-is-better, which inverted the metric's every verdict."""
    with pytest.raises(ValueError, match=f"{field} must be"):
        Metric("demo", "accuracy", "share correct", **{"kind": "binary", "direction": "higher", field: value})
