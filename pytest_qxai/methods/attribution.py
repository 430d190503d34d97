"""Feature-attribution faithfulness on e-SNLI (ERASER) and FP–quantized agreement of the attributions.

Both models explain the same label ``y``, the *reference's* predicted label (the task suite's prediction,
shared through the cache), after the task suite's prompt: agreement compares attributions of one quantity,
and no value of the reference side depends on the quantized model. The explained quantity is ``p(y | x)``, the softmax over the label options'
log-likelihoods: the options are single tokens (" yes", " maybe", " no" on SmolLM2), so one forward gives
it, differentiably, and it is exactly the task suite's scoring. Features are the whitespace-separated
words of premise and hypothesis.

Attribution methods (captum), each the same on both sides so that the agreement metrics compare like
with like:

* occlusion (``FeatureAblation``), the primary method: a word's attribution is the drop of ``p(y|x)`` when
  that word's token embeddings are set to zero. It needs no backward pass, so it runs for every backend.
* integrated gradients (``IntegratedGradients`` on the input embeddings, ``ig_`` metrics), from the same
  zero-embedding baseline at the item's tokens (the template stays), summed over a word's tokens and
  dimensions. It runs only when both models have a backward pass and the models are on a GPU: on
  SmolLM2 few integration steps are noise (see ``IG_STEPS``), and 64 forward and backward passes per item
  cost about nine times occlusion's ~22 forward passes: tens of minutes per model on a CPU.

Input×gradient is not offered: on SmolLM2 its word rankings were uncorrelated with integrated gradients
(mean Spearman 0.01) and no more comprehensive than a random ranking (16 items, zero-shot label prompt).

Faithfulness by erasure (DeYoung et al. 2020, ERASER): "removing" a word deletes it from the text and the
prompt is rendered again without it, as ERASER does (not masking, not padding). For k in 1, 5, 10, 20,
50 % the top ``ceil(k/100 · n)`` words by attribution are deleted (comprehensiveness) or are the only
words kept (sufficiency); each score is the mean over the five k of ``p(y|x) − p(y|x')`` (AOPC).

A constant attribution vector (every word scored the same: the method found nothing) is degenerate: it
ranks no word, so every metric of that item on that side scores its worst value (comprehensiveness −1,
sufficiency 1, rank correlation −1, top-k overlap 0), and ``degenerate_rate`` counts it. Where only the
reference's vector is constant, the quantized side's rank correlation is 0 (no monotone relation exists).

Precondition: the explained quantity is ``p(y|x)`` of an e-SNLI label, so every metric but
``degenerate_rate`` is ``not applicable`` when the reference is not significantly above chance on the items.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ..datasets import NLIItem, dataset_fingerprint
from ..errors import QxaiError
from ..metrics import Metric, SuiteResult, register_metric
from ..profiles import suite_size
from ..storage import stable_hash
from . import task
from .outcomes import degenerate_metric, lost_counts, require_competence, scored, worst_value

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide
    from ..runtime import Runtime

Method = Literal["occlusion", "integrated_gradients"]

SUITE = "attribution"
VERSION = "attribution-v2"
K_PERCENTS = (1, 5, 10, 20, 50)
TOPK_FRACTION = 0.2
IG_STEPS = 64
"""Gauss–Legendre steps (captum's default is 50). Few steps are noise on SmolLM2: word rankings from 8 and
16 steps agreed at a mean Spearman correlation of only 0.22 over 16 e-SNLI items (zero-shot label prompt)."""
METHOD_PREFIX: dict[Method, str] = {"occlusion": "", "integrated_gradients": "ig_"}


def _metrics(method: Method, label: str) -> list[Metric]:
    """The four metrics of one attribution method (erasure faithfulness and agreement)."""
    prefix = METHOD_PREFIX[method]
    return [
        register_metric(Metric(
            SUITE, prefix + "comprehensiveness",
            f"AOPC drop of p(predicted label) when the top-k% words by {label} are deleted (k = 1, 5, 10, 20, 50)",
            "continuous", direction="higher", bounds=(-1.0, 1.0), unit="probability", tolerance="abs:0.03",
        )),
        register_metric(Metric(
            SUITE, prefix + "sufficiency",
            f"AOPC drop of p(predicted label) when only the top-k% words by {label} are kept",
            "continuous", direction="lower", bounds=(-1.0, 1.0), unit="probability", tolerance="abs:0.03",
        )),
        register_metric(Metric(
            SUITE, prefix + "rank_correlation",
            f"Spearman correlation of the quantized model's {label} word attributions with the reference's "
            "(reference = 1)",
            "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.2",
        )),
        register_metric(Metric(
            SUITE, prefix + "topk_overlap",
            f"Share of the reference's top-20% words by {label} also in the quantized model's top 20%, beyond "
            "the share two random rankings have (reference = 1)",
            "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.2",
        )),
        degenerate_metric(SUITE, f"constant {label} attribution vector", prefix + "degenerate_rate"),
    ]


OCCLUSION_METRICS = _metrics("occlusion", "occlusion")
IG_METRICS = _metrics("integrated_gradients", "integrated gradients")
ATTRIBUTION_METRICS: list[Metric] = OCCLUSION_METRICS + IG_METRICS
TASK_DEPENDENT: list[Metric] = [m for m in ATTRIBUTION_METRICS if not m.name.endswith("degenerate_rate")]


# --- pure formulas ----------------------------------------------------------------------------------------

def k_counts(n_words: int, percents: Sequence[float] = K_PERCENTS) -> list[int]:
    """Words in the top k% for each k: ``ceil(k/100 · n)``, at least one and at most ``n``."""
    return [min(n_words, max(1, math.ceil(p / 100 * n_words))) for p in percents]


def top_words(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores (ties broken by position, so the ranking is deterministic)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]


def aopc(full: np.ndarray, erased: np.ndarray) -> np.ndarray:
    """Area over the perturbation curve: mean over the erasure levels of ``p(y|x) − p(y|x_k)``.

    ``full`` is ``[n]``, ``erased`` ``[n, levels]``. ERASER (DeYoung et al. 2020, §4.2) uses it for both
    comprehensiveness (x_k = x without its top-k% words) and sufficiency (x_k = only those words).
    ERASER's formula divides by |B| + 1 with an empty bin that adds nothing to comprehensiveness; here
    the mean is over the bins themselves, so the value is the average drop per erasure level.
    """
    return np.mean(np.asarray(full, dtype=np.float64)[:, None] - np.asarray(erased, dtype=np.float64), axis=1)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """``|top_k(a) ∩ top_k(b)| / k``: the share of the highest-scored features two attributions share."""
    return len(set(top_words(a, k).tolist()) & set(top_words(b, k).tolist())) / k


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two attribution vectors (NaN when either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def agreement(reference: Sequence[np.ndarray], quantized: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-item rank correlation and top-20% overlap of the quantized side's attributions with the reference's."""
    rho = np.array([rank_correlation(r, q) for r, q in zip(reference, quantized)])
    overlap = np.array([
        chance_corrected_overlap(r, q, k_counts(len(r), [TOPK_FRACTION * 100])[0]) for r, q in zip(reference, quantized)
    ])
    return rho, overlap


def chance_corrected_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Top-k overlap beyond chance, ``(overlap - k/n) / (1 - k/n)``: 1 when identical, about 0 for random rankings.

    Two random rankings of n words share k/n of their top k on average (hypergeometric mean), so the raw
    overlap of a random attribution is not 0. NaN when k = n (every word is in the top k).
    """
    n = len(a)
    return math.nan if k >= n else (topk_overlap(a, b, k) - k / n) / (1 - k / n)


# --- prompts and features ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """A rendered task prompt and the character span of every feature word (premise words, then hypothesis)."""

    prompt: str
    spans: tuple[tuple[int, int], ...]


def item_words(item: NLIItem) -> tuple[list[str], list[str]]:
    """The item's features: premise and hypothesis split on whitespace."""
    return item.premise.split(), item.hypothesis.split()


def render(tokenizer: "PreTrainedTokenizerBase", premise: Sequence[str], hypothesis: Sequence[str]) -> str:
    """The task suite's prompt for these premise and hypothesis words."""
    return task.nli_prompt(tokenizer, " ".join(premise), " ".join(hypothesis))


def layout(tokenizer: "PreTrainedTokenizerBase", premise: Sequence[str], hypothesis: Sequence[str]) -> Layout:
    """Render the task prompt for these words and locate each word in it."""
    p_text, h_text = " ".join(premise), " ".join(hypothesis)
    prompt = render(tokenizer, premise, hypothesis)
    h_start = prompt.rfind(h_text) if h_text else len(prompt)
    p_start = prompt.rfind(p_text, 0, h_start) if p_text else h_start
    if h_start < 0 or p_start < 0:
        raise QxaiError("cannot find the premise and hypothesis in the task prompt (premise must come first)")
    spans = _word_spans(premise, p_start) + _word_spans(hypothesis, h_start)
    return Layout(prompt, tuple(spans))


def _word_spans(words: Sequence[str], start: int) -> list[tuple[int, int]]:
    """Character spans of space-joined ``words`` whose text begins at ``start``."""
    spans, pos = [], start
    for word in words:
        spans.append((pos, pos + len(word)))
        pos += len(word) + 1
    return spans


def erasure_prompts(
    tokenizer: "PreTrainedTokenizerBase", premise: Sequence[str], hypothesis: Sequence[str], scores: np.ndarray
) -> tuple[list[str], list[str]]:
    """Prompts with the top-k% words deleted (comprehensiveness) and with only them kept (sufficiency), per k."""
    n_p = len(premise)
    words = list(premise) + list(hypothesis)
    comprehensive, sufficient = [], []
    for k in k_counts(len(words)):
        top = set(top_words(scores, k).tolist())
        for keep_top, out in ((False, comprehensive), (True, sufficient)):
            kept = [j for j in range(len(words)) if (j in top) == keep_top]
            out.append(render(tokenizer, [words[j] for j in kept if j < n_p], [words[j] for j in kept if j >= n_p]))
    return comprehensive, sufficient


# --- model computations -----------------------------------------------------------------------------------

def option_token_ids(runtime: "Runtime") -> list[int]:
    """The token id of each label option; attribution needs single-token options (one forward per input)."""
    options = task.NLI_TEMPLATE["options"]
    ids = runtime.encode(list(options), add_special_tokens=False)
    if any(len(i) != 1 for i in ids):
        raise QxaiError(f"the attribution suite needs single-token label options; {options} are not under this "
                        "tokenizer")
    return [i[0] for i in ids]


def label_probs(runtime: "Runtime", prompts: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """``p(y | prompt)``: softmax of the task suite's option scores; each distinct prompt is scored once."""
    option_token_ids(runtime)
    unique, index = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
    logp = task.option_scores(runtime, [str(p) for p in unique], task.NLI_TEMPLATE["options"])[index]
    probs = np.exp(logp - logp.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs[np.arange(len(prompts)), np.asarray(labels)]


def erasure_scores(
    runtime: "Runtime", items: Sequence[NLIItem], labels: np.ndarray, scores: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-item comprehensiveness and sufficiency (AOPC) of the word rankings ``scores``, all erasures in one batch."""
    tokenizer = runtime.tokenizer
    full, comprehensive, sufficient = [], [], []
    for item, item_scores in zip(items, scores):
        premise, hypothesis = item_words(item)
        full.append(render(tokenizer, premise, hypothesis))
        comp, suff = erasure_prompts(tokenizer, premise, hypothesis, item_scores)
        comprehensive += comp
        sufficient += suff
    n, levels = len(items), len(K_PERCENTS)
    per_level = np.repeat(labels, levels)
    probs = label_probs(runtime, full + comprehensive + sufficient, np.concatenate([labels, per_level, per_level]))
    p_full = probs[:n]
    p_comp = probs[n : n + n * levels].reshape(n, levels)
    p_suff = probs[n + n * levels :].reshape(n, levels)
    return aopc(p_full, p_comp), aopc(p_full, p_suff)


def word_attributions(
    runtime: "Runtime", layouts: Sequence[Layout], labels: np.ndarray, method: Method
) -> list[np.ndarray]:
    """Per-word attributions of ``p(y|x)`` for each prompt, computed with captum in length-sorted batches."""
    import torch
    from captum.attr import FeatureAblation, IntegratedGradients

    model, tokenizer = runtime.model, runtime.tokenizer
    option_ids = torch.tensor(option_token_ids(runtime), device=runtime.device)

    def forward(embeds: "torch.Tensor", mask: "torch.Tensor", positions: "torch.Tensor") -> "torch.Tensor":
        logits = runtime.forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                 logits_to_keep=1).logits
        runtime.stats.tokens_scored += int(mask.sum())
        return torch.softmax(logits[:, -1].float().index_select(-1, option_ids), dim=-1)

    out: list[np.ndarray] = [np.zeros(0)] * len(layouts)
    order = sorted(range(len(layouts)), key=lambda i: -len(layouts[i].prompt))
    for start in range(0, len(order), runtime.batch_size):
        batch = order[start : start + runtime.batch_size]
        enc = tokenizer([layouts[i].prompt for i in batch], return_offsets_mapping=True, padding=True,
                        return_tensors="pt")
        word_of = _token_words(enc["offset_mapping"], enc["attention_mask"], [layouts[i].spans for i in batch])
        mask = enc["attention_mask"].to(runtime.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            embeds = model.get_input_embeddings()(enc["input_ids"].to(runtime.device))
        baseline = embeds * torch.as_tensor(word_of < 0, device=runtime.device).unsqueeze(-1)
        target = torch.as_tensor(labels[batch], device=runtime.device)
        started = time.perf_counter()
        if method == "integrated_gradients":
            with torch.enable_grad():
                attr = IntegratedGradients(forward).attribute(
                    embeds, baselines=baseline, target=target, additional_forward_args=(mask, positions),
                    n_steps=IG_STEPS, internal_batch_size=runtime.batch_size,
                )
            token_scores = attr.sum(-1)  # gradients split a word's effect over its tokens and dimensions
        else:
            with torch.no_grad():
                attr = FeatureAblation(forward).attribute(
                    embeds, baselines=baseline, target=target, additional_forward_args=(mask, positions),
                    feature_mask=torch.as_tensor(word_of + 1, device=runtime.device).unsqueeze(-1),
                )
            token_scores = attr[..., 0]  # occlusion gives every element of a word the whole word's effect
        runtime.stats.add(method, time.perf_counter() - started)  # captum's passes are model work
        scores = token_scores.detach().float().cpu().numpy()
        for row, i in enumerate(batch):
            words, n_words = word_of[row], len(layouts[i].spans)
            if method == "integrated_gradients":
                out[i] = np.bincount(words[words >= 0], weights=scores[row][words >= 0], minlength=n_words)
            else:
                first = {int(w): t for t, w in reversed(list(enumerate(words))) if w >= 0}
                out[i] = np.array([scores[row, first[w]] if w in first else 0.0 for w in range(n_words)])
    return out


def _token_words(
    offsets: "torch.Tensor", mask: "torch.Tensor", spans: Sequence[Sequence[tuple[int, int]]]
) -> np.ndarray:
    """``[batch, tokens]`` index of the feature word each token overlaps (−1 for template and padding)."""
    offsets_np, mask_np = offsets.numpy(), mask.numpy().astype(bool)
    word_of = np.full(mask_np.shape, -1, dtype=np.int64)
    for row, item_spans in enumerate(spans):
        for word, (lo, hi) in enumerate(item_spans):
            overlap = (offsets_np[row, :, 0] < hi) & (offsets_np[row, :, 1] > lo) & mask_np[row]
            word_of[row, overlap & (word_of[row] < 0)] = word
    return word_of


# --- the suite --------------------------------------------------------------------------------------------

def gradient_plan(pair: "ModelPair") -> str | None:
    """None when integrated gradients can run on both sides, else the reason they are skipped."""
    missing = [f"{side.role}: {side.backward_ok()[1]}" for side in pair.sides if not side.backward_ok()[0]]
    if missing:
        return "integrated gradients need a backward pass on both sides (" + "; ".join(missing) + ")"
    if pair.reference.runtime.device.type == "cpu":
        return (f"integrated gradients need {IG_STEPS} forward+backward passes per item to converge on this model, "
                "too slow on a CPU; run on a GPU (--qxai-device cuda) for the ig_ metrics")
    return None


def _side_result(
    side: "ModelSide", items: Sequence[NLIItem], labels: np.ndarray, methods: Sequence[Method]
) -> dict[str, dict[str, Any]]:
    """Word attributions and erasure scores of one model, for each attribution method."""
    layouts = [layout(side.runtime.tokenizer, *item_words(item)) for item in items]
    result: dict[str, dict[str, Any]] = {}
    for method in methods:
        scores = word_attributions(side.runtime, layouts, labels, method)
        comp, suff = erasure_scores(side.runtime, items, labels, scores)
        result[method] = {"scores": scores, "comprehensiveness": comp, "sufficiency": suff}
    return result


def run_attribution(pair: "ModelPair") -> SuiteResult:
    """Attributions of both models' predicted labels, their erasure faithfulness and their agreement."""
    n = suite_size(SUITE, pair.config.profile, pair.config.samples)
    items = task.esnli_items(pair, n)
    skip_ig = gradient_plan(pair)
    methods: list[Method] = ["occlusion"] if skip_ig else ["occlusion", "integrated_gradients"]
    data_hash = dataset_fingerprint(items)
    params = {"data": data_hash, "version": VERSION, "task": task.template_id(pair.tokenizer), "k": K_PERCENTS,
              "ig_steps": IG_STEPS, "methods": methods}
    labels = task.nli_predictions(pair, pair.reference, n).predicted
    results = {side.role: pair.cached(side, "attribution", params,
                                      lambda: _side_result(side, items, labels, methods)) for side in pair.sides}
    reference: dict[str, np.ndarray] = {}
    quantized: dict[str, np.ndarray] = {}
    lost: dict[str, dict[str, int]] = {}
    for method in methods:
        prefix = METHOD_PREFIX[method]
        ref, quant = results["reference"][method], results["quantized"][method]
        constant = {role: np.array([np.ptp(s) == 0 for s in r[method]["scores"]]) for role, r in results.items()}
        by_name = {m.name: m for m in ATTRIBUTION_METRICS}
        rho, overlap = agreement(ref["scores"], quant["scores"])
        measured = {"comprehensiveness": (ref["comprehensiveness"], quant["comprehensiveness"]),
                    "sufficiency": (ref["sufficiency"], quant["sufficiency"]),
                    "rank_correlation": (np.ones(n), rho), "topk_overlap": (np.ones(n), overlap)}
        rho[constant["reference"] & ~constant["quantized"]] = 0.0  # no monotone relation with an all-tied ranking
        for name, (ref_values, quant_values) in measured.items():
            worst = worst_value(by_name[prefix + name])
            own = name in ("comprehensiveness", "sufficiency")  # agreement: the reference side is 1 by definition
            reference[prefix + name] = scored(ref_values, constant["reference"], worst) if own else ref_values
            quantized[prefix + name] = scored(quant_values, constant["quantized"], worst)
        reference[prefix + "degenerate_rate"] = constant["reference"].astype(np.float64)
        quantized[prefix + "degenerate_rate"] = constant["quantized"].astype(np.float64)
        lost.update(lost_counts(constant, [prefix + name for name in measured]))
    notes = {
        "attribution_method": {"reference": methods, "quantized": methods},
        "integrated_gradients": skip_ig or f"ran on both sides ({IG_STEPS} Gauss-Legendre steps)",
        "explained_label": "the reference's predicted label on both sides (task suite prediction)",
        "degenerate": "constant attribution vector; scored comprehensiveness -1, sufficiency 1, rank correlation -1, "
                      "top-k overlap 0",
        "baseline": "zero embedding at the item's tokens (occlusion replacement and integrated-gradients baseline)",
        "erasure": "words deleted from the text; top ceil(k% of n) words, k in " + ", ".join(map(str, K_PERCENTS)),
        "topk_fraction": TOPK_FRACTION,
        "items_where_the_quantized_model_predicts_another_label": int(np.sum(
            labels != task.nli_predictions(pair, pair.quantized, n).predicted)),
        "template_version": f"{VERSION}, {task.NLI_TEMPLATE['version']}",
    }
    result = SuiteResult(
        SUITE, [item.id for item in items], reference, quantized,
        fingerprint={"data": data_hash, "version": VERSION, "task_template": task.template_id(pair.tokenizer),
                     "topk_overlap": "chance-corrected",
                     "params": stable_hash(params)},
        skipped={m.name: skip_ig for m in IG_METRICS} if skip_ig else {},
        notes=notes, lost=lost,
    )
    dependent = [m for m in TASK_DEPENDENT if m.name not in result.skipped]
    require_competence(result, "e-SNLI", task.nli_predictions(pair, pair.reference, n).correct, 1 / 3, dependent)
    return result
