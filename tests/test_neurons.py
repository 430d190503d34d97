"""Neuron-level attribution: hand-worked importances, the pruning bound, exactness against brute force, plumbing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_qxai.methods import neurons as N  # noqa: E402
from pytest_qxai.methods.arch import ModelParts, model_parts  # noqa: E402
from test_arch import tiny_pair, tiny_runtime_at  # noqa: E402


def hand_parts() -> ModelParts:
    """d = 2, vocabulary of 3, no final norm, W_U = [[1, 0], [0, 1], [0, 0]]: logits are the residual plus a 0."""
    unembed = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        unembed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    return ModelParts("hand", torch.nn.Identity(), unembed.requires_grad_(False), (), down_transposed=False)


LN2 = math.log(2.0)


def test_importance_by_hand() -> None:
    """From h = 0 (uniform, p(w=0) = 1/3): +[ln 2, 0] gives p = 2/4, +[0, ln 2] gives p = 1/4."""
    imp = N.importance(hand_parts(), torch.zeros(2), torch.tensor([[LN2, 0.0], [0.0, LN2], [0.0, 0.0]]), token=0)
    np.testing.assert_allclose(imp.numpy(), [math.log(3 / 2), math.log(3 / 4), 0.0], atol=1e-6)


def test_bound_by_hand_and_above_the_exact_importance() -> None:
    """U = Δz_w − p·Δz with p uniform: (2/3) ln 2 and −(1/3) ln 2."""
    parts, added = hand_parts(), torch.tensor([[LN2, 0.0], [0.0, LN2]])
    bound = N.importance_bound(parts, torch.zeros(2), added, token=0)
    np.testing.assert_allclose(bound.numpy(), [2 / 3 * LN2, -1 / 3 * LN2], atol=1e-6)
    assert bool((bound >= N.importance(parts, torch.zeros(2), added, token=0)).all())


def hand_residuals() -> N.Residuals:
    """One layer: attention adds [ln 2, 0], the FFN adds [0, ln 2]; three neurons, the third with m = 0."""
    return N.Residuals(block_in=np.zeros((1, 2)), attn=np.array([[LN2, 0.0]]), mlp=np.array([[0.0, LN2]]),
                       coeffs=np.array([[1.0, 2.0, 0.0]]))


HAND_DOWN = torch.tensor([[LN2, 0.0, 5.0], [0.0, LN2 / 2, 5.0]])
"""Columns are value vectors: neuron 0 adds [ln 2, 0], neuron 1 adds 2 · [0, ln 2 / 2], neuron 2 would add 0."""


def test_sublayer_and_neuron_importances_by_hand() -> None:
    scores = N.score_neurons(hand_parts(), hand_residuals(), [HAND_DOWN], token=0, top_k=2)
    np.testing.assert_allclose(scores.attn, [math.log(3 / 2)], atol=1e-6)  # 1/3 → 2/4
    np.testing.assert_allclose(scores.ffn, [math.log(4 / 5)], atol=1e-6)  # 2/4 → 2/5
    # From h = [ln 2, 0] (p = 2/4): neuron 0 → 4/6, neuron 1 → 2/5, neuron 2 (m = 0) → 2/4.
    assert scores.top.tolist() == [0, 2]
    np.testing.assert_allclose(scores.top_imp, [math.log(4 / 3), 0.0], atol=1e-6)
    assert scores.tau == pytest.approx(0.0, abs=1e-7)


def test_a_neuron_with_zero_coefficient_has_zero_importance() -> None:
    scores = N.score_neurons(hand_parts(), hand_residuals(), [HAND_DOWN], token=1, top_k=1,
                             probe=np.array([2]))
    assert scores.probe_imp[0] == pytest.approx(0.0, abs=1e-7)


# --- exactness of the pruned search on a tiny random model (plumbing; the numbers mean nothing) ----------


@pytest.fixture(scope="module")
def tiny_runtime(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_runtime_at(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_case(tiny_runtime: Any) -> tuple[ModelParts, N.Residuals, list[Any], int]:
    from pytest_qxai.models.pair import ModelSide

    parts = model_parts(tiny_runtime.model)
    side = ModelSide("reference", tiny_runtime.model, tiny_runtime, "tiny")
    (residuals,) = N.capture_residuals(side, parts, ["The capital of France is"])
    downs = [parts.down_weight(index) for index in range(len(parts.layers))]
    return parts, residuals, downs, 7


def brute_force(parts: ModelParts, residuals: N.Residuals, downs: list[Any], token: int) -> np.ndarray:
    """Imp of every neuron, one explicit full-vocabulary softmax per neuron, without the vectorised code."""
    found = []
    for layer, down in enumerate(downs):
        mid = torch.tensor(residuals.block_in[layer] + residuals.attn[layer], dtype=torch.float32)
        base = torch.log_softmax(parts.unembed(parts.final_norm(mid)), -1)[token]
        for unit in range(down.shape[1]):
            value = float(residuals.coeffs[layer, unit]) * down[:, unit]
            found.append(float(torch.log_softmax(parts.unembed(parts.final_norm(mid + value)), -1)[token] - base))
    return np.array(found)


def test_captured_residuals_add_up_layer_by_layer(tiny_case: tuple[Any, N.Residuals, Any, int]) -> None:
    _, res, downs, _ = tiny_case
    np.testing.assert_allclose(res.block_in[0] + res.attn[0] + res.mlp[0], res.block_in[1], atol=1e-5)
    np.testing.assert_allclose(res.coeffs[0] @ downs[0].numpy().T, res.mlp[0], atol=1e-5)


def test_pruned_search_finds_exactly_the_brute_force_top_set(tiny_case: tuple[Any, N.Residuals, Any, int]) -> None:
    parts, res, downs, token = tiny_case
    every = brute_force(parts, res, downs, token)
    ranked = np.sort(every)
    assert ranked[-40] - ranked[-41] > 1e-4  # a threshold between them is not a float tie on any CPU
    threshold = float(ranked[-40] + ranked[-41]) / 2
    probe = np.array([0, 5, 300, 511])
    with torch.no_grad():
        scores = N.score_neurons(parts, res, downs, token, threshold=threshold, probe=probe, top_k=20)
    assert set(scores.top.tolist()) == set(np.argsort(-every)[:20].tolist())
    np.testing.assert_allclose(scores.top_imp, np.sort(every)[::-1][:20], atol=1e-5)
    assert scores.above == int((every >= threshold).sum())
    np.testing.assert_allclose(scores.probe_imp, every[probe], atol=1e-5)
    assert scores.n_neurons == downs[0].shape[1]
    with torch.no_grad():
        own = N.score_neurons(parts, res, downs, token, threshold=None, probe=None, top_k=20)
    assert own.above == int((every >= own.tau - 1e-6).sum()) >= 20


def test_the_bound_never_falls_below_the_exact_importance(tiny_case: tuple[Any, N.Residuals, Any, int]) -> None:
    parts, res, downs, _ = tiny_case
    generator = torch.Generator().manual_seed(0)
    base = torch.tensor(res.block_in[1], dtype=torch.float32)
    added = torch.randn(64, base.shape[0], generator=generator) * base.norm() / 4
    for token in (0, 7, 100):
        bound = N.importance_bound(parts, base, added, token)
        assert bool((bound >= N.importance(parts, base, added, token) - 1e-5).all())


class SameWeights:
    """A backend that "dequantizes" by reading the float weight (the quantized side is the reference)."""

    name = "same"

    def dequantized_weight(self, module: Any) -> Any:
        return module.weight


def test_identical_models_agree_completely(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(N, "recall_values", lambda pair, side, items: {"recall_accuracy": np.ones(len(items))})
    monkeypatch.setattr(N, "TOP_K", 20)
    result = N.run_neurons(tiny_pair(tiny_runtime, make_config(samples=3), backend=SameWeights()))
    assert len(result.item_ids) == 3
    for metric in N.NEURONS_METRICS:
        reference, quantized = result.values(metric.name)
        same = 0.0 if metric is N.WORST_LAYER else 1.0  # no layer's share of the top neurons moved
        np.testing.assert_allclose(reference, same)
        np.testing.assert_array_equal(quantized, same)  # bit for bit: the null run's sides are equal
    profile = result.profiles["sublayer_profile_cosine/ffn_by_layer"]
    assert len(profile["reference"]) == 2 and profile["reference"] == profile["quantized"]


def test_a_backend_that_cannot_dequantize_skips_the_suite_with_the_reason(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(N, "recall_values", lambda pair, side, items: {"recall_accuracy": np.ones(len(items))})
    result = N.run_neurons(tiny_pair(tiny_runtime, make_config(samples=2)))
    assert result.skipped == {m.name: "not applicable: the fake backend cannot dequantize its linear layers" for m in N.NEURONS_METRICS}


def test_a_reference_that_recalls_no_fact_skips_the_suite_with_the_reason(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(N, "recall_values", lambda pair, side, items: {"recall_accuracy": np.zeros(len(items))})
    result = N.run_neurons(tiny_pair(tiny_runtime, make_config(samples=2), backend=SameWeights()))
    assert result.item_ids == []
    assert set(result.skipped) == {m.name for m in N.NEURONS_METRICS}
    assert all("recalls none of the candidate facts" in reason for reason in result.skipped.values())


def test_sequential_looks_score_only_their_new_facts_and_give_the_values_of_one_run(
    tiny_runtime: Any, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``--qxai-budget`` each side's neuron scores are cached one look's batch at a time: the look at 4 facts
    after the look at 2 captures only the 2 new facts per side, and its values are those of 4 facts at once."""
    from pytest_qxai.config import Budget
    from pytest_qxai.storage import DiskCache

    monkeypatch.setattr(N, "recall_values", lambda pair, side, items: {"recall_accuracy": np.ones(len(items))})
    monkeypatch.setattr(N, "TOP_K", 20)
    captured: list[int] = []
    capture = N.capture_residuals
    monkeypatch.setattr(N, "capture_residuals", lambda side, parts, prompts: captured.append(len(prompts)) or
                        capture(side, parts, prompts))

    def run(samples: int, budget: Budget | None, cache: Path) -> Any:
        pair = tiny_pair(tiny_runtime, make_config(samples=samples, budget=budget), backend=SameWeights())
        pair.cache = DiskCache(cache)
        return N.run_neurons(pair)

    run(2, Budget(items=10), tmp_path / "looks")
    looked = run(4, Budget(items=10), tmp_path / "looks")
    assert captured == [2, 2, 2, 2]  # look 1: 2 facts per side; look 2: the 2 new ones per side
    at_once = run(4, None, tmp_path / "once")
    assert looked.item_ids == at_once.item_ids
    for metric in N.NEURONS_METRICS:
        np.testing.assert_allclose(looked.values(metric.name), at_once.values(metric.name), rtol=0, atol=1e-5)
