"""Linear probes and representation similarity between the FP and quantized residual streams, per labelled item.

e-SNLI items fill the plain metrics; the run's classification files fill the ``label_`` ones (each file probed for
its own labels, with its own cross-validation and centring; the task suite's classification prompt).

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

import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..datasets import dataset_fingerprint
from ..metrics import Metric, SuiteResult, combine, derived_metric, not_applicable, register_metric
from ..profiles import suite_items
from ..storage import stable_hash
from ..suite import Suite, get_suite, register_suite
from .similarity import cosine
from .task import NLI_TASK, NLI_TEMPLATE, LabelTask, absent, classification_tasks, esnli_items, prefixed_ids

if TYPE_CHECKING:
    from ..models.pair import ModelPair, ModelSide

SUITE = "probes"
PROBE = {"version": "probes-v3", "folds": 5, "C": 0.1, "max_iter": 2000}
"""Probe settings: k-fold cross-validation and the inverse L2 strength of the logistic regression (v3: fit in
the span of the training states, see :func:`probe_predictions`)."""
NO_PREDICTION = -1
"""The predicted label of an item whose state is broken (not finite) on the probed side: never the gold label."""

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
ESNLI_METRICS = [TRANSFER, RETRAINED, COSINE, WORST_LAYER]
LABEL_METRICS: dict[Metric, Metric] = {
    metric: derived_metric(metric, "label_", "your classification data", ("NLI probe", "label probe"))
    for metric in ESNLI_METRICS}
"""Each e-SNLI metric → its counterpart on the run's classification files (probes of each file's own labels)."""
PROBES_METRICS = [*ESNLI_METRICS, *LABEL_METRICS.values()]


def broken_states(*states: np.ndarray) -> np.ndarray:
    """``[n, L]``: where a side's state ``[n, L, d]`` is not all finite numbers (a broken model's output)."""
    return ~np.logical_and.reduce([np.isfinite(x).all(axis=2) for x in states])


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two activation matrices ``[n, d1]``, ``[n, d2]`` (Kornblith et al. 2019, Eq. 5).

    ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on column-centred matrices: 1 for identical representations,
    invariant to orthogonal transforms and isotropic scaling of either side. Rows not finite on both sides are left
    out (a profile, not a gated value).
    """
    finite = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    x, y = x[finite], y[finite]
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def layer_cosines(reference: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """``[n, L]`` cosine of FP and quantized states ``[n, L, d]`` per item and layer, each centred on its own mean.

    An item whose state at a layer is not finite on a side scores −1 there, the bound, and is left out of the means.
    """
    broken = broken_states(reference, quantized)
    if not broken.any():
        return cosine(reference - reference.mean(axis=0, keepdims=True),
                      quantized - quantized.mean(axis=0, keepdims=True))
    kept = [np.where(broken[..., None], np.nan, x) for x in (reference, quantized)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer broken on every item has no mean
        centred = [x - np.nanmean(x, axis=0, keepdims=True) for x in kept]
    return np.where(broken, -1.0, cosine(*centred))


def centred_cosine(reference: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """Per item, the cosine of FP and quantized states ``[n, L, d]``, each centred on its own mean, averaged over L."""
    return layer_cosines(reference, quantized).mean(axis=1)  # type: ignore[no-any-return]


class RowSpan:
    """A scikit-learn transformer onto an orthonormal basis of its training rows' span: [n, d] → [n, k], k ≤ n.

    The basis comes from the eigenvectors of the rows' n × n Gram matrix (vᵢ = Xᵀuᵢ / √λᵢ), not an SVD of the
    n × d rows: the same span, 2.5 times faster at n = 240, d = 4096 on one thread (24 against 60 ms). Directions
    whose eigenvalue is below ``RANK_TOLERANCE`` of the largest carry no training variance (centred rows lose
    one) and are left out.
    """

    RANK_TOLERANCE = 1e-10

    def fit(self, x: np.ndarray, y: object = None) -> "RowSpan":
        """Find the basis of ``x``'s rows (computed in float64)."""
        rows = np.asarray(x, dtype=np.float64)
        values, vectors = np.linalg.eigh(rows @ rows.T)
        kept = values > values[-1] * self.RANK_TOLERANCE
        basis = (vectors[:, kept] / np.sqrt(values[kept])).T @ rows if kept.any() else np.zeros((1, rows.shape[1]))
        self.components_ = basis.astype(np.asarray(x).dtype)  # equal rows span nothing: one all-zero feature
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Coordinates of ``x``'s rows in the basis."""
        return np.asarray(x) @ self.components_.T  # type: ignore[no-any-return]

    def fit_transform(self, x: np.ndarray, y: object = None) -> np.ndarray:
        """:meth:`fit`, then :meth:`transform` of the same rows."""
        return self.fit(x).transform(x)


def make_probe(span: Callable[[], Any] = RowSpan) -> Any:
    """One layer's unfitted probe: standardise, rotate onto the training rows' span (``span()``), then the
    L2-penalised logistic regression of :data:`PROBE`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), span(), LogisticRegression(C=PROBE["C"], max_iter=PROBE["max_iter"]))


def probe_predictions(
    train: np.ndarray, labels: np.ndarray, tests: Sequence[np.ndarray], seed: int, folds: int = PROBE["folds"],
    span: Callable[[], Any] = RowSpan,
) -> list[np.ndarray]:
    """Held-out predictions per layer: probes fit on ``train`` ``[n, L, d]`` classify each array of ``tests``.

    Returns one ``[n, L]`` array of predicted labels per test array; item i's prediction comes from the probe
    of the fold that held it out. The standardised states are first rotated onto the span of the fold's training
    rows (:class:`RowSpan`): an L2-penalised logistic regression's weights lie in that span, so the problem is the
    same, but it has at most n instead of d features (d = 4096 on an 8B model: ten times faster); ``span`` makes
    that transformer (``benchmarks/bench_probes.py`` passes scikit-learn's full PCA to compare). The fits run on
    one BLAS thread: each is small (n × n features), and beside busy xdist workers a pool of threads waits on
    the others' cores (0.5 s per fit against 0.06 s, docs/measurements.md).
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    n, depth, _ = train.shape
    out = [np.full((n, depth), NO_PREDICTION, dtype=np.int64) for _ in tests]
    usable = [~broken_states(x) for x in (train, *tests)]
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), labels)
    with threadpool_limits(limits=1, user_api="blas"):
        for fit_rows, held in splits:
            for layer in range(depth):
                fit = fit_rows[usable[0][fit_rows, layer]]  # a broken training state teaches nothing
                if len(np.unique(labels[fit])) < 2:
                    continue
                probe = make_probe(span).fit(train[fit, layer], labels[fit])
                for target, test, ok in zip(out, tests, usable[1:]):
                    rows = held[ok[held, layer]]  # a broken test state keeps NO_PREDICTION: a wrong answer
                    if rows.size:
                        target[rows, layer] = probe.predict(test[rows, layer])
    return out


def residual_states(pair: "ModelPair", side: "ModelSide", items: Sequence[Any],
                    task: LabelTask = NLI_TASK) -> np.ndarray:
    """Residual stream after each decoder layer at the task prompt's last token, ``[n, L, d]`` (cached per side,
    one sequential look's batch at a time)."""

    tokenizer = side.runtime.tokenizer

    def compute(start: int, stop: int) -> np.ndarray:
        hidden = side.runtime.hidden_states([task.prompt(tokenizer, task.fields(it)) for it in items[start:stop]])
        return hidden[:, 1:].astype(np.float32)

    return pair.cached_batches(side, "probes.states", len(items), get_suite(SUITE).look_items(pair.config),
                               lambda start, stop: {"items": dataset_fingerprint(items[start:stop]),
                                                    "prompt": task.template_id(tokenizer)}, compute)


def _dataset_probes(pair: "ModelPair", task: LabelTask, items: Sequence[Any]) -> dict[str, Any]:
    """One dataset's per-item similarity and held-out probe correctness (``[n, L]`` per side; None: too few items)."""
    labels = np.array([task.gold(it) for it in items])
    reference, quantized = (residual_states(pair, side, items, task) for side in pair.sides)
    counts = np.bincount(labels)[np.bincount(labels) > 0]
    folds = min(PROBE["folds"], int(counts.min()))
    found: dict[str, Any] = {"states": (reference, quantized), "layers": layer_cosines(reference, quantized),
                             "folds": folds, "chance": float(counts.max() / len(labels)), "correct": None}
    if len(counts) < 2 or folds < 2:
        found["reason"] = (f"{len(items)} {task.name} items give too few per {'NLI ' if task.kind == 'nli' else ''}"
                           f"label for cross-validated probes (smallest label count {int(counts.min())}, at least 2 "
                           "of two labels needed)")
        return found
    seed = pair.config.seed
    on_reference, transferred = probe_predictions(reference, labels, [reference, quantized], seed, folds)
    (retrained,) = probe_predictions(quantized, labels, [quantized], seed, folds)
    found["correct"] = {name: (pred == labels[:, None]).astype(float) for name, pred in
                        (("reference", on_reference), ("transfer", transferred), ("retrained", retrained))}
    return found


def _probe_part(pair: "ModelPair", tasks: Sequence[LabelTask], items: Sequence[Sequence[Any]],
                metrics: dict[Metric, Metric]) -> SuiteResult:
    """Probes and similarity on these datasets, each on its own (its labels, its centring), reported as ``metrics``.

    A dataset with too few items per label for cross-validation has no probe values (NaN on both sides); when no
    dataset has enough, the probe metrics are not applicable. Profiles are item-weighted means over the datasets.
    """
    parts = [_dataset_probes(pair, t, group) for t, group in zip(tasks, items)]
    n = sum(len(group) for group in items)
    depth = parts[0]["layers"].shape[1]
    per_layer = np.concatenate([p["layers"] for p in parts])
    ref_vals = {metrics[COSINE].name: np.ones(n), metrics[WORST_LAYER].name: np.ones(n)}
    quant_vals = {metrics[COSINE].name: per_layer.mean(axis=1), metrics[WORST_LAYER].name: per_layer.min(axis=1)}
    weights = [len(group) / n for group in items]
    cka = [sum(w * linear_cka(p["states"][0][:, layer], p["states"][1][:, layer]) for w, p in zip(weights, parts))
           for layer in range(depth)]
    profiles = {f"{metrics[COSINE].name}/cka_by_layer": {"reference": [1.0] * depth, "quantized": cka},
                f"{metrics[WORST_LAYER].name}/cosine_by_layer": {"reference": [1.0] * depth,
                                                                 "quantized": per_layer.mean(0).tolist()}}
    skipped = {}
    reasons = [p["reason"] for p in parts if p["correct"] is None]
    if len(reasons) == len(parts):
        skipped = dict.fromkeys([metrics[TRANSFER].name, metrics[RETRAINED].name],
                                "; ".join(reasons))  # more items may give enough per label: not "not applicable"
    else:
        correct = {name: np.concatenate([p["correct"][name] if p["correct"] else np.full((len(g), depth), np.nan)
                                         for p, g in zip(parts, items)])
                   for name in ("reference", "transfer", "retrained")}
        ref_vals |= {metrics[TRANSFER].name: correct["reference"].mean(1),
                     metrics[RETRAINED].name: correct["reference"].mean(1)}
        quant_vals |= {metrics[TRANSFER].name: correct["transfer"].mean(1),
                       metrics[RETRAINED].name: correct["retrained"].mean(1)}
        for metric, side in ((metrics[TRANSFER], "transfer"), (metrics[RETRAINED], "retrained")):
            profiles[f"{metric.name}/accuracy_by_layer"] = {"reference": np.nanmean(correct["reference"], 0).tolist(),
                                                            "quantized": np.nanmean(correct[side], 0).tolist()}
    names = ", ".join(t.name for t in tasks)
    return SuiteResult(SUITE, [], ref_vals, quant_vals, {}, profiles=profiles, skipped=skipped, notes={
        "folds": {t.name: p["folds"] for t, p in zip(tasks, parts)},
        "chance": {t.name: round(p["chance"], 3) for t, p in zip(tasks, parts)},
        "too_few_items": reasons, "datasets": names})


def run_probes(pair: "ModelPair") -> SuiteResult:
    """Probe transfer and retraining accuracy, CKA and per-item similarity of FP and quantized activations.

    e-SNLI (gold NLI labels) and the run's classification files (``label_`` metrics, each file's own labels)
    each fill their own metrics; a kind the run has no data of is reported as not applicable.
    """
    n, seed = suite_items(SUITE, pair.config), pair.config.seed
    esnli = esnli_items(pair, n)
    if esnli:
        nli = _probe_part(pair, [NLI_TASK], [esnli], {m: m for m in ESNLI_METRICS})
        nli.item_ids = [it.id for it in esnli]
        nli.fingerprint = {"items": dataset_fingerprint(esnli), "prompt": NLI_TASK.template_id(pair.tokenizer),
                           "probe": stable_hash(PROBE)}
        nli.notes = {
            "probe": (f"per-layer logistic regression (C={PROBE['C']}, standardised) on the gold e-SNLI label, "
                      f"{nli.notes['folds']['esnli']}-fold stratified cross-validation, seed {seed}"),
            "position": f"last token of the task suite's NLI prompt ({NLI_TEMPLATE['version']})",
            "item_score": "share of the model's decoder layers whose held-out probe classifies the item correctly",
            "chance": f"{nli.notes['chance']['esnli']:.3f} (majority label share)",
        }
    else:
        nli = not_applicable(SUITE, ESNLI_METRICS, absent(pair, "esnli"))
    tasks = classification_tasks(pair)
    if tasks:
        items = [t.items(n, seed) for t in tasks]
        own = _probe_part(pair, tasks, items, LABEL_METRICS)
        own.item_ids = prefixed_ids(tasks, items)
        own.fingerprint = {"label": stable_hash([[t.name, dataset_fingerprint(g), t.template_id(pair.tokenizer)]
                                                 for t, g in zip(tasks, items)] + [PROBE])}
        own.notes = {"label_probes": own.notes | {
            "probe": "per-layer logistic regression on each file's gold labels (its own label set), stratified "
                     "cross-validation per file, states at the last token of the task suite's classification prompt",
            "chance": {name: f"{share:.3f} (majority label share)" for name, share in own.notes["chance"].items()}}}
    else:
        own = not_applicable(SUITE, list(LABEL_METRICS.values()), absent(pair, "classification"))
    return combine(SUITE, [nli, own])


PROBES_SUITE = register_suite(Suite(
    SUITE,
    "Linear NLI probes on the residual stream (transfer and retrained) and FP-quantized representation "
    "similarity.",
    tuple(PROBES_METRICS), run_probes,
    sizes={"smoke": 24, "standard": 300, "full": 1000}, item_cost=0.4,
))
