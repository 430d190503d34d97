"""Seeded Monte-Carlo checks of the gate's guarantees (docs/gate.md reports the larger grid of
``benchmarks/gate_simulation.py``), and that every metric's default band fails a quantized side at chance."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pytest_qxai.gate.bands import _known_metrics
from pytest_qxai.gate.check import check_vs_reference
from pytest_qxai.gate.tolerance import parse_tolerance
from pytest_qxai.metrics import Metric, registered_metrics
from pytest_qxai.methods import standard_suites
from pytest_qxai.profiles import suite_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gate_simulation import ALPHA, BINARY, CONTINUOUS, Scenario, familywise, mc_limit, outcomes  # noqa: E402

BINARY_REPS, CONTINUOUS_REPS = 1000, 200


@pytest.mark.parametrize("n", [10, 30, 100, 300])
@pytest.mark.parametrize("scenario", BINARY[1:], ids=lambda s: s.label)
def test_binary_false_fail_and_false_pass_rates_hold_at_the_band(scenario: Scenario, n: int) -> None:
    """At D = b a check fails at most alpha of the time; at D = 1.1 b it passes at most alpha of the time."""
    p_fail, _ = outcomes(scenario, n, scenario.band, BINARY_REPS, seed=n)
    _, passed = outcomes(scenario, n, 1.1 * scenario.band, BINARY_REPS, seed=n + 1)
    assert np.mean(p_fail < ALPHA) <= mc_limit(ALPHA, BINARY_REPS)
    assert np.mean(passed) <= mc_limit(ALPHA, BINARY_REPS)


EXCEPTIONS = {("skewed left (exponential)", 10, "fail"), ("70% unchanged, skewed rest", 10, "pass")}
"""Ten items with a long tail on the side the decision needs: measured rates about 0.08 and 0.19 (docs/gate.md)."""


@pytest.mark.parametrize("n", [10, 30, 100, 300])
@pytest.mark.parametrize("scenario", CONTINUOUS, ids=lambda s: s.label)
def test_continuous_false_fail_and_false_pass_rates_hold_at_the_band(scenario: Scenario, n: int) -> None:
    p_fail, _ = outcomes(scenario, n, scenario.band, CONTINUOUS_REPS, seed=n, resamples=199)
    _, passed = outcomes(scenario, n, 1.1 * scenario.band, CONTINUOUS_REPS, seed=n + 1, resamples=199)
    for side, rate in (("fail", np.mean(p_fail < ALPHA)), ("pass", np.mean(passed))):
        if (scenario.shape, n, side) not in EXCEPTIONS:
            assert rate <= mc_limit(ALPHA, CONTINUOUS_REPS), side


def test_holm_keeps_the_family_wise_false_fail_rate_of_a_47_check_run() -> None:
    """Every true D at its band: under Holm a run fails at most alpha of the time; unadjusted, most runs fail."""
    reps = 40
    assert familywise(reps, method="holm", resamples=99) <= mc_limit(ALPHA, reps)
    assert familywise(20, method="none", resamples=99) > 0.5


def test_a_degradation_of_twice_the_band_is_usually_caught_at_the_standard_profile() -> None:
    standard_suites()  # registers the knowledge suite whatever this test runs after
    scenario = Scenario("binary", discordance=0.1)
    p_fail, _ = outcomes(scenario, suite_size("knowledge", "standard"), 2 * scenario.band, 400, seed=7)
    assert np.mean(p_fail < ALPHA) > 0.4


# --- every metric's default band against a quantized side at chance ---------------------------------------

Sides = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _labels(classes: int) -> Sides:
    """Label agreement: the reference's own labels vs labels at random (kappa shares)."""
    from pytest_qxai.methods.task import agreement

    return lambda rng, n: agreement(rng.integers(0, classes, n), rng.integers(0, classes, n))


def _rankings(kind: str) -> Sides:
    """Attribution agreement: random rankings of 12-word items (rank correlation or chance-corrected overlap)."""
    from pytest_qxai.methods.attribution import chance_corrected_overlap, k_counts, rank_correlation

    def sides(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(rng.random(12), rng.random(12)) for _ in range(n)]
        values = [rank_correlation(a, b) if kind == "rho" else chance_corrected_overlap(a, b, k_counts(12, [20])[0])
                  for a, b in pairs]
        return np.ones(n), np.array(values)

    return sides


def _at(reference: float, chance: float, sd: float, binary: bool = False) -> Sides:
    """A typical reference level against the metric's value at chance (shuffled or random outputs)."""
    if binary:
        return lambda rng, n: ((rng.random(n) < reference).astype(float), (rng.random(n) < chance).astype(float))
    return lambda rng, n: (reference + sd * rng.standard_normal(n), chance + sd * rng.standard_normal(n))


def _fixed(reference: float, chance: float, sd: float) -> Sides:
    """A metric whose reference side is constant by construction (1 for agreement, 0 for a shift)."""
    return lambda rng, n: (np.full(n, reference), np.clip(chance + sd * rng.standard_normal(n), -1.0, 1.0))


COLLAPSED = _at(0.02, 1.0, 0, binary=True)
"""Degenerate-output rates: pure noise is not their failure mode, a collapsed model (every output degenerate) is."""

CHANCE: dict[str, Sides] = {
    "task_accuracy.esnli_agreement": _labels(3),
    "task_accuracy.ecqa_agreement": _labels(5),
    "task_accuracy.esnli_accuracy": _at(0.7, 1 / 3, 0, binary=True),
    "task_accuracy.ecqa_accuracy": _at(0.6, 1 / 5, 0, binary=True),
    "task_accuracy.label_agreement": _labels(2),  # the fewest classes a classification file can have
    "task_accuracy.label_accuracy": _at(0.8, 1 / 2, 0, binary=True),
    "knowledge.recall_accuracy": _at(0.4, 0.0, 0, binary=True),
    "knowledge.object_logprob": _at(-2.0, -11.0, 2.0),  # uniform over a 49k-token vocabulary: -10.8 nats
    "knowledge.object_log_rank": _at(0.5, 4.4, 0.5),  # median rank of a random token: 24k
    "multihop.first_hop": _at(0.85, 0.5, 0, binary=True),
    "multihop.first_hop_r1": _at(0.85, 0.5, 0, binary=True),  # the relation negative: the same coin flip at chance
    "multihop.second_hop": _at(0.7, 0.5, 0, binary=True),
    "multihop.first_hop_accuracy": _at(0.4, 0.0, 0, binary=True),
    "multihop.second_hop_accuracy": _at(0.6, 0.0, 0, binary=True),
    "multihop.two_hop_accuracy": _at(0.26, 0.0, 0, binary=True),
    "multihop.cnst_score": _at(-3.0, -11.0, 1.5),
    "nle.gold_similarity": _at(0.6, 0.1, 0.15),
    "nle.rouge_l": _at(0.35, 0.05, 0.1),
    "nle.fluency": _at(3.0, 10.8, 0.5),
    "nle.judge_coherence": _at(3.5, 2.0, 0.5),
    "nle.judge_trust": _at(3.5, 2.0, 0.5),
    "nle.fp_agreement": _at(1.0, 0.0, 0.2),
    "nle_faithfulness.cc_shap": _at(0.3, 0.0, 0.3),
    "nle_faithfulness.unfaithful": _at(0.4, 1.0, 0, binary=True),
    "nle_faithfulness.flip": _at(0.2, 0.67, 0, binary=True),  # a random label differs from the original 2/3
    "counterfactual.fluency": _at(3.0, 10.8, 0.5),
    "counterfactual.two_step_fluency": _at(3.0, 10.8, 0.5),
    "counterfactual.minimality": _at(0.2, 0.9, 0.1),
    "counterfactual.two_step_minimality": _at(0.2, 0.9, 0.1),
    "counterfactual.similarity": _at(0.8, 0.1, 0.1),
    "counterfactual.two_step_similarity": _at(0.8, 0.1, 0.1),
    "counterfactual.self_flip": _at(0.7, 0.33, 0, binary=True),
    "counterfactual.two_step_self_flip": _at(0.7, 0.33, 0, binary=True),
    "counterfactual.validity": _at(0.6, 0.33, 0, binary=True),
    "counterfactual.two_step_validity": _at(0.6, 0.33, 0, binary=True),
    "attribution.comprehensiveness": _at(0.15, 0.02, 0.1),
    "attribution.ig_comprehensiveness": _at(0.15, 0.02, 0.1),
    "attribution.sufficiency": _at(0.05, 0.15, 0.1),
    "attribution.ig_sufficiency": _at(0.05, 0.15, 0.1),
    "attribution.rank_correlation": _rankings("rho"),
    "attribution.ig_rank_correlation": _rankings("rho"),
    "attribution.topk_overlap": _rankings("overlap"),
    "attribution.ig_topk_overlap": _rankings("overlap"),
    "neurons.top300_overlap": _at(1.0, 0.01, 0.01),  # 300 of ~46k neurons at random
    "neurons.top300_retained": _at(1.0, 0.01, 0.01),
    "neurons.neurons_above_tau": _at(1.0, 0.01, 0.01),
    "neurons.sublayer_profile_cosine": _at(1.0, 0.0, 0.3),
    "probes.probe_transfer_accuracy": _at(0.6, 1 / 3, 0.2),
    "probes.probe_retrained_accuracy": _at(0.6, 1 / 3, 0.2),
    "probes.representation_cosine": _at(1.0, 0.0, 0.1),
    "probes.worst_layer_cosine": _fixed(1.0, 0.0, 0.2),
    "multihop.worst_layer_entrec_shift": _fixed(0.0, 0.3, 0.1),  # bridge-entity probability moved by 0.3
    "neurons.worst_layer_top300_shift": _fixed(0.0, 0.3, 0.1),  # top-300 spread evenly instead of concentrated
    "nle.ecqa_gold_similarity": _at(0.6, 0.1, 0.15),
    "nle.ecqa_rouge_l": _at(0.35, 0.05, 0.1),
    "nle.ecqa_fluency": _at(3.0, 10.8, 0.5),
    "nle.ecqa_fp_agreement": _at(1.0, 0.0, 0.2),
    "nle_faithfulness.ecqa_flip": _at(0.2, 0.8, 0.2),  # a random answer among five differs 4/5 of the time
    "nle_faithfulness.ecqa_unfaithful": _at(0.1, 0.8, 0.2),
    "counterfactual.ecqa_fluency": _at(3.0, 10.8, 0.5),
    "counterfactual.ecqa_minimality": _at(0.2, 0.9, 0.1),
    "counterfactual.ecqa_similarity": _at(0.8, 0.1, 0.1),
    "counterfactual.ecqa_self_flip": _at(0.6, 0.2, 0, binary=True),
    "counterfactual.ecqa_validity": _at(0.5, 0.2, 0, binary=True),
    **{key: COLLAPSED for key in (
        "attribution.degenerate_rate", "attribution.ig_degenerate_rate", "counterfactual.degenerate_rate",
        "counterfactual.ecqa_degenerate_rate", "counterfactual.two_step_degenerate_rate", "nle.degenerate_rate",
        "nle.ecqa_degenerate_rate", "nle_faithfulness.degenerate_rate")},
}
"""Per metric: a reference at a typical level and a quantized side at chance (what random outputs score)."""
BINARY_LABELS = {  # a two-label classification file: a random label differs from the original half the time
    "nle_faithfulness.label_flip": _at(0.2, 0.5, 0, binary=True),
    "counterfactual.label_self_flip": _at(0.8, 0.5, 0, binary=True),
    "counterfactual.label_validity": _at(0.8, 0.5, 0, binary=True),
    "probes.label_probe_transfer_accuracy": _at(0.8, 0.5, 0.2),
    "probes.label_probe_retrained_accuracy": _at(0.8, 0.5, 0.2),
}
CHANCE |= BINARY_LABELS | {  # classification files' metrics otherwise score as their e-SNLI counterparts do
    f"{suite}.label_{name}": CHANCE[f"{suite}.{name}"] for suite, name in (
        ("counterfactual", "degenerate_rate"), ("counterfactual", "fluency"), ("counterfactual", "minimality"),
        ("counterfactual", "similarity"), ("nle", "degenerate_rate"), ("nle", "fluency"), ("nle", "fp_agreement"),
        ("nle", "gold_similarity"), ("nle", "judge_coherence"), ("nle", "judge_trust"), ("nle", "rouge_l"),
        ("nle_faithfulness", "cc_shap"), ("nle_faithfulness", "degenerate_rate"), ("nle_faithfulness", "unfaithful"),
        ("probes", "representation_cosine"), ("probes", "worst_layer_cosine"))}
CHANCE |= {  # ECQA attributions (occlusion of the cloze answer) score as their e-SNLI counterparts do
    f"attribution.ecqa_{name}": CHANCE[f"attribution.{name}"]
    for name in ("comprehensiveness", "sufficiency", "rank_correlation", "topk_overlap", "degenerate_rate")}
BUDGETS = {"nle_faithfulness.cc_shap": "cc_shap", **{f"attribution.ecqa_{name}": "ecqa" for name in (
    "comprehensiveness", "sufficiency", "rank_correlation", "topk_overlap", "degenerate_rate")}}
"""Metrics measured on a part of their suite with its own item count (``Suite.budgets``)."""


def units(key: str, n: int) -> int:
    """The metric's units among the suite's first ``n`` items: fewer than ``n`` for ``multihop.first_hop_r1``,
    whose units are the items whose first hop has a relation of the same range to substitute."""
    if key != "multihop.first_hop_r1":
        return n
    from types import SimpleNamespace

    from pytest_qxai.methods.multihop import twohop_items

    items, _, _ = twohop_items(SimpleNamespace(config=SimpleNamespace(seed=0, data={})), n)  # type: ignore[arg-type]
    return sum(it.relation_negative is not None for it in items)


def test_every_registered_metric_has_a_chance_scenario() -> None:
    _known_metrics()
    standard = {suite.name for suite in standard_suites()}
    assert {m.key for m in registered_metrics() if m.suite in standard} <= set(CHANCE)


LOW_POWER = {"counterfactual.ecqa_validity": "48 items at the standard profile, reference validity 0.5 vs chance 0.2: "
                                            "power about 0.8, and this seed's draw is inconclusive (p = 0.053)"}
"""Metrics whose standard profile cannot reliably fail a chance side (reported in docs/gate.md)."""


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.xfail(reason=LOW_POWER[k], strict=True))
                                 if k in LOW_POWER else k for k in sorted(CHANCE)])
def test_a_quantized_side_at_chance_fails_its_default_band_at_the_standard_profile(key: str) -> None:
    _known_metrics()
    metric: Metric = next(m for m in registered_metrics() if m.key == key)
    n = units(key, suite_size(metric.suite, "standard", budget=BUDGETS.get(key)))
    reference, quantized = CHANCE[key](np.random.default_rng(0), n)
    result = check_vs_reference(metric, parse_tolerance(metric.tolerance), reference, quantized,
                                [str(i) for i in range(n)], n_resamples=999)
    assert result.verdict == "fail", result.reason
