"""Neuron-level knowledge attribution (Yu & Ananiadou, EMNLP 2024), per recalled fact, for both models.

At the last prompt position, FFN value neuron k of layer l adds ``v = m_k · W_down[:, k]`` to the residual
stream h after layer l's attention; its importance for the answer token w is
``Imp = log p(w | h + v) − log p(w | h)`` with ``p(·|x) = softmax(W_U · FinalNorm(x))``. Attention and FFN
sublayers are scored the same way with their whole output. The quantized side uses its own activations and its
backend's dequantized ``W_down``.

Exact and fast: by convexity of log-sum-exp, ``lse(z') ≥ lse(z) + p·(z' − z)`` (p = softmax(z)), so
``U = Δz_w − p·Δz`` bounds Imp from above and costs one d-vector product per neuron. Neurons are scored
exactly (full-vocabulary softmax) in decreasing order of U until U falls below both the running 300th exact
score and the threshold τ; no neuron left unscored can enter the top 300 or exceed τ. On SmolLM2 about 310
exact scores per item replace 46,080.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..datasets import dataset_fingerprint, no_relations
from ..metrics import NOT_APPLICABLE, Metric, SuiteResult, not_applicable, register_metric
from ..profiles import suite_items
from ..storage import cache_type, stable_hash
from ..suite import Suite, get_suite, register_suite
from .arch import ModelParts, model_parts
from .knowledge import PROMPT, RecallItem, first_token_ids, recall_items, recall_values
from .similarity import cosine

if TYPE_CHECKING:
    import torch

    from ..backends.base import QuantBackend
    from ..models.pair import ModelPair, ModelSide

SUITE = "neurons"
TOP_K = 300
"""Size of the important-neuron set (the paper's top 300)."""
METHOD = "exact-pruned-v2"
"""Version of the scoring method (v2: the FP side counts neurons tied at its τ, as the quantized side does)."""
CANDIDATES_PER_ITEM = 4
"""Facts are drawn from this many times ``n`` knowledge items, keeping those the reference recalls."""
CHUNK = 256
"""Neurons scored exactly per full-vocabulary softmax batch (bounds memory: CHUNK × vocab floats)."""
STEP = 64
"""Neurons scored per round of the pruned search after the first ``TOP_K + STEP``."""
SLACK = 1e-3
"""Nats added to the pruning thresholds against float rounding between the bound and the exact score."""

TOP_OVERLAP = register_metric(Metric(
    SUITE, "top300_overlap", "|top-300 FP neurons ∩ top-300 quantized neurons| / 300 (FP side: 1)", "continuous",
    bounds=(0.0, 1.0), unit="share", tolerance="abs:0.1",
))
TOP_RETAINED = register_metric(Metric(
    SUITE, "top300_retained", "share of the FP top-300 neurons whose quantized Imp still reaches τ (FP side: 1)",
    "continuous", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.1",
))
ABOVE_TAU = register_metric(Metric(
    SUITE, "neurons_above_tau", "neurons with Imp ≥ the FP τ, divided by 300 (FP side: 1, more only if neurons tie at τ)",
    "continuous", bounds=(0.0, None), unit="× 300", tolerance="abs:0.2,two-sided",
))
SUBLAYER_COSINE = register_metric(Metric(
    SUITE, "sublayer_profile_cosine", "cosine of the FP and quantized per-layer attention+FFN Imp vectors (FP: 1)",
    "continuous", bounds=(-1.0, 1.0), unit="cosine", tolerance="abs:0.05",
))
WORST_LAYER = register_metric(Metric(
    SUITE, "worst_layer_top300_shift",
    "largest change over layers of the share of the top-300 neurons that lie in the layer (FP side: 0)",
    "continuous", direction="lower", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.1",
))
"""The per-layer profile of the important neurons as a gated metric; its band is the top-300 overlap's: no single
layer may gain or lose more of the important set than the whole set may change."""
NEURONS_METRICS = [TOP_OVERLAP, TOP_RETAINED, ABOVE_TAU, SUBLAYER_COSINE, WORST_LAYER]


@dataclass(frozen=True)
class Residuals:
    """One item's last-position activations per layer: residual before the layer, sublayer outputs, coefficients."""

    block_in: np.ndarray
    """``[L, d]`` residual stream entering each decoder layer."""
    attn: np.ndarray
    """``[L, d]`` attention output added to it."""
    mlp: np.ndarray
    """``[L, d]`` FFN output added after the attention."""
    coeffs: np.ndarray
    """``[L, n_neurons]`` post-activation coefficients m (the down projection's input)."""


@cache_type
@dataclass(frozen=True)
class NeuronScores:
    """Exact importances of the neurons that matter for one item on one model (flat index = l · n + k)."""

    attn: np.ndarray
    ffn: np.ndarray
    top: np.ndarray
    """Flat indices of the ``TOP_K`` most important neurons, most important first."""
    top_imp: np.ndarray
    above: int
    """Neurons with Imp ≥ the threshold asked for, else ≥ their own τ (K, or more when neurons tie at τ)."""
    probe_imp: np.ndarray
    """Imp of the neurons asked for by flat index (the FP top set, on the quantized side)."""
    n_neurons: int
    """FFN neurons per layer (flat index // n_neurons is the layer)."""

    @property
    def tau(self) -> float:
        """The lowest Imp among the top ``TOP_K``."""
        return float(self.top_imp[-1])


def importance(
    parts: ModelParts, base: "torch.Tensor", added: "torch.Tensor", token: int, base_of: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """Imp = log p(w | base + added) − log p(w | base) for the rows of ``added`` ``[N, d]``, on the CPU.

    ``base`` is one residual ``[d]``, or several ``[B, d]`` with ``base_of`` ``[N]`` naming each row's: every base
    and every perturbed row go through the full-vocabulary softmax together, ``CHUNK`` rows per unembedding pass.
    """
    import torch

    bases = base.reshape(-1, base.shape[-1])
    if base_of is None:
        base_of = torch.zeros(added.shape[0], dtype=torch.long, device=bases.device)
    rows = torch.cat([bases, bases[base_of] + added])
    scores = parts.token_log_probs(rows, torch.full((rows.shape[0],), token, dtype=torch.long), chunk=CHUNK)
    return scores[len(bases):] - scores[: len(bases)][base_of.cpu()]


def bound_directions(parts: ModelParts, bases: "torch.Tensor", token: int) -> "torch.Tensor":
    """``W_U^T (onehot(w) − p)`` for each residual of ``bases`` ``[B, d]``: the bound's linearisation, ``[B, d]``."""
    probs = parts.log_probs(bases).exp()
    probs[:, token] -= 1.0
    return -parts.unembed_transpose(probs)


def bound_rows(parts: ModelParts, base: "torch.Tensor", added: "torch.Tensor", direction: "torch.Tensor") -> "torch.Tensor":
    """Upper bound of :func:`importance` per row of ``added`` ``[N, d]`` (on the model's device; CPU result)."""
    import torch

    normed = parts.normed(torch.cat([base[None], base[None] + added]))
    return ((normed[1:] - normed[0]) @ direction.to(normed.device)).cpu()


def importance_bound(parts: ModelParts, base: "torch.Tensor", added: "torch.Tensor", token: int) -> "torch.Tensor":
    """Upper bound of :func:`importance` per row: ``Δz_w − p·Δz`` (convexity of log-sum-exp), ``O(N·d)``."""
    return bound_rows(parts, base, added, bound_directions(parts, base[None], token)[0])


def score_neurons(
    parts: ModelParts, residuals: Residuals, downs: Sequence["torch.Tensor"], token: int,
    threshold: float | None = None, probe: np.ndarray | None = None, top_k: int = TOP_K,
) -> NeuronScores:
    """Exact Imp of the top-k neurons, of every neuron above ``threshold`` and of the ``probe`` neurons.

    ``downs[l]`` is layer l's ``W_down`` ``[d, n_neurons]`` (any dtype and device). Neurons are scored exactly in
    decreasing order of their upper bound until the bound falls below the running k-th score and ``threshold``;
    the work runs on the model's device, each step batched across layers.
    """
    import torch

    with torch.no_grad():
        block_in, attn, mlp, coeffs = (torch.from_numpy(np.asarray(a, dtype=np.float32)).to(parts.device)
                                       for a in (residuals.block_in, residuals.attn, residuals.mlp, residuals.coeffs))
        mid = block_in + attn
        depth, width = coeffs.shape
        sublayers = importance(parts, torch.cat([block_in, mid]), torch.cat([attn, mlp]), token,
                               base_of=torch.arange(2 * depth, device=parts.device))

        def values(l: int, units: "torch.Tensor") -> "torch.Tensor":
            """The vectors ``m_k · W_down[:, k]`` that neurons ``units`` of layer ``l`` add, ``[len(units), d]``."""
            down = downs[l].to(parts.device)
            return coeffs[l, units][:, None] * down[:, units].t().float()

        def exact(flat: np.ndarray) -> np.ndarray:
            """Exact Imp of flat neuron indices, their layers' softmaxes batched together."""
            order = np.argsort(flat // width, kind="stable")
            layer_of = flat[order] // width
            added = torch.cat([values(int(l), torch.from_numpy(flat[order][layer_of == l] % width).to(parts.device))
                               for l in np.unique(layer_of)])  # grouped by layer, ascending, as ``order`` is
            found = np.empty(len(flat))
            found[order] = importance(parts, mid, added, token,
                                      base_of=torch.from_numpy(layer_of).to(parts.device)).double().numpy()
            return found

        directions = bound_directions(parts, mid, token)
        bound = torch.cat([
            bound_rows(parts, mid[l], values(l, torch.arange(width, device=parts.device)), directions[l])
            for l in range(depth)
        ]).double().numpy()
        order = np.argsort(-bound, kind="stable")
        scored = np.full(bound.shape, np.nan)
        start, step = 0, top_k + STEP
        while start < order.size:
            kth = np.sort(scored[~np.isnan(scored)])[-top_k] if start >= top_k else -np.inf
            floor = min(kth, threshold if threshold is not None else np.inf) - SLACK
            if bound[order[start]] < floor:
                break
            batch = order[start : start + step]
            scored[batch] = exact(batch)
            start, step = start + len(batch), STEP
        if probe is not None:
            missing = probe[np.isnan(scored[probe])]
            if missing.size:
                scored[missing] = exact(missing)
        known = np.flatnonzero(~np.isnan(scored))
        top = known[np.argsort(-scored[known], kind="stable")[:top_k]]
        cut = threshold if threshold is not None else float(scored[top[-1]])
        above = int((scored[known] >= cut).sum())
        return NeuronScores(
            attn=sublayers[:depth].double().numpy(), ffn=sublayers[depth:].double().numpy(), top=top, top_imp=scored[top],
            above=above, probe_imp=scored[probe] if probe is not None else np.zeros(0), n_neurons=width,
        )


def capture_residuals(side: "ModelSide", parts: ModelParts, prompts: Sequence[str]) -> list[Residuals]:
    """Last-position activations of every layer for each prompt, in one batched pass."""
    taps: dict[str, tuple["torch.nn.Module", str]] = {}
    for index, layer in enumerate(parts.layers):
        taps |= {f"in{index}": (layer.block, "input"), f"attn{index}": (layer.attn, "output"),
                 f"mlp{index}": (layer.mlp, "output"), f"m{index}": (layer.down, "input")}
    found = side.runtime.activations(prompts, taps)
    depth = range(len(parts.layers))
    return [
        Residuals(*(np.stack([found[f"{name}{l}"][i] for l in depth]) for name in ("in", "attn", "mlp", "m")))
        for i in range(len(prompts))
    ]


def side_scores(
    pair: "ModelPair", side: "ModelSide", items: Sequence[RecallItem], backend: "QuantBackend | None",
    reference: Sequence[NeuronScores] | None = None,
) -> list[NeuronScores] | None:
    """Scores of one model on every item (None when its W_down cannot be dequantized); cached per side, one
    sequential look's batch at a time.

    With ``reference`` (the quantized side) the FP τ is the threshold and the FP top set the probe.
    """

    def compute(start: int, stop: int) -> list[NeuronScores] | None:
        parts = model_parts(side.model)
        downs = [parts.down_weight(index, backend) for index in range(len(parts.layers))]
        if any(weight is None for weight in downs):
            return None
        prompts = [it.prompt for it in items[start:stop]]
        tokens = first_token_ids(side.runtime.tokenizer, prompts, [it.fact.object for it in items[start:stop]])
        residuals = capture_residuals(side, parts, prompts)
        return [
            score_neurons(parts, res, downs, token,  # type: ignore[arg-type]
                          threshold=None if reference is None else reference[i].tau,
                          probe=None if reference is None else reference[i].top, top_k=TOP_K)
            for i, (res, token) in enumerate(zip(residuals, tokens), start)
        ]

    def params(start: int, stop: int) -> dict[str, object]:
        return {"items": dataset_fingerprint([(it.id, it.prompt, it.fact) for it in items[start:stop]]),
                "prompt": PROMPT, "top_k": TOP_K, "method": METHOD,
                "reference": None if reference is None else stable_hash([[s.tau, s.top.tolist()]
                                                                         for s in reference[start:stop]])}

    return pair.cached_batches(side, "neurons.scores", len(items), get_suite(SUITE).look_items(pair.config),
                               params, compute)


def neuron_items(pair: "ModelPair", n: int) -> list[RecallItem]:
    """The first ``n`` knowledge facts the reference recalls correctly (greedy), from ``4n`` candidates."""
    pool = recall_items(pair, max(CANDIDATES_PER_ITEM * n, suite_items("knowledge", pair.config)))
    correct = recall_values(pair, pair.reference, pool)["recall_accuracy"]
    return [it for it, ok in zip(pool, correct) if ok == 1.0][:n]


def run_neurons(pair: "ModelPair") -> SuiteResult:
    """Neuron and sublayer attribution of both models on facts the reference recalls."""
    reason = no_relations(pair.config.data)
    if reason:
        return not_applicable(SUITE, NEURONS_METRICS, reason)
    n = suite_items(SUITE, pair.config)
    items = neuron_items(pair, n)
    if not items:
        reason = "the reference recalls none of the candidate facts (greedy), so no answer token can be attributed"
        return SuiteResult(SUITE, [], {}, {}, {"items": dataset_fingerprint([])},
                           skipped={m.name: reason for m in NEURONS_METRICS})
    reference = side_scores(pair, pair.reference, items, backend=None)
    assert reference is not None  # the reference's own float weights are always readable
    quantized = side_scores(pair, pair.quantized, items, backend=pair.backend, reference=reference)
    ids = [it.id for it in items]
    fingerprint = {"items": dataset_fingerprint([(it.id, it.prompt, it.fact) for it in items]),
                   "method": stable_hash({"top_k": TOP_K, "method": METHOD, "prompt": PROMPT})}
    notes = {
        "facts": f"{len(items)} knowledge facts the reference recalls correctly (prompt {PROMPT['version']})",
        "answer_token": "first token of the object after the prompt",
        "tau": "lowest Imp among the FP top-300 neurons of each fact",
        "w_down": f"quantized side dequantized by the {pair.backend.name} backend",
    }
    if quantized is None:
        reason = f"{NOT_APPLICABLE}the {pair.backend.name} backend cannot dequantize its linear layers"
        return SuiteResult(SUITE, ids, {}, {}, fingerprint, skipped={m.name: reason for m in NEURONS_METRICS},
                           notes=notes)
    ones = np.ones(len(items))
    by_layer = {side: np.array([np.bincount(s.top // s.n_neurons, minlength=len(s.attn)) / TOP_K for s in scores])
                for side, scores in (("reference", reference), ("quantized", quantized))}
    quant_vals = {
        TOP_OVERLAP.name: np.array([len(set(r.top) & set(q.top)) / TOP_K for r, q in zip(reference, quantized)]),
        TOP_RETAINED.name: np.array([float(np.mean(q.probe_imp >= r.tau)) for r, q in zip(reference, quantized)]),
        ABOVE_TAU.name: np.array([q.above / TOP_K for q in quantized]),
        SUBLAYER_COSINE.name: cosine(np.array([np.concatenate([r.attn, r.ffn]) for r in reference]),
                                     np.array([np.concatenate([q.attn, q.ffn]) for q in quantized])),
        WORST_LAYER.name: np.abs(by_layer["quantized"] - by_layer["reference"]).max(axis=1),
    }
    profiles = {
        f"{SUBLAYER_COSINE.name}/{kind}_by_layer": {
            "reference": np.mean([getattr(s, kind) for s in reference], axis=0).tolist(),
            "quantized": np.mean([getattr(s, kind) for s in quantized], axis=0).tolist(),
        }
        for kind in ("attn", "ffn")
    }
    profiles[f"{TOP_OVERLAP.name}/top_neurons_by_layer"] = {
        side: (TOP_K * shares.mean(axis=0)).tolist() for side, shares in by_layer.items()}
    profiles[f"{WORST_LAYER.name}/top_share_by_layer"] = {side: shares.mean(axis=0).tolist()
                                                         for side, shares in by_layer.items()}
    ref_vals = {name: ones for name in quant_vals} | {ABOVE_TAU.name: np.array([r.above / TOP_K for r in reference]),
                                                      WORST_LAYER.name: np.zeros(len(items))}
    caveat = model_parts(pair.reference.model).neuron_caveat
    skipped = {m.name: f"not applicable: {caveat}, so a single value neuron is not an additive part of it"
               for m in (TOP_OVERLAP, TOP_RETAINED, ABOVE_TAU, WORST_LAYER)} if caveat else {}
    return SuiteResult(SUITE, ids, {k: v for k, v in ref_vals.items() if k not in skipped},
                       {k: v for k, v in quant_vals.items() if k not in skipped}, fingerprint,
                       profiles=profiles, skipped=skipped, notes=notes)


NEURONS_SUITE = register_suite(Suite(
    SUITE,
    "Neuron-level knowledge attribution (Yu & Ananiadou 2024): top-300 neuron overlap and sublayer profiles.",
    tuple(NEURONS_METRICS), run_neurons,
    sizes={"smoke": 16, "standard": 60, "full": 200}, item_cost=1.2,
))
