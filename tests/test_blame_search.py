"""The blame search on synthetic models: it finds where the damage is, within a log(layers) budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai.blame.search import BEAM, GREEDY_STEPS, MAX_MEASUREMENTS, Recovery, max_kept_layers, recovery, search, \
    whole_layers
from pytest_qxai.specs import COMPONENTS, KeepUnits

ITEMS = 40


def synthetic(damage: dict[tuple[int, str], float], seed: int = 0):
    """A model whose regression is additive over sublayers: restoring a unit gives back its ``damage`` share.

    Per item the share varies (noise), so intervals have width; ``evaluate`` returns the recovery measured on
    40 binary-like items, and ``calls`` counts measurements.
    """
    rng = np.random.default_rng(seed)
    total = sum(damage.values())
    reference, quantized = np.ones(ITEMS), np.zeros(ITEMS)
    jitter = rng.uniform(0.8, 1.2, size=ITEMS)
    calls: list[KeepUnits] = []

    def evaluate(units: KeepUnits) -> Recovery:
        calls.append(units)
        share = sum(damage.get(u, 0.0) for u in units) / total
        restored = np.clip(share * jitter, 0, 1)
        return recovery(reference, quantized, restored, seed=0)

    return evaluate, calls


def budget(n_layers: int) -> int:
    """The search's own bound: all layers, 2 * BEAM groups per halving level, the unions and sublayer splits."""
    return 1 + 2 * BEAM * math.ceil(math.log2(n_layers)) + GREEDY_STEPS + 2 * len(COMPONENTS)


def one_per_layer(units: KeepUnits) -> int:
    return len(units)


def test_damage_in_three_layers_is_found_and_the_proposal_is_small() -> None:
    damage = {(layer, part): 0.2 for layer in range(30) for part in COMPONENTS}
    for layer in (17, 18, 19):
        damage[(layer, "mlp")] = 8.0
    evaluate, calls = synthetic(damage)
    found = search(30, evaluate, one_per_layer, target=0.5)
    assert found.proposal is not None
    assert found.proposal.recovery.share >= 0.5
    assert {layer for layer, _ in found.proposal.units} <= {16, 17, 18, 19}
    assert len(found.proposal.units) <= 30 // 4
    assert len(calls) == len(set(calls)) <= budget(30)


def test_mlp_only_damage_proposes_mlp_sublayers() -> None:
    damage = {(layer, part): 0.01 for layer in range(8) for part in COMPONENTS}
    damage[(5, "mlp")] = 10.0
    found = search(8, synthetic(damage)[0], one_per_layer, target=0.5)
    assert found.proposal is not None and found.proposal.units == frozenset({(5, "mlp")})


def test_no_restoration_reaching_the_target_proposes_nothing() -> None:
    damage = {(layer, part): 1.0 for layer in range(16) for part in COMPONENTS}
    found = search(16, synthetic(damage)[0], one_per_layer, target=0.9, limit=5)
    assert found.proposal is None  # only all 16 layers reach 90 %: spread, not a proposal
    assert found.spread is not None and found.spread.units == whole_layers(range(16))
    assert len(found.probes) <= 5 and found.exhausted


def all_or_nothing(n_layers: int):
    """The pattern measured on SmolLM2 at hqq2: only restoring every layer recovers anything (errors compound)."""
    every = whole_layers(range(n_layers))

    def evaluate(units: KeepUnits) -> Recovery:
        return recovery(np.ones(ITEMS), np.zeros(ITEMS), np.ones(ITEMS) if units == every else np.zeros(ITEMS))

    return evaluate


def test_damage_spread_over_every_layer_is_no_localized_cause() -> None:
    found = search(30, all_or_nothing(30), one_per_layer, target=0.5)
    assert found.proposal is None
    assert found.spread is not None and found.spread.layers == 30 and found.spread.recovery.share == 1.0


@pytest.mark.parametrize(("n_layers", "allowed"), [(1, 1), (2, 1), (7, 1), (8, 2), (30, 7), (32, 8), (64, 16)])
def test_a_proposal_keeps_at_most_a_quarter_of_the_layers(n_layers: int, allowed: int) -> None:
    assert max_kept_layers(n_layers) == allowed


@settings(max_examples=40, deadline=None)
@given(n_layers=st.integers(2, 48), spread=st.integers(1, 48), seed=st.integers(0, 99))
def test_proposals_are_localized_and_spread_damage_is_reported(n_layers: int, spread: int, seed: int) -> None:
    """Damage shared equally by ``spread`` consecutive layers: a proposal never keeps more than a quarter of the
    layers, and when none is made although a restoration reached the target, that restoration is ``spread``."""
    spread = min(spread, n_layers)
    damage = {(layer, part): (1.0 if layer < spread else 0.0) for layer in range(n_layers) for part in COMPONENTS}
    found = search(n_layers, synthetic(damage, seed)[0], one_per_layer, target=0.5)
    if found.proposal is not None:
        assert found.proposal.layers <= max_kept_layers(n_layers) and found.spread is None
    else:
        assert found.spread is not None and found.spread.layers > max_kept_layers(n_layers)
        assert found.spread.recovery.share >= 0.5


@settings(max_examples=40, deadline=None)
@given(n_layers=st.integers(2, 64), culprit=st.integers(0, 63), weight=st.floats(0.6, 0.95), seed=st.integers(0, 99))
def test_a_dominant_layer_is_always_in_the_proposal(n_layers: int, culprit: int, weight: float, seed: int) -> None:
    culprit %= n_layers
    rest = (1 - weight) / max(2 * n_layers - 2, 1)
    damage = {(layer, part): rest for layer in range(n_layers) for part in COMPONENTS}
    damage[(culprit, "attn")] = damage[(culprit, "mlp")] = weight / 2
    evaluate, calls = synthetic(damage, seed)
    found = search(n_layers, evaluate, one_per_layer, target=0.5)
    assert found.proposal is not None and culprit in {layer for layer, _ in found.proposal.units}
    assert len(calls) <= min(budget(n_layers), MAX_MEASUREMENTS)


def test_recovery_share_and_interval() -> None:
    reference, quantized = np.ones(10), np.zeros(10)
    restored = np.array([1.0] * 5 + [0.0] * 5)
    got = recovery(reference, quantized, restored, seed=1)
    assert got.share == pytest.approx(0.5)
    assert got.ci[0] < 0.5 < got.ci[1] and 0 <= got.ci[0] and got.ci[1] <= 1
    assert recovery(reference, quantized, reference).ci == (1.0, 1.0)
    lower = recovery(-reference, -quantized, -restored, higher_is_better=False, seed=1)  # direction flips the sign
    assert lower.share == pytest.approx(0.5)


def test_recovery_interval_covers_the_true_share() -> None:
    """Seeded Monte-Carlo: the 95 % paired interval covers the true recovery share in about 95 % of runs."""
    rng = np.random.default_rng(7)
    true, hits, runs = 0.6, 0, 300
    for run in range(runs):
        restored = (rng.uniform(size=60) < true).astype(float)
        got = recovery(np.ones(60), np.zeros(60), restored, seed=run)
        hits += got.ci[0] <= true <= got.ci[1]
    assert 0.90 <= hits / runs <= 0.99


def test_regressed_items_are_the_largest_regressions_in_the_metrics_direction() -> None:
    from pytest_qxai.blame.run import regressed_items
    from pytest_qxai.gate.check import CheckResult
    from pytest_qxai.metrics import Metric

    lower = Metric("demo", "rank", "rank", "continuous", direction="lower")
    check = CheckResult("demo", "rank", "vs_reference", "fail", "", item_ids=["a", "b", "c", "d"],
                        reference_items=[1.0, 1.0, None, 2.0], quantized_items=[3.0, 0.5, 9.0, 2.5])
    ids, ref, quant = regressed_items(check, lower)
    assert ids == ["a", "d"] and list(ref) == [1.0, 2.0] and list(quant) == [3.0, 2.5]  # NaN and gains left out


def test_blame_is_skipped_with_one_line_where_it_cannot_run() -> None:
    from pytest_qxai.blame.run import why_not
    from pytest_qxai.gate.check import CheckResult
    from pytest_qxai.specs import parse_spec

    import pytest_qxai.methods.knowledge  # noqa: F401 - registers the knowledge suite's blame support

    recall = CheckResult("knowledge", "recall_accuracy", "vs_reference", "fail", "")
    assert why_not(parse_spec("hqq2"), None, recall) is None
    assert why_not(parse_spec("none"), None, recall) == ("the none backend cannot keep modules in full precision "
                                                         "(keep= works with bnb, hqq, quanto, torchao)")
    assert "is a fixed checkpoint" in str(why_not(parse_spec("bnb4"), "ckpt", recall))
    other = CheckResult("nle", "gold_similarity", "vs_reference", "fail", "")
    assert why_not(parse_spec("hqq2"), None, other) == ("blame not supported for this metric: the nle suite cannot "
                                                        "re-measure gold_similarity")
