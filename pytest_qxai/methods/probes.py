"""Linear probes and representation similarity between the FP and quantized residual streams, per e-SNLI item.

Each item's residual stream after every decoder layer is read at the last token of the NLI prompt (the position
that predicts the label). Per layer, a logistic-regression probe (scikit-learn, standardised features, fixed
seed) predicts the gold NLI label. Every item gets a held-out prediction through stratified k-fold
cross-validation: probes trained on the FP activations of the other folds classify the item's FP activations
(reference) and its quantized activations (transfer); probes retrained on quantized activations classify the
quantized ones (retrained). An item's score is the share of layers whose probe classifies it correctly: no
layer is chosen on the very items that are gated (which would favour the reference), and the per-layer
accuracies go to the report as profiles. Similarity: linear CKA per layer (Kornblith et al. 2019) as a
profile, and per item the cosine of the FP and quantized states averaged over layers, each side centred on its
own mean state of the layer, as CKA centres: the shared mean, dominated by a few massive activation dimensions,
would put every raw cosine near 1, and a shift that quantization adds to every item alike is not a difference
in how items are represented (centring both on the FP mean put bnb8 at 0.61 on SmolLM2 through that shift alone).
``worst_layer_cosine`` gates the layer profile: per item, the lowest of those per-layer cosines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..datasets import NLI_LABELS, NLIItem, dataset_fingerprint, load_esnli
from ..metrics import Metric, SuiteResult, not_applicable, register_metric
from ..profiles import suite_size
from ..storage import stable_hash
from ..suite import Suite, register_suite
from .similarity import cosine
from .task import NLI_TEMPLATE, lacks, nli_prompt, template_id

if TYPE_CHECKING:
    from ..models.pair import ModelPair, ModelSide

SUITE = "probes"
PROBE = {"version": "probes-v3", "folds": 5, "C": 0.1, "max_iter": 2000}
"""Probe settings: k-fold cross-validation and the inverse L2 strength of the logistic regression (v3: fit in
the span of the training states, see :func:`probe_predictions`)."""

TRANSFER = register_metric(Metric(
    SUITE, "probe_transfer_accuracy",
    "share of layers whose FP-trained NLI probe classifies the item's activations correctly (quantized: transfer)",
    "continuous", bounds=(0.0, 1.0), unit="share of layers", tolerance="abs:0.03",
))
RETRAINED = register_metric(Metric(
    SUITE, "probe_retrained_accuracy",
    "share of layers whose NLI probe, trained on the same model's activations, classifies the item correctly",
    "continuous", bounds=(0.0, 1.0), unit="share of layers", tolerance="abs:0.03",
))
COSINE = register_metric(Metric(
    SUITE, "representation_cosine",
    "cosine of FP and quantized residual states (each centred on its mean), averaged over layers (FP side: 1)",
    "continuous", bounds=(-1.0, 1.0), unit="cosine", tolerance="abs:0.2",
))
WORST_LAYER = register_metric(Metric(
    SUITE, "worst_layer_cosine",
    "lowest cosine over layers of the item's FP and quantized residual states (each centred; FP side: 1)",
    "continuous", bounds=(-1.0, 1.0), unit="cosine", tolerance="abs:0.05",
))
"""The per-layer profile as a gated metric: one layer whose states drift cannot hide in the average over layers.
The band is the average's: no layer may drift further than the average is allowed to."""
PROBES_METRICS = [TRANSFER, RETRAINED, COSINE, WORST_LAYER]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two activation matrices ``[n, d1]``, ``[n, d2]`` (Kornblith et al. 2019, Eq. 5).

    ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on column-centred matrices: 1 for identical representations,
    invariant to orthogonal transforms and isotropic scaling of either side.
    """
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def layer_cosines(reference: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """``[n, L]`` cosine of FP and quantized states ``[n, L, d]`` per item and layer, each centred on its own mean."""
    return cosine(reference - reference.mean(axis=0, keepdims=True), quantized - quantized.mean(axis=0, keepdims=True))


def centred_cosine(reference: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """Per item, the cosine of FP and quantized states ``[n, L, d]``, each centred on its own mean, averaged over L."""
    return layer_cosines(reference, quantized).mean(axis=1)  # type: ignore[no-any-return]


def probe_predictions(
    train: np.ndarray, labels: np.ndarray, tests: Sequence[np.ndarray], seed: int, folds: int = PROBE["folds"],
) -> list[np.ndarray]:
    """Held-out predictions per layer: probes fit on ``train`` ``[n, L, d]`` classify each array of ``tests``.

    Returns one ``[n, L]`` array of predicted labels per test array; item i's prediction comes from the probe
    of the fold that held it out. The standardised states are first rotated onto the span of the fold's training
    rows (a PCA keeping every component): an L2-penalised logistic regression's weights lie in that span, so the
    problem is the same, but it has at most n instead of d features (d = 4096 on an 8B model: ten times faster).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, depth, _ = train.shape
    out = [np.empty((n, depth), dtype=labels.dtype) for _ in tests]
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), labels)
    for fit_rows, held in splits:
        for layer in range(depth):
            span = PCA(n_components=min(len(fit_rows), train.shape[2]), svd_solver="full")
            probe = make_pipeline(StandardScaler(), span, LogisticRegression(C=PROBE["C"], max_iter=PROBE["max_iter"]))
            probe.fit(train[fit_rows, layer], labels[fit_rows])
            for target, test in zip(out, tests):
                target[held, layer] = probe.predict(test[held, layer])
    return out


def residual_states(pair: "ModelPair", side: "ModelSide", items: Sequence[NLIItem]) -> np.ndarray:
    """Residual stream after each decoder layer at the prompt's last token, ``[n, L, d]`` (cached per side)."""

    tokenizer = side.runtime.tokenizer

    def compute() -> np.ndarray:
        hidden = side.runtime.hidden_states([nli_prompt(tokenizer, it.premise, it.hypothesis) for it in items])
        return hidden[:, 1:].astype(np.float32)

    params = {"items": dataset_fingerprint(items), "prompt": template_id(tokenizer)}
    return pair.cached(side, "probes.states", params, compute)


def run_probes(pair: "ModelPair") -> SuiteResult:
    """Probe transfer and retraining accuracy, CKA and per-item similarity of FP and quantized activations."""
    reason = lacks(pair, ("esnli",))
    if reason:
        return not_applicable(SUITE, PROBES_METRICS, reason)
    items = load_esnli(suite_size(SUITE, pair.config.profile, pair.config.samples), pair.config.seed,
                       path=pair.config.data.get("esnli"))
    labels = np.array([NLI_LABELS.index(it.label) for it in items])
    reference, quantized = (residual_states(pair, side, items) for side in pair.sides)
    seed, depth = pair.config.seed, reference.shape[1]
    counts = np.bincount(labels)[np.bincount(labels) > 0]
    folds = min(PROBE["folds"], int(counts.min()))
    per_layer = layer_cosines(reference, quantized)
    ref_vals = {COSINE.name: np.ones(len(items)), WORST_LAYER.name: np.ones(len(items))}
    quant_vals = {COSINE.name: per_layer.mean(axis=1), WORST_LAYER.name: per_layer.min(axis=1)}
    profiles = {f"{COSINE.name}/cka_by_layer": {
        "reference": [1.0] * depth,
        "quantized": [linear_cka(reference[:, layer], quantized[:, layer]) for layer in range(depth)],
    }, f"{WORST_LAYER.name}/cosine_by_layer": {"reference": [1.0] * depth, "quantized": per_layer.mean(0).tolist()}}
    skipped = {}
    if len(counts) < 2 or folds < 2:
        reason = (f"{len(items)} items give too few per NLI label for cross-validated probes "
                  f"(smallest label count {int(counts.min())}, at least 2 of two labels needed)")
        skipped = {TRANSFER.name: reason, RETRAINED.name: reason}
    else:
        on_reference, transferred = probe_predictions(reference, labels, [reference, quantized], seed, folds)
        (retrained,) = probe_predictions(quantized, labels, [quantized], seed, folds)
        correct = {name: (pred == labels[:, None]).astype(float) for name, pred in
                   (("reference", on_reference), ("transfer", transferred), ("retrained", retrained))}
        ref_vals |= {TRANSFER.name: correct["reference"].mean(1), RETRAINED.name: correct["reference"].mean(1)}
        quant_vals |= {TRANSFER.name: correct["transfer"].mean(1), RETRAINED.name: correct["retrained"].mean(1)}
        for metric, side in ((TRANSFER, "transfer"), (RETRAINED, "retrained")):
            profiles[f"{metric.name}/accuracy_by_layer"] = {"reference": correct["reference"].mean(0).tolist(),
                                                            "quantized": correct[side].mean(0).tolist()}
    return SuiteResult(
        suite=SUITE,
        item_ids=[it.id for it in items],
        reference=ref_vals,
        quantized=quant_vals,
        fingerprint={"items": dataset_fingerprint(items), "prompt": template_id(pair.tokenizer),
                     "probe": stable_hash(PROBE)},
        profiles=profiles,
        skipped=skipped,
        notes={
            "probe": (f"per-layer logistic regression (C={PROBE['C']}, standardised) on the gold e-SNLI label, "
                      f"{folds}-fold stratified cross-validation, seed {seed}"),
            "position": f"last token of the task suite's NLI prompt ({NLI_TEMPLATE['version']})",
            "item_score": "share of the model's decoder layers whose held-out probe classifies the item correctly",
            "chance": f"{counts.max() / len(labels):.3f} (majority label share)",
        },
    )


PROBES_SUITE = register_suite(Suite(
    SUITE,
    "Linear NLI probes on the residual stream (transfer and retrained) and FP-quantized representation "
    "similarity.",
    tuple(PROBES_METRICS), run_probes,
    sizes={"smoke": 24, "standard": 300, "full": 1000}, item_cost=0.5,
))
