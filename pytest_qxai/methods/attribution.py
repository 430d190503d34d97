"""Feature-attribution faithfulness (ERASER) and FP–quantized agreement of the attributions, on labelled text.

Runs on every labelled dataset of the run (e-SNLI, your classification files: the plain metrics) and on ECQA
(``ecqa_`` metrics, see below). Both models explain the same
label ``y``, the *reference's* predicted label (the task suite's prediction, shared through the cache), after
the task suite's prompt: agreement compares attributions of one quantity, and no value of the reference side
depends on the quantized model. The explained quantity is ``p(y | x)``, the softmax over the label options'
log-likelihoods, exactly the task suite's scoring. A label of several tokens contributes its full continuation
log-probability (the sum over its tokens: each option's tokens appended after the input, one forward per
option), so labels need not be single tokens; single-token options (" yes", " maybe", " no" on SmolLM2) take one
forward for all of them. Features are the whitespace-separated words of the item's texts (premise and
hypothesis, or the text).

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
sufficiency 1, rank correlation −1, top-k overlap −1: each metric's bound, below any overlap a ranking reaches,
so failing to rank never scores better than ranking badly), and ``degenerate_rate`` counts it. Where only the
reference's vector is constant, the quantized side's rank correlation is 0 (no monotone relation exists); where
both are, both sides' agreement is 1 (two all-tied rankings agree: identical models give identical values).

ECQA (``ecqa_`` metrics, occlusion only): the explained quantity is ``p(y | question)``, the softmax over the
item's five options of their summed log-probabilities after the task suite's 3-shot cloze prompt, ``y`` the
reference's cloze answer. The features are the question's words. The options are not features: they are the
explained classes, scored as continuations and never shown in the prompt, so deleting a question word (ERASER)
leaves the same well-formed cloze with a shorter question. The demonstrations before the question are the same
for every prompt and run once (key/value cache). Integrated gradients are not run on ECQA: they are GPU-only here
and ECQA is there to give a small model a task it can do (SmolLM2 is at chance on e-SNLI).

Precondition: the explained quantity is ``p(y|x)`` of a task label, so every metric but ``degenerate_rate`` is
``not applicable`` when the reference is not significantly above chance on the items (over several datasets:
against the mean of their chance levels; ECQA on its own items against 1/5).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ..datasets import dataset_fingerprint
from ..errors import QxaiError
from ..metrics import NOT_APPLICABLE, Metric, SuiteResult, combine, derived_metric, not_applicable, register_metric
from ..profiles import suite_items
from ..storage import stable_hash
from ..suite import Suite, register_suite
from . import task
from .task import MCQ_TASK, ClozeTask, LabelTask, cloze_logprobs, option_scores
from .outcomes import competence_items, degenerate_metric, lost_counts, require_competence, scored, worst_value

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide
    from ..protocols import Runtime

Method = Literal["occlusion", "integrated_gradients"]
Explained = LabelTask | ClozeTask
"""A dataset whose label the suite explains: e-SNLI, a classification file, or ECQA."""

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
ECQA_METRICS: dict[Metric, Metric] = {metric: derived_metric(metric, "ecqa_", "ECQA") for metric in OCCLUSION_METRICS}
"""Each occlusion metric → its ECQA counterpart (integrated gradients are not run on ECQA)."""


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
    """A rendered task prompt and the character span of every feature word (each field's words, in order)."""

    prompt: str
    spans: tuple[tuple[int, int], ...]


def item_words(task: Explained, item: Any) -> list[list[str]]:
    """The item's features: each of its texts split on whitespace."""
    return [text.split() for text in task.fields(item)]


def render(tokenizer: "PreTrainedTokenizerBase", task: Explained, fields: Sequence[Sequence[str]]) -> str:
    """The task suite's prompt for these words of each field."""
    return task.prompt(tokenizer, [" ".join(words) for words in fields])


def layout(tokenizer: "PreTrainedTokenizerBase", task: Explained, fields: Sequence[Sequence[str]]) -> Layout:
    """Render the task prompt for these words and locate each word in it (fields are found from the last back)."""
    prompt = render(tokenizer, task, fields)
    starts: list[int] = []
    end = len(prompt)
    for words in reversed(fields):
        text = " ".join(words)
        end = prompt.rfind(text, 0, end) if text else end
        if end < 0:
            raise QxaiError(f"cannot find the {task.name} item's texts in its task prompt, in order")
        starts.insert(0, end)
    spans = [span for words, start in zip(fields, starts) for span in _word_spans(words, start)]
    return Layout(prompt, tuple(spans))


def _word_spans(words: Sequence[str], start: int) -> list[tuple[int, int]]:
    """Character spans of space-joined ``words`` whose text begins at ``start``."""
    spans, pos = [], start
    for word in words:
        spans.append((pos, pos + len(word)))
        pos += len(word) + 1
    return spans


def erasure_prompts(
    tokenizer: "PreTrainedTokenizerBase", task: Explained, fields: Sequence[Sequence[str]], scores: np.ndarray
) -> tuple[list[str], list[str]]:
    """Prompts with the top-k% words deleted (comprehensiveness) and with only them kept (sufficiency), per k."""
    words = [(f, word) for f, group in enumerate(fields) for word in group]
    comprehensive, sufficient = [], []
    for k in k_counts(len(words)):
        top = set(top_words(scores, k).tolist())
        for keep_top, out in ((False, comprehensive), (True, sufficient)):
            kept = [words[j] for j in range(len(words)) if (j in top) == keep_top]
            out.append(render(tokenizer, task, [[w for f, w in kept if f == field] for field in range(len(fields))]))
    return comprehensive, sufficient


# --- model computations -----------------------------------------------------------------------------------

def label_probs(runtime: "Runtime", task: Explained, prompts: Sequence[str], labels: np.ndarray,
                options: Sequence[tuple[str, ...]] | None = None) -> np.ndarray:
    """``p(y | prompt)``: softmax of the task suite's option scores; each distinct prompt is scored once.

    ``options`` are each prompt's own continuations, needed for ECQA (every item has its own answer options).
    """
    if options is None:
        if isinstance(task, ClozeTask):
            raise ValueError("ECQA prompts need their own options")
        options = [task.options] * len(prompts)
    keys: dict[tuple[str, tuple[str, ...]], int] = {}
    index = np.array([keys.setdefault((p, tuple(o)), len(keys)) for p, o in zip(prompts, options)], dtype=np.int64)
    unique = list(keys)
    if isinstance(task, ClozeTask):
        logp = cloze_logprobs(runtime, [p for p, _ in unique], [o for _, o in unique])
    else:
        logp = option_scores(runtime, [p for p, _ in unique], task.options)
    logp = logp[index] if len(prompts) else logp
    probs = np.exp(logp - logp.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs[np.arange(len(prompts)), np.asarray(labels)]


def erasure_scores(
    runtime: "Runtime", task: Explained, items: Sequence[Any], labels: np.ndarray, scores: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-item comprehensiveness and sufficiency (AOPC) of the word rankings ``scores``, all erasures in one batch."""
    tokenizer = runtime.tokenizer
    full, comprehensive, sufficient = [], [], []
    for item, item_scores in zip(items, scores):
        fields = item_words(task, item)
        full.append(render(tokenizer, task, fields))
        comp, suff = erasure_prompts(tokenizer, task, fields, item_scores)
        comprehensive += comp
        sufficient += suff
    n, levels = len(items), len(K_PERCENTS)
    per_level = np.repeat(labels, levels)
    own = [task.item_options(item) for item in items]
    options = own + [o for o in own for _ in range(levels)] * 2
    probs = label_probs(runtime, task, full + comprehensive + sufficient,
                        np.concatenate([labels, per_level, per_level]), options)
    p_full = probs[:n]
    p_comp = probs[n : n + n * levels].reshape(n, levels)
    p_suff = probs[n + n * levels :].reshape(n, levels)
    return aopc(p_full, p_comp), aopc(p_full, p_suff)


def label_distribution(runtime: "Runtime", option_ids: Sequence[Sequence[int]]) -> Any:
    """``forward(embeds, mask, positions) -> [b, options]``: ``p(label | x)`` from input embeddings, differentiably.

    Single-token options are read off one forward's last position; otherwise each option's tokens are appended
    (their embeddings after the input's) and its summed log-probability taken, one forward per option.
    """
    import torch

    single = all(len(ids) == 1 for ids in option_ids)
    firsts = torch.tensor([ids[0] for ids in option_ids], device=runtime.device)
    table = runtime.model.get_input_embeddings()

    def forward(embeds: "torch.Tensor", mask: "torch.Tensor", positions: "torch.Tensor") -> "torch.Tensor":
        runtime.stats.tokens_scored += int(mask.sum())
        if single:
            logits = runtime.forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     logits_to_keep=1).logits
            return torch.softmax(logits[:, -1].float().index_select(-1, firsts), dim=-1)
        scores = []
        for ids in option_ids:
            tail = torch.tensor(ids, device=embeds.device)
            with torch.no_grad():
                extra = table(tail).to(embeds.dtype).expand(embeds.shape[0], -1, -1)
            steps = torch.arange(1, len(ids) + 1, device=positions.device)
            logits = runtime.forward(
                inputs_embeds=torch.cat([embeds, extra], dim=1),
                attention_mask=torch.cat([mask, mask.new_ones(mask.shape[0], len(ids))], dim=1),
                position_ids=torch.cat([positions, positions[:, -1:] + steps], dim=1),
                logits_to_keep=len(ids) + 1,
            ).logits[:, :-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(-1, tail.expand(embeds.shape[0], -1)[..., None])
            scores.append(picked[..., 0].sum(dim=-1))
        return torch.softmax(torch.stack(scores, dim=-1), dim=-1)

    return forward


def word_attributions(
    runtime: "Runtime", options: Sequence[str], layouts: Sequence[Layout], labels: np.ndarray, method: Method
) -> list[np.ndarray]:
    """Per-word attributions of ``p(y|x)`` for each prompt, computed with captum in length-sorted batches."""
    import torch
    from captum.attr import FeatureAblation, IntegratedGradients

    model = runtime.model
    forward = label_distribution(runtime, runtime.encode(list(options), add_special_tokens=False))

    out: list[np.ndarray] = [np.zeros(0)] * len(layouts)
    order = sorted(range(len(layouts)), key=lambda i: -len(layouts[i].prompt))
    for start in range(0, len(order), runtime.batch_size):
        batch = order[start : start + runtime.batch_size]
        encoded = runtime.encode_with_offsets([layouts[i].prompt for i in batch])
        ids, mask = runtime.pad([tokens for tokens, _ in encoded])
        word_of = _token_words([spans for _, spans in encoded], ids.shape[1], [layouts[i].spans for i in batch])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)
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
                out[i] = _occlusion_words(words, scores[row], n_words)
    return out


def _occlusion_words(word_of: np.ndarray, token_scores: np.ndarray, n_words: int) -> np.ndarray:
    """Per-word occlusion scores from per-token ones (every token of a word carries the whole word's effect)."""
    first = {int(w): t for t, w in reversed(list(enumerate(word_of))) if w >= 0}
    return np.array([token_scores[first[w]] if w in first else 0.0 for w in range(n_words)])


def cloze_occlusion(
    runtime: "Runtime", options: Sequence[Sequence[str]], layouts: Sequence[Layout], labels: np.ndarray
) -> list[np.ndarray]:
    """Occlusion of ``p(y|x)`` over each prompt's own options (ECQA), one prompt at a time.

    The template tokens before the first word (the demonstrations) are the same for every prompt: they run
    once and their key/value cache serves every pass. The prompt's tokens after them run once per ablation
    (``FeatureAblation`` batches the ablations), then every option's tokens after that cache.
    """
    import copy

    import torch
    from captum.attr import FeatureAblation
    from transformers import DynamicCache

    encoded = runtime.encode_with_offsets([lay.prompt for lay in layouts])
    word_of = [_token_words([spans], len(spans), [lay.spans])[0] for (_, spans), lay in zip(encoded, layouts)]
    ids = [tokens for tokens, _ in encoded]
    start = min([len(os.path.commonprefix(ids))] + [int(np.flatnonzero(w >= 0)[0]) for w in word_of if (w >= 0).any()])
    base = DynamicCache()
    with torch.no_grad():
        runtime.forward(input_ids=torch.tensor([ids[0][:start]], device=runtime.device), past_key_values=base,
                        use_cache=True, logits_to_keep=1)
    runtime.stats.tokens_scored += start

    def forward(embeds: "torch.Tensor", option_ids: "torch.Tensor", lengths: "torch.Tensor") -> "torch.Tensor":
        rows, count, width = option_ids.shape
        cache = copy.deepcopy(base)
        cache.batch_repeat_interleave(rows)
        positions = torch.arange(start, start + embeds.shape[1], device=embeds.device).expand(rows, -1)
        head = runtime.forward(inputs_embeds=embeds, past_key_values=cache, use_cache=True, position_ids=positions,
                               logits_to_keep=1).logits[:, -1].float()
        scores = torch.log_softmax(head, dim=-1).gather(-1, option_ids[..., 0])
        if width > 1:
            cache.batch_repeat_interleave(count)
            flat = option_ids.reshape(rows * count, width)
            steps = positions[:1, -1:] + torch.arange(1, width + 1, device=flat.device)
            logits = runtime.forward(input_ids=flat, past_key_values=cache, use_cache=True,
                                     position_ids=steps.expand(rows * count, -1)).logits[:, :-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(-1, flat[:, 1:, None])[..., 0]
            inside = torch.arange(1, width, device=flat.device) < lengths.reshape(-1, 1)
            scores = scores + (picked * inside).sum(-1).reshape(rows, count)
        runtime.stats.tokens_scored += rows * embeds.shape[1] + (rows * count * width if width > 1 else 0)
        return torch.softmax(scores, dim=-1)

    out = []
    table = runtime.model.get_input_embeddings()
    for own, lay, tokens, words, label in zip(options, layouts, ids, word_of, labels):
        option_ids = runtime.encode(list(own), add_special_tokens=False)
        width = max(len(o) for o in option_ids)
        padded = torch.tensor([[o + [0] * (width - len(o)) for o in option_ids]], device=runtime.device)
        lengths = torch.tensor([[len(o) for o in option_ids]], device=runtime.device)
        tail = words[start:]
        with torch.no_grad():
            embeds = table(torch.tensor([tokens[start:]], device=runtime.device))
            started = time.perf_counter()
            attr = FeatureAblation(forward).attribute(
                embeds, baselines=embeds * torch.as_tensor(tail < 0, device=runtime.device)[None, :, None],
                target=int(label), additional_forward_args=(padded, lengths),
                feature_mask=torch.as_tensor(tail + 1, device=runtime.device)[None, :, None],
                perturbations_per_eval=min(runtime.batch_size, int(tail.max(initial=-1)) + 2),
            )
        runtime.stats.add("occlusion", time.perf_counter() - started)
        out.append(_occlusion_words(tail, attr[0, :, 0].float().cpu().numpy(), len(lay.spans)))
    return out


def _token_words(
    offsets: Sequence[Sequence[tuple[int, int]]], width: int, spans: Sequence[Sequence[tuple[int, int]]]
) -> np.ndarray:
    """``[batch, width]`` index of the feature word each token overlaps (−1 for template, special tokens and the
    left padding up to ``width``), from each row's token character spans (:meth:`Runtime.encode_with_offsets`)."""
    word_of = np.full((len(offsets), width), -1, dtype=np.int64)
    for row, (token_spans, item_spans) in enumerate(zip(offsets, spans)):
        tokens = np.asarray(token_spans, dtype=np.int64).reshape(-1, 2)
        words = word_of[row, width - len(tokens) :]
        for word, (lo, hi) in enumerate(item_spans):
            words[(tokens[:, 0] < hi) & (tokens[:, 1] > lo) & (words < 0)] = word
    return word_of


# --- the suite --------------------------------------------------------------------------------------------

def gradient_plan(pair: "ModelPair") -> str | None:
    """None when integrated gradients can run on both sides, else the reason they are skipped."""
    missing = [f"{side.role}: {side.backward_ok()[1]}" for side in pair.sides if not side.backward_ok()[0]]
    if missing:
        return NOT_APPLICABLE + "integrated gradients need a backward pass on both sides (" + "; ".join(missing) + ")"
    if pair.reference.runtime.device.type == "cpu":
        return (f"{NOT_APPLICABLE}integrated gradients need {IG_STEPS} forward+backward passes per item to converge on this model, "
                "too slow on a CPU; run on a GPU (--qxai-device cuda) for the ig_ metrics")
    return None


def _side_result(
    side: "ModelSide", task: Explained, items: Sequence[Any], labels: np.ndarray, methods: Sequence[Method]
) -> dict[str, dict[str, Any]]:
    """Word attributions and erasure scores of one model on one dataset, for each attribution method."""
    layouts = [layout(side.runtime.tokenizer, task, item_words(task, item)) for item in items]
    result: dict[str, dict[str, Any]] = {}
    for method in methods:
        if isinstance(task, ClozeTask):  # occlusion only (see ECQA_METRICS)
            scores = cloze_occlusion(side.runtime, [task.item_options(it) for it in items], layouts, labels)
        else:
            scores = word_attributions(side.runtime, task.options, layouts, labels, method)
        comp, suff = erasure_scores(side.runtime, task, items, labels, scores)
        result[method] = {"scores": scores, "comprehensiveness": comp, "sufficiency": suff}
    return result


Results = dict[str, dict[str, list[Any]]]
"""Per side: the word scores and per-item erasure scores of one attribution method."""


def scored_metrics(results: Results, metric: dict[str, Metric]) -> tuple[
        dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Both sides' per-item values of one method's metrics (``metric`` maps comprehensiveness, ... to the metric).

    A constant attribution vector scores each metric's worst value on its side and counts in degenerate_rate; so does
    one with a value that is not a number, or an erasure score that is not (a model whose output is no distribution).
    """
    ref, quant = results["reference"], results["quantized"]
    n = len(ref["scores"])
    degenerate = {role: np.array([not np.isfinite(s).all() or np.ptp(s) == 0 for s in r["scores"]], dtype=bool)
                  | np.isnan(np.asarray(r["comprehensiveness"], dtype=np.float64))
                  | np.isnan(np.asarray(r["sufficiency"], dtype=np.float64)) for role, r in results.items()}
    rho, overlap = agreement(ref["scores"], quant["scores"])
    rho[degenerate["reference"] & ~degenerate["quantized"]] = 0.0  # no monotone relation with an all-tied ranking
    measured = {"comprehensiveness": (ref["comprehensiveness"], quant["comprehensiveness"]),
                "sufficiency": (ref["sufficiency"], quant["sufficiency"]),
                "rank_correlation": (np.ones(n), rho), "topk_overlap": (np.ones(n), overlap)}
    reference: dict[str, np.ndarray] = {}
    quantized: dict[str, np.ndarray] = {}
    both = degenerate["reference"] & degenerate["quantized"]  # two all-tied rankings agree, as identical models must
    for name, (ref_values, quant_values) in measured.items():
        key, worst = metric[name].name, worst_value(metric[name])
        own = name in ("comprehensiveness", "sufficiency")  # agreement: the reference side is 1 by definition
        reference[key] = scored(np.asarray(ref_values), degenerate["reference"], worst) if own else np.asarray(
            ref_values, dtype=np.float64)
        quantized[key] = scored(np.asarray(quant_values), degenerate["quantized"], worst)
        if not own:
            quantized[key][both] = 1.0
    for role, values in (("reference", reference), ("quantized", quantized)):
        values[metric["degenerate_rate"].name] = degenerate[role].astype(np.float64)
    return reference, quantized, lost_counts(degenerate, [metric[name] for name in measured])


def _label_part(pair: "ModelPair") -> SuiteResult:
    """The plain metrics: attributions on e-SNLI and the classification files, pooled, with their precondition."""
    tasks = task.label_tasks(pair)
    if not tasks:
        return not_applicable(SUITE, ATTRIBUTION_METRICS, task.no_label_data(pair))
    size = suite_items(SUITE, pair.config)
    skip_ig = gradient_plan(pair)
    methods: list[Method] = ["occlusion"] if skip_ig else ["occlusion", "integrated_gradients"]
    items = [t.items(size, pair.config.seed) for t in tasks]
    data_hash = dataset_fingerprint(items[0]) if len(tasks) == 1 else stable_hash(
        [[t.name, dataset_fingerprint(group)] for t, group in zip(tasks, items)])
    templates = tasks[0].template_id(pair.tokenizer) if len(tasks) == 1 else stable_hash(
        [t.template_id(pair.tokenizer) for t in tasks])
    params = {"data": data_hash, "version": VERSION, "task": templates, "k": K_PERCENTS, "ig_steps": IG_STEPS,
              "methods": methods}
    predictions = {side.role: [task.label_predictions(pair, side, t, len(group)) for t, group in zip(tasks, items)]
                   for side in pair.sides}
    explained = [p.predicted for p in predictions["reference"]]
    labels = np.concatenate(explained)
    results: dict[str, dict[str, dict[str, list[Any]]]] = {}
    looks = ATTRIBUTION_SUITE.look_items(pair.config)
    for side in pair.sides:
        parts = [pair.cached_batches(
            side, "attribution", len(group), looks,
            lambda start, stop, t=t, group=group: {**params, "data": dataset_fingerprint(group[start:stop]),
                                                   "task": t.template_id(pair.tokenizer)},
            lambda start, stop, t=t, group=group, y=y, side=side: _side_result(side, t, group[start:stop],
                                                                               y[start:stop], methods))
            for t, group, y in zip(tasks, items, explained)]
        results[side.role] = {m: {key: [v for part in parts for v in list(part[m][key])]
                                  for key in ("scores", "comprehensiveness", "sufficiency")} for m in methods}
    reference: dict[str, np.ndarray] = {}
    quantized: dict[str, np.ndarray] = {}
    lost: dict[str, dict[str, int]] = {}
    by_name = {m.name: m for m in ATTRIBUTION_METRICS}
    for method in methods:
        prefix = METHOD_PREFIX[method]
        own_ref, own_quant, own_lost = scored_metrics(
            {role: r[method] for role, r in results.items()},
            {name: by_name[prefix + name] for name in ("comprehensiveness", "sufficiency", "rank_correlation",
                                                        "topk_overlap", "degenerate_rate")})
        reference |= own_ref
        quantized |= own_quant
        lost |= own_lost
    notes = {
        "attribution_method": {"reference": methods, "quantized": methods},
        "integrated_gradients": skip_ig or f"ran on both sides ({IG_STEPS} Gauss-Legendre steps)",
        "explained_label": "the reference's predicted label on both sides (task suite prediction)",
        "degenerate": "constant attribution vector; scored comprehensiveness -1, sufficiency 1, rank correlation -1, "
                      "top-k overlap -1",
        "baseline": "zero embedding at the item's tokens (occlusion replacement and integrated-gradients baseline)",
        "erasure": "words deleted from the text; top ceil(k% of n) words, k in " + ", ".join(map(str, K_PERCENTS)),
        "topk_fraction": TOPK_FRACTION,
        "items_where_the_quantized_model_predicts_another_label": int(np.sum(
            labels != np.concatenate([p.predicted for p in predictions["quantized"]]))),
        "label_probability": "softmax over the label options' full-continuation log-probabilities",
        "datasets": [t.name for t in tasks],
        "template_version": f"{VERSION}, {task.NLI_TEMPLATE['version']}",
    }
    result = SuiteResult(
        SUITE, task.item_ids(tasks, items), reference, quantized,
        fingerprint={"data": data_hash, "version": VERSION, "task_template": templates,
                     "topk_overlap": "chance-corrected",
                     "params": stable_hash(params)},
        skipped={m.name: skip_ig for m in IG_METRICS} if skip_ig else {},
        notes=notes, lost=lost,
    )
    dependent = [m for m in TASK_DEPENDENT if m.name not in result.skipped]
    tested, settled = competence_items(pair, SUITE, size)
    groups, found = items, predictions["reference"]  # outside sequential mode: the items' own predictions
    if settled:
        groups = [t.items(tested, pair.config.seed) for t in tasks]
        found = [task.label_predictions(pair, pair.reference, t, len(group)) for t, group in zip(tasks, groups)]
    names = ", ".join("e-SNLI" if t.kind == "nli" else t.name for t in tasks)
    require_competence(result, names, np.concatenate([p.correct for p in found]), task.pooled_chance(tasks, groups),
                       dependent, settled)
    return result


def _ecqa_part(pair: "ModelPair") -> SuiteResult:
    """The ``ecqa_`` metrics: occlusion of the reference's cloze answer on ECQA questions, with their precondition."""
    n = suite_items(SUITE, pair.config, "ecqa")
    items = task.ecqa_items(pair, n)
    if not items:
        return not_applicable(SUITE, list(ECQA_METRICS.values()), task.absent(pair, "ecqa"))
    predictions = {side.role: task.mcq_predictions(pair, side, n) for side in pair.sides}
    labels = predictions["reference"].predicted
    params = {"data": dataset_fingerprint(items), "version": VERSION, "task": MCQ_TASK.template_id(pair.tokenizer),
              "k": K_PERCENTS}
    looks = ATTRIBUTION_SUITE.look_items(pair.config, "ecqa")
    results = {side.role: pair.cached_batches(
        side, "attribution/ecqa", len(items), looks, lambda start, stop: params | {"data": dataset_fingerprint(
            items[start:stop])},
        lambda start, stop, side=side: _side_result(side, MCQ_TASK, items[start:stop], labels[start:stop], ["occlusion"]))
        for side in pair.sides}
    reference, quantized, lost = scored_metrics(
        {role: r["occlusion"] for role, r in results.items()},
        {m.name: ECQA_METRICS[m] for m in OCCLUSION_METRICS})
    result = SuiteResult(
        SUITE, [f"ecqa:{it.id}" for it in items], reference, quantized,
        fingerprint={"ecqa": stable_hash(params)}, lost=lost,
        notes={"ecqa": "occlusion of p(the reference's cloze answer | question) over the item's five options, "
                       "task suite's 3-shot cloze prompt; features = the question's words (the options are the "
                       "explained classes, not input)",
               "ecqa_items_where_the_quantized_model_predicts_another_answer": int(np.sum(
                   labels != predictions["quantized"].predicted))})
    tested, settled = competence_items(pair, SUITE, n, "ecqa")
    answers = task.mcq_predictions(pair, pair.reference, tested) if settled else predictions["reference"]
    require_competence(result, "ECQA", answers.correct, task.ecqa_chance(pair, answers.correct.size),
                       [ECQA_METRICS[m] for m in OCCLUSION_METRICS if m in TASK_DEPENDENT], settled)
    return result


def run_attribution(pair: "ModelPair") -> SuiteResult:
    """Attributions of the reference's predicted labels on both models, their erasure faithfulness and agreement.

    e-SNLI with the classification files (plain metrics) and ECQA (``ecqa_``) each fill their own metrics.
    """
    return combine(SUITE, [_label_part(pair), _ecqa_part(pair)])


ATTRIBUTION_SUITE = register_suite(Suite(
    SUITE,
    "Feature attributions on e-SNLI, your classification files and ECQA: ERASER comprehensiveness/sufficiency and "
    "FP–quantized attribution agreement.",
    (*ATTRIBUTION_METRICS, *ECQA_METRICS.values()), run_attribution,
    sizes={"smoke": 8, "standard": 32, "full": 300}, item_cost=23.0,
    budgets={"ecqa": {"smoke": 8, "standard": 32, "full": 300}},
))
