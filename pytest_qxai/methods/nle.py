"""Natural-language explanations (NLEs) on e-SNLI: quality of each model's post-hoc explanation of its own label.

Generation (post-hoc, versioned template): three fixed e-SNLI **dev** demonstrations with their first human
explanation, then "Premise: … Hypothesis: … Relationship: <the model's own predicted label>
Explanation:"; greedy, at most 40 new tokens, cut at the first newline. The label is the task suite's
prediction (:func:`pytest_qxai.methods.task.nli_predictions`, shared through the cache).

Quality, per item (the studies' BARTScore and TIGERScore are not available offline; these are the stand-ins
of METHODS.md):

* ``gold_similarity``: sentence-embedding cosine (all-MiniLM-L6-v2) with the closest of the item's human
  explanations; 0 for an empty explanation.
* ``rouge_l``: ROUGE-L F1 against the best-matching human explanation (``rouge-score``).
* ``fluency``: log-perplexity, the mean token negative log-likelihood in nats, of the explanation alone under
  the reference model (a fixed scorer, identical for both sides); lower is better; NaN when empty. Log
  scale keeps a few degenerate outputs from dominating the mean. The scorer prefers its own wording, so
  small positive deltas are expected even for a lossless quantization.
* ``judge_coherence``, ``judge_trust``: a judge model sees the item, the explained label and the explanation
  and rates it 1–5; the score is the expected rating under the softmax over the log-likelihoods of the five
  rating tokens (smoother than the argmax). The judge is ``--qxai-judge`` or, by default, the reference
  model: fixed and identical for both sides, and recorded in the fingerprint. On SmolLM2-135M as its own
  judge the ratings carry a weak signal: it rates an item's gold explanation above another item's gold
  explanation in 83 % (coherence) and 78 % (trust) of 120 items.
* ``fp_agreement``: embedding cosine of the quantized model's explanation with the reference's for the same
  item (1 when identical); the reference side is 1 by definition, as for label agreement.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..datasets import NLI_LABELS, NLIItem, dataset_fingerprint
from ..metrics import Metric, SuiteResult, register_metric
from ..profiles import suite_size
from ..storage import stable_hash
from .task import esnli_items, nli_predictions, option_scores, template_id
from .text import ENCODER_NAME, embed, pairwise_cosine, perplexity, rouge_l

if TYPE_CHECKING:
    from ..models.pair import ModelPair, ModelSide
    from ..runtime import Runtime

SUITE = "nle"
EXAMPLES_IN_NOTES = 3

NLE_TEMPLATE: dict[str, Any] = {
    "version": "nle-v1",
    "block": "Premise: {premise}\nHypothesis: {hypothesis}\nRelationship: {label}\nExplanation:",
    "max_new_tokens": 40,
    # e-SNLI dev pairs 1, 0 and 2 (one per label) with their first human explanation.
    "demos": (
        ("Two women are embracing while holding to go packages.", "Two woman are holding packages.", "entailment",
         "Saying the two women are holding packages is a way to paraphrase that the packages they are holding are "
         "to go packages."),
        ("Two women are embracing while holding to go packages.",
         "The sisters are hugging goodbye while holding to go packages after just eating lunch.", "neutral",
         "The to go packages may not be from lunch."),
        ("Two women are embracing while holding to go packages.", "The men are fighting outside a deli.",
         "contradiction", "In the first sentence there is an action of affection between women while on the "
         "second sentence there is a fight between men."),
    ),
}

JUDGE_TEMPLATE: dict[str, Any] = {
    "version": "judge-v1",
    "item": "Premise: {premise}\nHypothesis: {hypothesis}\nRelationship: {label}\nExplanation: {explanation}\n",
    "coherence": "Is the explanation coherent and logical? Rate it from 1 (incoherent) to 5 (fully coherent).\n"
                 "Rating:",
    "trust": "Would you trust this explanation? Rate it from 1 (not at all) to 5 (completely).\nRating:",
    "ratings": (" 1", " 2", " 3", " 4", " 5"),
}

GOLD_SIMILARITY = register_metric(Metric(
    SUITE, "gold_similarity", "Embedding cosine of the explanation with the closest human explanation",
    "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.03",
))
ROUGE_L = register_metric(Metric(
    SUITE, "rouge_l", "ROUGE-L F1 of the explanation against the best-matching human explanation",
    "continuous", direction="higher", bounds=(0.0, 1.0), tolerance="abs:0.03",
))
FLUENCY = register_metric(Metric(
    SUITE, "fluency", "Log-perplexity of the explanation under the reference model",
    "continuous", direction="lower", bounds=(0.0, None), unit="nats/token", tolerance="abs:0.25",
))
JUDGE_COHERENCE = register_metric(Metric(
    SUITE, "judge_coherence", "Judge model's expected 1-5 coherence rating of the explanation",
    "continuous", direction="higher", bounds=(1.0, 5.0), unit="rating", tolerance="abs:0.10",
))
JUDGE_TRUST = register_metric(Metric(
    SUITE, "judge_trust", "Judge model's expected 1-5 trustworthiness rating of the explanation",
    "continuous", direction="higher", bounds=(1.0, 5.0), unit="rating", tolerance="abs:0.10",
))
FP_AGREEMENT = register_metric(Metric(
    SUITE, "fp_agreement",
    "Embedding cosine of the quantized model's explanation with the reference's (reference = 1)",
    "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.15",
))
NLE_METRICS: list[Metric] = [GOLD_SIMILARITY, ROUGE_L, FLUENCY, JUDGE_COHERENCE, JUDGE_TRUST, FP_AGREEMENT]


# --- generation -------------------------------------------------------------------------------------------

def explanation_prompt(premise: str, hypothesis: str, label: str) -> str:
    """The post-hoc explanation prompt: the demonstrations, then the item with the label to explain."""
    block = NLE_TEMPLATE["block"]
    demos = "".join(
        block.format(premise=p, hypothesis=h, label=lab) + f" {explanation}\n\n"
        for p, h, lab, explanation in NLE_TEMPLATE["demos"]
    )
    return demos + block.format(premise=premise, hypothesis=hypothesis, label=label)


def explain(runtime: "Runtime", pairs: Sequence[tuple[str, str]], labels: Sequence[int]) -> list[str]:
    """Greedy explanations of ``labels`` (indices into :data:`NLI_LABELS`) for (premise, hypothesis) pairs."""
    prompts = [explanation_prompt(p, h, NLI_LABELS[int(label)]) for (p, h), label in zip(pairs, labels)]
    return runtime.generate(prompts, NLE_TEMPLATE["max_new_tokens"], stop="\n") if prompts else []


def nle_size(pair: "ModelPair") -> int:
    """Items of the NLE suite under this run's profile."""
    return suite_size(SUITE, pair.config.profile, pair.config.samples)


def explanation_params(pair: "ModelPair", items: Sequence[NLIItem]) -> dict[str, str]:
    """What a side's explanations depend on besides the model: data, task template and NLE template."""
    return {"data": dataset_fingerprint(items), "task": template_id(pair.tokenizer), "nle": stable_hash(NLE_TEMPLATE)}


def side_explanations(pair: "ModelPair", side: "ModelSide", n: int) -> list[str]:
    """A side's explanations of its own labels on the first ``n`` items, generated once on the NLE item set."""
    items = esnli_items(pair, max(n, nle_size(pair)))
    labels = nli_predictions(pair, side, len(items)).predicted

    def compute() -> list[str]:
        return explain(side.runtime, [(item.premise, item.hypothesis) for item in items], labels)

    return pair.cached(side, "nle/explanations", explanation_params(pair, items), compute)[:n]


# --- quality ----------------------------------------------------------------------------------------------

def expected_rating(logprobs: np.ndarray) -> np.ndarray:
    """Expected rating ``Σ r · softmax(logprobs)_r`` over ratings 1..k, per row of ``[n, k]`` log-likelihoods."""
    from scipy.special import softmax

    logprobs = np.atleast_2d(np.asarray(logprobs, dtype=np.float64))
    return softmax(logprobs, axis=1) @ np.arange(1, logprobs.shape[1] + 1, dtype=np.float64)


def judge_prompts(items: Sequence[NLIItem], labels: Sequence[int], explanations: Sequence[str],
                  question: str) -> list[str]:
    """The judge's rating prompts for one question (``coherence`` or ``trust``)."""
    return [
        JUDGE_TEMPLATE["item"].format(premise=item.premise, hypothesis=item.hypothesis,
                                      label=NLI_LABELS[int(label)], explanation=explanation)
        + JUDGE_TEMPLATE[question]
        for item, label, explanation in zip(items, labels, explanations)
    ]


def judge_ratings(judge: "Runtime", items: Sequence[NLIItem], labels: Sequence[int],
                  explanations: Sequence[str], question: str) -> np.ndarray:
    """The judge's expected rating of each explanation for ``question``."""
    prompts = judge_prompts(items, labels, explanations, question)
    return expected_rating(option_scores(judge, prompts, JUDGE_TEMPLATE["ratings"]))


def gold_similarity(explanations: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Cosine of each explanation with its closest reference explanation (0 for an empty explanation)."""
    flat = [ref for refs in references for ref in refs]
    vectors = embed(list(explanations) + flat)
    own, refs = vectors[: len(explanations)], vectors[len(explanations) :]
    out, start = np.zeros(len(explanations)), 0
    for i, (text, group) in enumerate(zip(explanations, references)):
        if text.strip():
            out[i] = float(np.max(refs[start : start + len(group)] @ own[i]))
        start += len(group)
    return out


def log_perplexity(scorer: "Runtime", texts: Sequence[str]) -> np.ndarray:
    """Mean token negative log-likelihood (nats) of each text under ``scorer``; NaN for an empty text."""
    return np.log(perplexity(scorer, texts))


def explanation_agreement(reference: Sequence[str], quantized: Sequence[str]) -> np.ndarray:
    """Embedding cosine of paired explanations, exactly 1 where the texts are identical."""
    cosine = np.clip(pairwise_cosine(list(reference), list(quantized)), -1.0, 1.0)
    return np.where([a.strip() == b.strip() for a, b in zip(reference, quantized)], 1.0, cosine)


def quality(items: Sequence[NLIItem], labels: Sequence[int], explanations: Sequence[str],
            scorer: "Runtime", judge: "Runtime") -> dict[str, np.ndarray]:
    """Every per-item quality metric of one side's explanations."""
    return {
        GOLD_SIMILARITY.name: gold_similarity(explanations, [item.explanations for item in items]),
        ROUGE_L.name: np.array([rouge_l(e, item.explanations) for e, item in zip(explanations, items)]),
        FLUENCY.name: log_perplexity(scorer, explanations),
        JUDGE_COHERENCE.name: judge_ratings(judge, items, labels, explanations, "coherence"),
        JUDGE_TRUST.name: judge_ratings(judge, items, labels, explanations, "trust"),
    }


# --- the judge --------------------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def _load_judge(spec: str, device: str, dtype: str, cache_dir: str | None, trust_remote_code: bool,
                batch_size: int | None) -> tuple["Runtime", str]:
    """Load ``--qxai-judge`` once per process: its runtime and content identity."""
    from pathlib import Path

    import torch

    from ..models.loading import load_reference, load_tokenizer, materialize, scratch_dir
    from ..models.source import resolve_source
    from ..runtime import Runtime

    source = resolve_source(spec)
    location, content_id = materialize(source, Path(cache_dir) if cache_dir else None, scratch_dir("qxai-judge-"))
    tokenizer = load_tokenizer(location, revision=source.revision, trust_remote_code=trust_remote_code)
    model = load_reference(location, device=device, dtype=getattr(torch, dtype), revision=source.revision,
                           trust_remote_code=trust_remote_code)
    return Runtime(model, tokenizer, batch_size=batch_size, label="judge"), f"{source.label} ({content_id})"


def judge(pair: "ModelPair") -> tuple["Runtime", str]:
    """The judge's runtime and a description that identifies it (the reference model unless ``--qxai-judge``)."""
    cfg = pair.config
    if cfg.judge is None:
        return pair.reference.runtime, f"reference model {pair.metadata.get('model', '')} ({pair.reference.identity})"
    return _load_judge(cfg.judge, str(pair.reference.runtime.device), str(pair.reference.model.dtype).split(".")[-1],
                       str(cfg.cache_dir) if cfg.cache_dir else None, cfg.trust_remote_code, cfg.batch_size)


def _side_quality(pair: "ModelPair", side: "ModelSide", items: Sequence[NLIItem], params: dict[str, str],
                  judge_runtime: "Runtime") -> tuple[list[str], dict[str, np.ndarray]]:
    """A side's explanations and their quality metrics (cached: the scorer and judge are part of ``params``)."""
    labels = nli_predictions(pair, side, len(items)).predicted
    texts = side_explanations(pair, side, len(items))

    def compute() -> dict[str, np.ndarray]:
        return quality(items, labels, texts, scorer=pair.reference.runtime, judge=judge_runtime)

    return texts, pair.cached(side, "nle/quality", params, compute)


# --- the suite --------------------------------------------------------------------------------------------

def run_nle(pair: "ModelPair") -> SuiteResult:
    """Quality metrics of both models' explanations of their own e-SNLI labels, and their agreement."""
    n = nle_size(pair)
    items = esnli_items(pair, n)
    judge_runtime, judge_id = judge(pair)
    params = {**explanation_params(pair, items), "judge": judge_id, "judge_template": stable_hash(JUDGE_TEMPLATE),
              "scorer": pair.reference.identity, "encoder": ENCODER_NAME}
    explanations, values = {}, {}
    for side in pair.sides:
        explanations[side.role], values[side.role] = _side_quality(pair, side, items, params, judge_runtime)
    reference, quantized = explanations["reference"], explanations["quantized"]
    values["reference"][FP_AGREEMENT.name] = np.ones(n)
    values["quantized"][FP_AGREEMENT.name] = explanation_agreement(reference, quantized)
    return SuiteResult(
        suite=SUITE,
        item_ids=[item.id for item in items],
        reference=values["reference"],
        quantized=values["quantized"],
        fingerprint={"data": params["data"], "templates": stable_hash([params["task"], params["nle"],
                                                                       params["judge_template"]]),
                     "judge": stable_hash(judge_id), "encoder": ENCODER_NAME},
        notes={
            "templates": f"{NLE_TEMPLATE['version']}, {JUDGE_TEMPLATE['version']}",
            "generation": f"post-hoc, 3-shot (e-SNLI dev), greedy, <= {NLE_TEMPLATE['max_new_tokens']} new tokens, "
                          "stop at newline; explains the model's own predicted label",
            "judge": judge_id,
            "judge_score": "expected rating under the softmax over the log-likelihoods of ' 1'..' 5'",
            "fluency": "log-perplexity (mean token NLL, nats) under the reference model",
            "encoder": ENCODER_NAME,
            "identical_explanations": int(sum(a.strip() == b.strip() for a, b in zip(reference, quantized))),
            "empty_explanations": {role: int(sum(not t.strip() for t in texts))
                                   for role, texts in explanations.items()},
            "examples": [
                {"item": item.id, "hypothesis": item.hypothesis, "reference": ref, "quantized": quant}
                for item, ref, quant in list(zip(items, reference, quantized))[:EXAMPLES_IN_NOTES]
            ],
        },
    )
