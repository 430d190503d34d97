"""Linear probes and representation similarity: CKA's invariances, the centred cosine, held-out probe predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
from tiny import NO_CLASSIFICATION, assert_sides_match
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai.methods import probes as P

seeds = st.integers(0, 2**31 - 1)


def _random(seed: int, n: int = 20, d: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


@given(seeds)
def test_cka_of_a_representation_with_itself_is_one(seed: int) -> None:
    x = _random(seed)
    assert P.linear_cka(x, x) == pytest.approx(1.0)


@given(seeds, st.floats(0.01, 100.0))
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert P.linear_cka(x @ rotation * scale, y) == pytest.approx(P.linear_cka(x, y))
    assert P.linear_cka(x, y @ rotation) == pytest.approx(P.linear_cka(x, y))


@given(seeds)
def test_cka_is_symmetric_and_in_the_unit_interval(seed: int) -> None:
    x, y = _random(seed), _random(seed + 1, d=4)
    assert P.linear_cka(x, y) == pytest.approx(P.linear_cka(y, x))
    assert 0.0 <= P.linear_cka(x, y) <= 1.0 + 1e-12


def test_cka_by_hand() -> None:
    """Centred x = (−1, 0, 1) and y1 = (1, −2, 1) are orthogonal: CKA 0. Y = [y1/‖y1‖, x/‖x‖] (orthonormal
    columns): ‖YᵀX‖² = 2, ‖XᵀX‖ = 2, ‖YᵀY‖ = √2, so CKA = 1/√2."""
    x = np.array([[0.0], [1.0], [2.0]])
    assert P.linear_cka(x, np.array([[1.0], [-2.0], [1.0]])) == pytest.approx(0.0)
    y = np.array([[1.0, 0.0], [-2.0, 1.0], [1.0, 2.0]]) * np.array([1 / np.sqrt(6), 1 / np.sqrt(2)])
    assert P.linear_cka(x, y) == pytest.approx(1 / np.sqrt(2))


def test_centred_cosine_by_hand() -> None:
    """FP (1, 0), (−1, 0) have mean 0; quantized (1, 1), (−1, 0) have mean (0, ½): centred (1, ½), (−1, −½) → 2/√5."""
    reference = np.array([[[1.0, 0.0]], [[-1.0, 0.0]]])
    quantized = np.array([[[1.0, 1.0]], [[-1.0, 0.0]]])
    np.testing.assert_allclose(P.centred_cosine(reference, quantized), [2 / np.sqrt(5)] * 2)
    np.testing.assert_allclose(P.centred_cosine(reference, reference), [1.0, 1.0])
    np.testing.assert_allclose(P.centred_cosine(reference, reference + [3.0, -7.0]), [1.0, 1.0])  # a shared shift


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(3, 30), st.integers(2, 60))
def test_the_row_span_basis_is_orthonormal_and_keeps_every_training_row(seed: int, n: int, d: int) -> None:
    """Rows of any rank (n above or below d, repeated rows): the basis is orthonormal and loses no training row."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, min(d, n)))[:, rng.integers(0, min(d, n), size=d)] * rng.lognormal(0, 2, size=d)
    x = (x - x.mean(axis=0))[rng.integers(0, n, size=n)]
    span = P.RowSpan().fit(x)
    basis = span.components_
    assert basis.shape[0] <= min(n, d)
    np.testing.assert_allclose(basis @ basis.T, np.eye(len(basis)), atol=1e-6)
    np.testing.assert_allclose(span.transform(x) @ basis, x, atol=1e-6 * np.abs(x).max())


def test_a_layer_whose_training_states_are_all_equal_predicts_without_failing() -> None:
    """A collapsed layer (every training state the same) spans nothing: the probe falls back to its intercept."""
    labels = np.repeat([0, 1, 2], 10)
    states = np.ones((30, 1, 8))
    (pred,) = P.probe_predictions(states, labels, [states], seed=0)
    assert pred.shape == (30, 1) and set(np.unique(pred)) <= {0, 1, 2}


def test_a_probe_in_the_row_span_decides_as_one_in_the_full_space() -> None:
    """The L2-penalised probe's weights lie in the training rows' span, so fitting it there (n features instead of
    d) gives the same decision values on new items, up to the solver's tolerance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 200)) * rng.lognormal(0, 1.5, size=200)
    x[:, :3] += labels[:, None]
    new = rng.normal(size=(30, 200)) * rng.lognormal(0, 1.5, size=200)
    options = {"C": P.PROBE["C"], "max_iter": 10_000, "tol": 1e-10}
    full = make_pipeline(StandardScaler(), LogisticRegression(**options)).fit(x, labels)
    span = make_pipeline(StandardScaler(), P.RowSpan(), LogisticRegression(**options)).fit(x, labels)
    np.testing.assert_allclose(span.decision_function(new), full.decision_function(new), atol=1e-4)


def test_probes_classify_separable_data_and_transfer_to_a_copy() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    states = rng.normal(size=(60, 2, 5))
    states[:, 1, 0] += 10 * labels  # layer 1 encodes the label, layer 0 does not
    own, copy = P.probe_predictions(states, labels, [states, states.copy()], seed=0)
    assert (own[:, 1] == labels).mean() >= 0.85 > 0.6 > (own[:, 0] == labels).mean()
    assert (copy == own).all()


def test_a_broken_quantized_state_is_a_wrong_prediction_and_the_worst_cosine_without_touching_other_items() -> None:
    """NaN at one item and layer (an overflow in a quantized kernel): that item scores worst there, and only it."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 8)
    reference = rng.normal(size=(24, 2, 16))
    reference[:, 1, 0] += 10 * labels
    quantized = reference + 0.01 * rng.normal(size=reference.shape)
    broken = quantized.copy()
    broken[5, 1] = np.nan
    cosines, intact = P.layer_cosines(reference, broken), P.layer_cosines(reference, quantized)
    assert cosines[5, 1] == -1.0 and np.isclose(cosines[5, 0], intact[5, 0])
    assert (np.delete(cosines[:, 1], 5) > 0.99).all()
    transferred, intact_transfer = P.probe_predictions(reference, labels, [broken, quantized], seed=0)
    (retrained,) = P.probe_predictions(broken, labels, [broken], seed=0)
    assert transferred[5, 1] == retrained[5, 1] == P.NO_PREDICTION != labels[5]
    assert (np.delete(transferred, 5, axis=0) == np.delete(intact_transfer, 5, axis=0)).all()
    assert (np.delete(retrained, 5, axis=0) != P.NO_PREDICTION).all()
    assert np.isfinite(P.linear_cka(reference[:, 1], broken[:, 1]))


@settings(max_examples=5, deadline=None)
@given(seeds)
def test_every_prediction_is_held_out(seed: int) -> None:
    """Random labels cannot be learnt: a probe that had seen the item would predict it (far above chance)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=60)
    states = rng.normal(size=(60, 1, 80))
    (pred,) = P.probe_predictions(states, labels, [states], seed=seed)
    assert (pred[:, 0] == labels).mean() < 0.6


# --- plumbing on a tiny random model (evidence that code runs, not that a metric means anything) -----------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_runtime(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from test_arch import tiny_runtime_at

    return tiny_runtime_at(tmp_path_factory.mktemp("tiny"))


def test_suite_on_identical_models(tiny_runtime: Any, make_config: Any) -> None:
    from test_arch import tiny_pair

    result = P.run_probes(tiny_pair(tiny_runtime, make_config(samples=15)))
    assert_sides_match(result, P.ESNLI_METRICS, 15, atol=0.0)  # bit for bit: the null run's sides are equal
    assert result.skipped == dict.fromkeys([m.name for m in P.LABEL_METRICS.values()], NO_CLASSIFICATION)
    np.testing.assert_allclose(result.profiles["representation_cosine/cka_by_layer"]["quantized"], 1.0, atol=1e-6)


def test_too_few_items_per_label_skip_the_probes_but_not_the_similarity(tiny_runtime: Any, make_config: Any) -> None:
    from test_arch import tiny_pair

    result = P.run_probes(tiny_pair(tiny_runtime, make_config(samples=3)))
    assert set(result.skipped) - {m.name for m in P.LABEL_METRICS.values()} == {"probe_transfer_accuracy",
                                                                             "probe_retrained_accuracy"}
    assert "too few per NLI label" in result.skipped["probe_transfer_accuracy"]
    np.testing.assert_allclose(result.quantized["representation_cosine"], 1.0, atol=1e-6)


@pytest.mark.slow
def test_smollm2_nli_label_is_linearly_decodable_above_chance_in_middle_layers() -> None:
    """The probes measure something on SmolLM2: the gold e-SNLI label is decodable well above chance (1/3) at
    some layer (about 0.6 in layers 17-20 on 150 items), so quantization damage can show as a drop."""
    from pytest_qxai.datasets import NLI_LABELS, load_esnli
    from pytest_qxai.methods.task import nli_prompt
    from test_arch import smollm2

    items, runtime = load_esnli(150, 0), smollm2()
    labels = np.array([NLI_LABELS.index(it.label) for it in items])
    states = runtime.hidden_states([nli_prompt(runtime.tokenizer, it.premise, it.hypothesis) for it in items])[:, 1:]
    (pred,) = P.probe_predictions(states, labels, [states], seed=0)
    accuracy = (pred == labels[:, None]).mean(axis=0)
    assert accuracy.max() >= 0.5
    assert int(np.argmax(accuracy)) in range(len(accuracy) // 3, 3 * len(accuracy) // 4)

