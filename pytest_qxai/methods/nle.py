"""Natural-language explanations (NLEs): quality of each model's post-hoc explanation of its own label.

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
  item beyond the cosine of unrelated explanations (1 when identical, about 0 for a shuffled explanation);
  the reference side is 1 by definition, as for label agreement.
* ``degenerate_rate``: the explanation is empty (nothing but whitespace before the first newline).

An empty explanation is an outcome, not a missing value: it scores the worst value of every quality metric
(gold similarity −1, ROUGE-L 0, judge ratings 1, fluency the log-perplexity of a uniform guess over the
scorer's vocabulary) and counts in ``degenerate_rate``.

ECQA (``ecqa_`` metrics): the same post-hoc generation for the model's own answer to an ECQA question (the task
suite's cloze prediction), after the three ECQA **validation** questions that the task prompt also uses as
demonstrations, each with its answer and its human positive explanations (never a gated test item). Gold
references are the item's positive explanations (joined) and its free-flow explanation. Metrics:
``ecqa_gold_similarity``, ``ecqa_rouge_l``, ``ecqa_fluency``, ``ecqa_fp_agreement`` and
``ecqa_degenerate_rate``, defined and scored as their e-SNLI counterparts (no judge). SmolLM2 is above chance
on ECQA (0.45 vs 0.20), so the suite exercises explanation quality on a task the model can do.

Your classification files (``label_`` metrics, item ids ``NAME:id``): a zero-shot post-hoc prompt ("Explain in one
sentence why the label fits the text." then "Text: … Label: <the model's own label> Explanation:"; no
demonstration fits every task), the same generation bounds, and the same metrics, scored alike; the judge sees
the text, the label and the explanation. ``label_gold_similarity`` and ``label_rouge_l`` are NaN on items
without gold explanations (not units of the metric) and not applicable when no item has any.

Precondition: ``gold_similarity`` and ``rouge_l`` compare the explanation of the model's own label with
the human explanations of the gold label; when the reference is not significantly above chance on these
items, most explained labels are wrong and the two metrics are ``not applicable`` (e-SNLI, ECQA and the
classification files each tested on their own items; several files together, against their mean chance level).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..datasets import NLI_LABELS, ClassItem, MCQItem, NLIItem, dataset_fingerprint
from ..metrics import Metric, SuiteResult, combine, derived_metric, not_applicable, register_metric
from ..models.judge import judge
from ..profiles import suite_items
from ..storage import stable_hash
from ..suite import Suite, register_suite, registered_suites
from .outcomes import (competence_items, degenerate_metric, lost_counts, require_competence, scored,
                       uniform_log_perplexity, worst_value)
from .task import (MCQ_TEMPLATE, LabelTask, absent, classification_tasks, ecqa_chance, ecqa_items, esnli_items,
                   label_predictions, mcq_predictions, nli_predictions, option_scores, pooled_chance, prefixed_ids,
                   template_id)
from .text import ENCODER_NAME, embed, perplexity, rouge_l

if TYPE_CHECKING:
    from ..models.pair import ModelPair, ModelSide
    from ..protocols import Runtime

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

ECQA_NLE_TEMPLATE: dict[str, Any] = {
    "version": "nle-ecqa-v1",
    "block": "Question: {question}\nAnswer: {answer}\nExplanation:",
    # The task prompt's three ECQA validation demonstrations with their human positive explanations.
    "demos": tuple(zip((q for q, _ in MCQ_TEMPLATE["demos"]), (a for _, a in MCQ_TEMPLATE["demos"]), (
        "Anxiety is the feeling of fear when doing something with an uncertain outcome. Applying for a job has an "
        "uncertain outcome.",
        "Racers compete on the race track. Competing involves going at high speed. Cars travel on a race track.",
        "A person should not lie after taking oath. Each witness had to take oath to not to tell lie.",
    ))),
}

CLASS_NLE_TEMPLATE: dict[str, Any] = {
    "version": "nle-class-v1",
    "instruction": "Explain in one sentence why the label fits the text.\n\n",
    "block": "Text: {text}\nLabel: {label}\nExplanation:",
    "judge_item": "Text: {text}\nLabel: {label}\nExplanation: {explanation}\n",
}
"""Explanation and judge prompts for a classification dataset (zero-shot: no demonstration fits every task)."""

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
    "Embedding cosine of the quantized model's explanation with the reference's, beyond chance (reference = 1)",
    "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.2",
))
DEGENERATE = degenerate_metric(SUITE, "empty explanation")
ECQA_METRICS: dict[Metric, Metric] = {
    metric: derived_metric(metric, "ecqa_", "ECQA") for metric in (GOLD_SIMILARITY, ROUGE_L, FLUENCY, FP_AGREEMENT,
                                                                    DEGENERATE)}
"""Each e-SNLI metric → its ECQA counterpart."""
QUALITY_METRICS: list[Metric] = [GOLD_SIMILARITY, ROUGE_L, FLUENCY, JUDGE_COHERENCE, JUDGE_TRUST]
TASK_DEPENDENT: list[Metric] = [GOLD_SIMILARITY, ROUGE_L]
LABEL_METRICS: dict[Metric, Metric] = {
    metric: derived_metric(metric, "label_", "your classification data")
    for metric in (*QUALITY_METRICS, FP_AGREEMENT, DEGENERATE)}
"""Each e-SNLI metric → its counterpart on the run's classification files."""
ESNLI_METRICS: list[Metric] = [*QUALITY_METRICS, FP_AGREEMENT, DEGENERATE]
NLE_METRICS: list[Metric] = [*ESNLI_METRICS, *ECQA_METRICS.values(), *LABEL_METRICS.values()]


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
    return suite_items(SUITE, pair.config)


def explanation_params(pair: "ModelPair", items: Sequence[NLIItem]) -> dict[str, str]:
    """What a side's explanations depend on besides the model: data, task template and NLE template."""
    return {"data": dataset_fingerprint(items), "task": template_id(pair.tokenizer), "nle": stable_hash(NLE_TEMPLATE)}


EXPLAINING_SUITES = (SUITE, "nle_faithfulness")
"""The suites that ask for a side's explanations (of lengths their own item counts give)."""


def explanation_cuts(pair: "ModelPair") -> tuple[int, ...] | None:
    """Where a side's explanation list is cut into cached batches under ``--qxai-budget``: at every look of the
    suites that ask for explanations, so that each length they ask for is a cut and a look generates only its new
    items; None outside sequential mode (one batch)."""
    looks = [s.look_items(pair.config) for s in registered_suites() if s.name in EXPLAINING_SUITES]
    if not looks or any(found is None for found in looks):
        return None
    return tuple(sorted({n for found in looks if found is not None for n in found}))


def side_explanations(pair: "ModelPair", side: "ModelSide", n: int) -> list[str]:
    """A side's explanations of its own labels on the first ``n`` items, generated once on the NLE item set."""
    items = esnli_items(pair, max(n, nle_size(pair)))
    labels = nli_predictions(pair, side, len(items)).predicted
    pairs = [(item.premise, item.hypothesis) for item in items]
    texts: list[str] = pair.cached_batches(
        side, "nle/explanations", len(items), explanation_cuts(pair),
        lambda start, stop: explanation_params(pair, items[start:stop]),
        lambda start, stop: explain(side.runtime, pairs[start:stop], labels[start:stop]))
    return texts[:n]


def class_explanation_prompt(text: str, label: str) -> str:
    """The zero-shot post-hoc explanation prompt for a classification item and the label to explain."""
    return CLASS_NLE_TEMPLATE["instruction"] + CLASS_NLE_TEMPLATE["block"].format(text=text, label=label)


def explain_labels(runtime: "Runtime", task: LabelTask, items: Sequence[ClassItem], labels: Sequence[int]) -> list[str]:
    """Greedy explanations of ``labels`` (indices into the task's labels) for classification items."""
    prompts = [class_explanation_prompt(item.text, task.labels[int(label)]) for item, label in zip(items, labels)]
    return runtime.generate(prompts, NLE_TEMPLATE["max_new_tokens"], stop="\n") if prompts else []


def label_explanation_params(pair: "ModelPair", task: LabelTask, items: Sequence[ClassItem]) -> dict[str, str]:
    """What a side's explanations on a classification file depend on besides the model."""
    return {"data": dataset_fingerprint(items), "task": task.template_id(pair.tokenizer),
            "nle": stable_hash([NLE_TEMPLATE["max_new_tokens"], CLASS_NLE_TEMPLATE])}


def label_explanations(pair: "ModelPair", side: "ModelSide", task: LabelTask, n: int) -> list[str]:
    """A side's explanations of its own labels on a classification file's first ``n`` items (cached, nested)."""
    items = task.items(max(n, nle_size(pair)), pair.config.seed)
    labels = label_predictions(pair, side, task, len(items)).predicted
    texts: list[str] = pair.cached_batches(
        side, "nle/label_explanations", len(items), explanation_cuts(pair),
        lambda start, stop: label_explanation_params(pair, task, items[start:stop]),
        lambda start, stop: explain_labels(side.runtime, task, items[start:stop], labels[start:stop]))
    return texts[:n]


# --- quality ----------------------------------------------------------------------------------------------

def expected_rating(logprobs: np.ndarray) -> np.ndarray:
    """Expected rating ``Σ r · softmax(logprobs)_r`` over ratings 1..k, per row of ``[n, k]`` log-likelihoods."""
    from scipy.special import softmax

    logprobs = np.atleast_2d(np.asarray(logprobs, dtype=np.float64))
    return softmax(logprobs, axis=1) @ np.arange(1, logprobs.shape[1] + 1, dtype=np.float64)


def judge_prompts(items: Sequence[NLIItem | ClassItem], labels: Sequence[int], explanations: Sequence[str],
                  question: str, label_names: Sequence[str] = NLI_LABELS) -> list[str]:
    """The judge's rating prompts for one question (``coherence`` or ``trust``), for e-SNLI or classification items."""
    return [
        (CLASS_NLE_TEMPLATE["judge_item"].format(text=item.text, label=label_names[int(label)], explanation=explanation)
         if isinstance(item, ClassItem) else
         JUDGE_TEMPLATE["item"].format(premise=item.premise, hypothesis=item.hypothesis,
                                       label=label_names[int(label)], explanation=explanation))
        + JUDGE_TEMPLATE[question]
        for item, label, explanation in zip(items, labels, explanations)
    ]


def judge_ratings(judge: "Runtime", items: Sequence[NLIItem | ClassItem], labels: Sequence[int],
                  explanations: Sequence[str], question: str, label_names: Sequence[str] = NLI_LABELS) -> np.ndarray:
    """The judge's expected rating of each explanation for ``question``."""
    prompts = judge_prompts(items, labels, explanations, question, label_names)
    return expected_rating(option_scores(judge, prompts, JUDGE_TEMPLATE["ratings"]))


def gold_similarity(explanations: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Cosine of each explanation with its closest reference explanation (0 when empty; NaN without references)."""
    flat = [ref for refs in references for ref in refs]
    vectors = embed(list(explanations) + flat)
    own, refs = vectors[: len(explanations)], vectors[len(explanations) :]
    out, start = np.zeros(len(explanations)), 0
    for i, (text, group) in enumerate(zip(explanations, references)):
        if not group:
            out[i] = np.nan
        elif text.strip():
            out[i] = float(np.max(refs[start : start + len(group)] @ own[i]))
        start += len(group)
    return out


def is_empty(texts: Sequence[str]) -> np.ndarray:
    """True for every text that is empty or only whitespace."""
    return np.array([not text.strip() for text in texts], dtype=bool)


def log_perplexity(scorer: "Runtime", texts: Sequence[str]) -> np.ndarray:
    """Mean token negative log-likelihood (nats) of each text under ``scorer``; NaN for an empty text."""
    return np.log(perplexity(scorer, texts))


def explanation_agreement(reference: Sequence[str], quantized: Sequence[str]) -> np.ndarray:
    """Embedding cosine of paired explanations beyond chance, exactly 1 where the texts are identical.

    ``(cos_ii - c) / (1 - c)`` with c the mean cosine of a quantized explanation with the reference's
    explanations of the other items: two unrelated explanations of this task are far from orthogonal, so a
    shuffled explanation scores about 0 rather than its raw cosine. Clipped to the bounds [-1, 1]; an empty quantized
    explanation of a non-empty one scores -1, the worst value (an empty text's embedding is not an explanation).
    """
    n = len(reference)
    vectors = embed(list(reference) + list(quantized))
    cosines = np.clip(vectors[:n] @ vectors[n:].T, -1.0, 1.0).astype(np.float64)
    paired = np.diag(cosines)
    chance = (cosines.sum() - paired.sum()) / (n * (n - 1)) if n > 1 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        corrected = np.clip((paired - chance) / (1 - chance), -1.0, 1.0)
    corrected[is_empty(quantized) & ~is_empty(reference)] = -1.0
    return np.where([a.strip() == b.strip() for a, b in zip(reference, quantized)], 1.0, corrected)


def quality(items: Sequence[NLIItem | ClassItem], labels: Sequence[int], explanations: Sequence[str],
            scorer: "Runtime", judge: "Runtime", label_names: Sequence[str] = NLI_LABELS) -> dict[str, np.ndarray]:
    """Every per-item quality metric of one side's explanations (the gold metrics NaN on items without gold)."""
    return {
        GOLD_SIMILARITY.name: gold_similarity(explanations, [item.explanations for item in items]),
        ROUGE_L.name: np.array([rouge_l(e, item.explanations) if item.explanations else np.nan
                                for e, item in zip(explanations, items)]),
        FLUENCY.name: log_perplexity(scorer, explanations),
        JUDGE_COHERENCE.name: judge_ratings(judge, items, labels, explanations, "coherence", label_names),
        JUDGE_TRUST.name: judge_ratings(judge, items, labels, explanations, "trust", label_names),
    }


def _side_quality(pair: "ModelPair", side: "ModelSide", items: Sequence[NLIItem], params: dict[str, str],
                  judge_runtime: "Runtime") -> tuple[list[str], dict[str, np.ndarray]]:
    """A side's explanations and their quality metrics (cached: the scorer and judge are part of ``params``)."""
    labels = nli_predictions(pair, side, len(items)).predicted
    texts = side_explanations(pair, side, len(items))
    return texts, pair.cached_batches(
        side, "nle/quality", len(items), NLE_SUITE.look_items(pair.config),
        lambda start, stop: params | explanation_params(pair, items[start:stop]),
        lambda start, stop: quality(items[start:stop], labels[start:stop], texts[start:stop],
                                    scorer=pair.reference.runtime, judge=judge_runtime))


def ecqa_explanation_prompt(question: str, answer: str) -> str:
    """The post-hoc ECQA explanation prompt: the validation demonstrations, then the question and the answer."""
    block = ECQA_NLE_TEMPLATE["block"]
    demos = "".join(block.format(question=q, answer=a) + f" {explanation}\n\n"
                    for q, a, explanation in ECQA_NLE_TEMPLATE["demos"])
    return demos + block.format(question=question, answer=answer)


def explain_ecqa(runtime: "Runtime", questions: Sequence[str], answers: Sequence[str]) -> list[str]:
    """Greedy post-hoc explanations of ``answers`` to ECQA ``questions``."""
    prompts = [ecqa_explanation_prompt(q, a) for q, a in zip(questions, answers)]
    return runtime.generate(prompts, NLE_TEMPLATE["max_new_tokens"], stop="\n") if prompts else []


def ecqa_references(item: MCQItem) -> list[str]:
    """The human explanations of an ECQA item: its positive statements joined, and its free-flow explanation."""
    return [text for text in (" ".join(item.positives), item.explanation) if text.strip()]


def _ecqa_side(pair: "ModelPair", side: "ModelSide", items: Sequence[MCQItem]) -> tuple[list[str], dict[str, Any]]:
    """A side's ECQA explanations of its own answers and their gold similarity, ROUGE-L and fluency (cached)."""
    answers = mcq_predictions(pair, side, len(items)).predicted
    params = {"data": dataset_fingerprint(items), "task": template_id(pair.tokenizer),
              "nle": stable_hash(ECQA_NLE_TEMPLATE), "scorer": pair.reference.identity, "encoder": ENCODER_NAME}

    def compute(start: int, stop: int) -> dict[str, Any]:
        batch = items[start:stop]
        texts = explain_ecqa(side.runtime, [it.question for it in batch],
                             [it.options[int(a)] for it, a in zip(batch, answers[start:stop])])
        references = [ecqa_references(it) for it in batch]
        return {"texts": texts, "metrics": {
            GOLD_SIMILARITY.name: gold_similarity(texts, references),
            ROUGE_L.name: np.array([rouge_l(t, refs) for t, refs in zip(texts, references)]),
            FLUENCY.name: log_perplexity(pair.reference.runtime, texts),
        }}

    found = pair.cached_batches(side, "nle/ecqa", len(items), NLE_SUITE.look_items(pair.config),
                                lambda start, stop: params | {"data": dataset_fingerprint(items[start:stop])}, compute)
    return found["texts"], found["metrics"]


def _ecqa_part(pair: "ModelPair", n: int, fluency_worst: float) -> SuiteResult:
    """The ``ecqa_`` metrics on the run's ECQA items (empty explanations at their worst), with their precondition."""
    items = ecqa_items(pair, n)
    if not items:
        return not_applicable(SUITE, list(ECQA_METRICS.values()), absent(pair, "ecqa"))
    texts, values, empty = {}, {}, {}
    for side in pair.sides:
        texts[side.role], raw = _ecqa_side(pair, side, items)
        empty[side.role] = is_empty(texts[side.role])
        values[side.role] = {ECQA_METRICS[m].name: scored(raw[m.name], empty[side.role],
                                                          fluency_worst if m is FLUENCY else worst_value(m))
                             for m in (GOLD_SIMILARITY, ROUGE_L, FLUENCY)}
        values[side.role][ECQA_METRICS[DEGENERATE].name] = empty[side.role].astype(np.float64)
    values["reference"][ECQA_METRICS[FP_AGREEMENT].name] = np.ones(len(items))
    values["quantized"][ECQA_METRICS[FP_AGREEMENT].name] = explanation_agreement(texts["reference"],
                                                                                 texts["quantized"])
    result = SuiteResult(
        SUITE, [f"ecqa:{it.id}" for it in items], values["reference"], values["quantized"],
        fingerprint={"encoder": ENCODER_NAME, "scoring": "degenerate-worst-v1",
                     "ecqa": stable_hash([dataset_fingerprint(items), ECQA_NLE_TEMPLATE])},
        notes={"ecqa": f"{ECQA_NLE_TEMPLATE['version']}: 3-shot (ECQA validation, positive explanations), explains "
                       "the model's own cloze answer; gold = the item's positives (joined) and free-flow explanation",
               "ecqa_examples": [{"item": it.id, "question": it.question, "reference": text}
                                 for it, text in list(zip(items, texts["reference"]))[:EXAMPLES_IN_NOTES]]},
        lost=lost_counts(empty, [ECQA_METRICS[m] for m in (GOLD_SIMILARITY, ROUGE_L, FLUENCY)]))
    tested, settled = competence_items(pair, SUITE, n)
    require_competence(result, "ECQA", mcq_predictions(pair, pair.reference, tested).correct, ecqa_chance(pair, tested),
                       [ECQA_METRICS[m] for m in TASK_DEPENDENT], settled)
    return result


def scored_quality(values: dict[str, np.ndarray], empty: np.ndarray, gold: np.ndarray,
                   fluency_worst: float) -> dict[str, np.ndarray]:
    """Quality values with every empty explanation at the metric's worst; items without ``gold`` stay NaN on gold."""
    return {m.name: scored(values[m.name], empty & gold if m in TASK_DEPENDENT else empty,
                           fluency_worst if m is FLUENCY else worst_value(m)) for m in QUALITY_METRICS}


def _esnli_part(pair: "ModelPair", n: int, fluency_worst: float) -> SuiteResult:
    """The e-SNLI metrics: quality of both models' explanations of their own labels, and their agreement."""
    items = esnli_items(pair, n)
    if not items:
        return not_applicable(SUITE, ESNLI_METRICS, absent(pair, "esnli"))
    judge_runtime, judge_id = judge(pair)
    params = {**explanation_params(pair, items), "judge": judge_id, "judge_template": stable_hash(JUDGE_TEMPLATE),
              "scorer": pair.reference.identity, "encoder": ENCODER_NAME}
    explanations, values = {}, {}
    for side in pair.sides:
        explanations[side.role], values[side.role] = _side_quality(pair, side, items, params, judge_runtime)
    reference, quantized = explanations["reference"], explanations["quantized"]
    empty = {role: is_empty(texts) for role, texts in explanations.items()}
    for role, per_side in values.items():
        values[role] = scored_quality(per_side, empty[role], np.ones(len(items), dtype=bool), fluency_worst)
        values[role][DEGENERATE.name] = empty[role].astype(np.float64)
    values["reference"][FP_AGREEMENT.name] = np.ones(len(items))
    values["quantized"][FP_AGREEMENT.name] = explanation_agreement(reference, quantized)
    result = SuiteResult(
        suite=SUITE,
        item_ids=[item.id for item in items],
        reference=values["reference"],
        quantized=values["quantized"],
        fingerprint={"data": params["data"], "templates": stable_hash([params["task"], params["nle"],
                                                                       params["judge_template"]]),
                     "judge": stable_hash(judge_id), "encoder": ENCODER_NAME, "fp_agreement": "chance-corrected",
                     "scoring": "degenerate-worst-v1"},
        notes={
            "templates": f"{NLE_TEMPLATE['version']}, {JUDGE_TEMPLATE['version']}",
            "generation": f"post-hoc, 3-shot (e-SNLI dev), greedy, <= {NLE_TEMPLATE['max_new_tokens']} new tokens, "
                          "stop at newline; explains the model's own predicted label",
            "judge": judge_id,
            "judge_score": "expected rating under the softmax over the log-likelihoods of ' 1'..' 5'",
            "fluency": "log-perplexity (mean token NLL, nats) under the reference model",
            "encoder": ENCODER_NAME,
            "identical_explanations": int(sum(a.strip() == b.strip() for a, b in zip(reference, quantized))),
            "examples": [
                {"item": item.id, "hypothesis": item.hypothesis, "reference": ref, "quantized": quant}
                for item, ref, quant in list(zip(items, reference, quantized))[:EXAMPLES_IN_NOTES]
            ],
        },
        lost=lost_counts(empty, QUALITY_METRICS),
    )
    tested, settled = competence_items(pair, SUITE, n)
    require_competence(result, "e-SNLI", nli_predictions(pair, pair.reference, tested).correct,
                       1 / len(NLI_LABELS), TASK_DEPENDENT, settled)
    return result


def _label_part(pair: "ModelPair", n: int, fluency_worst: float) -> SuiteResult:
    """The ``label_`` metrics on the run's classification files (zero-shot explanations; gold metrics need gold)."""
    tasks = classification_tasks(pair)
    metrics = list(LABEL_METRICS.values())
    if not tasks:
        return not_applicable(SUITE, metrics, absent(pair, "classification"))
    items = [t.items(n, pair.config.seed) for t in tasks]
    judge_runtime, judge_id = judge(pair)
    shared = {"judge": judge_id, "judge_template": stable_hash([JUDGE_TEMPLATE, CLASS_NLE_TEMPLATE]),
              "scorer": pair.reference.identity, "encoder": ENCODER_NAME}
    texts: dict[str, list[str]] = {"reference": [], "quantized": []}
    parts: dict[str, list[dict[str, np.ndarray]]] = {"reference": [], "quantized": []}
    for t, group in zip(tasks, items):
        params = {**label_explanation_params(pair, t, group), **shared}
        for side in pair.sides:
            labels = label_predictions(pair, side, t, len(group)).predicted
            own = label_explanations(pair, side, t, len(group))
            texts[side.role] += own
            parts[side.role].append(pair.cached_batches(
                side, "nle/label_quality", len(group), NLE_SUITE.look_items(pair.config),
                lambda start, stop, t=t, group=group: params | label_explanation_params(pair, t, group[start:stop]),
                lambda start, stop, t=t, group=group, labels=labels, own=own: quality(
                    group[start:stop], labels[start:stop], own[start:stop], scorer=pair.reference.runtime,
                    judge=judge_runtime, label_names=t.labels)))
    empty = {role: is_empty(own) for role, own in texts.items()}
    has_gold = np.array([bool(it.explanations) for group in items for it in group])
    values: dict[str, dict[str, np.ndarray]] = {}
    for role, found in parts.items():
        raw = {m.name: np.concatenate([part[m.name] for part in found]) for m in QUALITY_METRICS}
        values[role] = {LABEL_METRICS[m].name: v for m, v in zip(QUALITY_METRICS, scored_quality(
            raw, empty[role], has_gold, fluency_worst).values())}
        values[role][LABEL_METRICS[DEGENERATE].name] = empty[role].astype(np.float64)
    values["reference"][LABEL_METRICS[FP_AGREEMENT].name] = np.ones(len(texts["reference"]))
    values["quantized"][LABEL_METRICS[FP_AGREEMENT].name] = explanation_agreement(texts["reference"],
                                                                                  texts["quantized"])
    without = [t.name for t, group in zip(tasks, items) if not any(it.explanations for it in group)]
    gold = [LABEL_METRICS[m] for m in TASK_DEPENDENT]
    result = SuiteResult(
        SUITE, prefixed_ids(tasks, items), values["reference"], values["quantized"],
        fingerprint={"label": stable_hash([[t.name, label_explanation_params(pair, t, group)] for t, group in
                                           zip(tasks, items)] + [shared["judge_template"], stable_hash(judge_id),
                                                                 ENCODER_NAME, "degenerate-worst-v1"])},
        notes={"label": f"{CLASS_NLE_TEMPLATE['version']}: zero-shot post-hoc explanation of the model's own label "
                        f"on {', '.join(t.name for t in tasks)}, judged as e-SNLI's",
               "label_without_gold_explanations": without,
               "label_examples": [{"item": i, "reference": text} for i, text in
                                  list(zip(prefixed_ids(tasks, items), texts["reference"]))[:EXAMPLES_IN_NOTES]]},
        lost=lost_counts(empty, [LABEL_METRICS[m] for m in QUALITY_METRICS]),
    )
    if len(without) == len(tasks):
        result.skipped |= dict.fromkeys([m.name for m in gold], "not applicable: no gold explanations in "
                                        + ", ".join(without))
        for store in (result.reference, result.quantized, result.lost):
            for metric in gold:
                store.pop(metric.name)
        gold = []
    correct = np.concatenate([label_predictions(pair, pair.reference, t, len(g)).correct for t, g in zip(tasks, items)])
    require_competence(result, ", ".join(t.name for t in tasks), correct, pooled_chance(tasks, items), gold)
    return result


# --- the suite --------------------------------------------------------------------------------------------

def run_nle(pair: "ModelPair") -> SuiteResult:
    """Quality metrics of both models' explanations of their own labels, and their agreement, per kind of data.

    e-SNLI, ECQA (``ecqa_``) and the run's classification files (``label_``) each fill their own metrics; a
    kind the run has no data of is reported as not applicable.
    """
    n = nle_size(pair)
    fluency_worst = uniform_log_perplexity(pair.reference.runtime)
    result = combine(SUITE, [_esnli_part(pair, n, fluency_worst), _ecqa_part(pair, n, fluency_worst),
                             _label_part(pair, n, fluency_worst)])
    if result.item_ids:
        result.notes["degenerate"] = (f"empty explanation; scored gold similarity -1, ROUGE-L 0, judge ratings 1, "
                                      f"fluency {fluency_worst:.3f} (log vocabulary size)")
    return result


NLE_SUITE = register_suite(Suite(
    SUITE,
    "Quality of each model's post-hoc explanation of its own e-SNLI label, and FP–quantized explanation "
    "agreement.",
    tuple(NLE_METRICS), run_nle,
    sizes={"smoke": 16, "standard": 120, "full": 400}, item_cost=5.7,
))
