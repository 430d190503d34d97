"""Task accuracy on e-SNLI and ECQA: predictions by option log-likelihood, the prerequisite of every explanation metric.

Each model scores every label option after a fixed, versioned prompt (no sampling) and predicts the best one.

* e-SNLI (zero-shot, through the model's chat template when it has one): "Premise: … Hypothesis: … Does the
  premise imply the hypothesis? Answer yes, maybe or no." and the options `` yes`` / `` maybe`` / `` no``
  stand for entailment / neutral / contradiction. On SmolLM2-135M-Instruct this was the best of eleven
  zero- and few-shot prompts we measured on 600 test items (0.395 against a chance level of 0.333). The
  NLI-label wording, yes/no wording without the chat template, and 3–6-shot prompts built from e-SNLI dev
  items all stayed at 0.33–0.39. SmolLM2 never answers "maybe" with this prompt: its accuracy comes from
  telling entailment from contradiction.
* ECQA (3-shot cloze): three fixed ECQA **validation** questions with their answers, then
  "Question: …\\nAnswer:". The score of an option is the summed log-probability of its text (0.457 on
  SmolLM2 against a chance level of 0.2). Listing the options with letters stayed at chance (0.17–0.19).

Per item: ``*_accuracy`` is 1 when the prediction equals the gold label. ``*_agreement`` is the item's share
of Cohen's kappa between the quantized model's labels and the reference's (its mean is kappa: chance-corrected,
so labels at random score 0). It is 1 for every reference item, so its gate is a one-sample question about
the quantized side's kappa against 1.

The per-item predictions are cached per side and shared: :func:`nli_predictions` always computes on the
task suite's item set (the explanation suites' items are a prefix of it) and returns the first ``n``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..blame.registry import BlameSupport, register_blame
from ..datasets import NLI_LABELS, MCQItem, NLIItem, dataset_fingerprint, load_ecqa, load_esnli
from ..metrics import Metric, SuiteResult, register_metric
from ..profiles import suite_size
from ..storage import stable_hash

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide
    from ..runtime import Runtime

SUITE = "task_accuracy"
VOCAB_CHUNK = 256
"""Prompts per ``next_token_logprobs`` call: bounds the ``[n, vocab]`` array held in memory."""

NLI_TEMPLATE: dict[str, Any] = {
    "version": "task-nli-v1",
    "question": ("Premise: {premise}\nHypothesis: {hypothesis}\n"
                 "Does the premise imply the hypothesis? Answer yes, maybe or no."),
    "no_chat_suffix": "\nAnswer:",
    "options": (" yes", " maybe", " no"),
}
"""The e-SNLI prompt; ``options`` verbalize :data:`NLI_LABELS` in that order."""

MCQ_TEMPLATE: dict[str, Any] = {
    "version": "task-mcq-v1",
    "item": "Question: {question}\nAnswer:",
    "option": " {option}",
    # The first three questions of ECQA's validation split (never evaluated: the bundled items are test items).
    "demos": (
        ("What does someone typically feel when applying for a job?", "anxiety and fear"),
        ("Where do cars usually travel at very high speeds?", "race track"),
        ("Each witness had to take oath, this oath was to what?", "not lie"),
    ),
}

ESNLI_ACCURACY = register_metric(Metric(
    SUITE, "esnli_accuracy", "e-SNLI label predicted by option log-likelihood equals the gold label",
    "binary", direction="higher", bounds=(0.0, 1.0), tolerance="abs:0.03",
))
ECQA_ACCURACY = register_metric(Metric(
    SUITE, "ecqa_accuracy", "ECQA answer predicted by option log-likelihood equals the gold answer",
    "binary", direction="higher", bounds=(0.0, 1.0), tolerance="abs:0.03",
))
ESNLI_AGREEMENT = register_metric(Metric(
    SUITE, "esnli_agreement", "Cohen's kappa of the quantized model's e-SNLI labels with the reference's (reference = 1)",
    "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.2",
))
ECQA_AGREEMENT = register_metric(Metric(
    SUITE, "ecqa_agreement", "Cohen's kappa of the quantized model's ECQA labels with the reference's (reference = 1)",
    "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.2",
))
TASK_METRICS: list[Metric] = [ESNLI_ACCURACY, ECQA_ACCURACY, ESNLI_AGREEMENT, ECQA_AGREEMENT]


@dataclass(frozen=True)
class Predictions:
    """One model's option log-likelihoods on a list of items, with the gold option of each."""

    item_ids: tuple[str, ...]
    logprobs: np.ndarray
    """``[n, options]`` summed log-probability of each option."""
    gold: np.ndarray
    """Index of the gold option per item."""

    @property
    def predicted(self) -> np.ndarray:
        """Index of the best-scoring option per item."""
        return np.argmax(self.logprobs, axis=1)

    @property
    def correct(self) -> np.ndarray:
        """1.0 where the prediction is the gold option, else 0.0."""
        return (self.predicted == self.gold).astype(np.float64)

    def head(self, n: int) -> Predictions:
        """The first ``n`` items."""
        return Predictions(self.item_ids[:n], self.logprobs[:n], self.gold[:n])


def agreement(reference: np.ndarray, quantized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-item shares of Cohen's kappa between the two sides' labels: reference side all ones.

    Item i scores (agree_i - p_e) / (1 - p_e), p_e the agreement expected by chance from the two label
    distributions, so the mean is Cohen's kappa (sklearn's ``cohen_kappa_score``) and a model that labels at
    random scores about 0 rather than its chance agreement. When both sides give one and the same label
    throughout, kappa is 0/0; the items then score 1, the convention for perfect observed agreement.
    """
    reference, quantized = np.asarray(reference), np.asarray(quantized)
    if reference.shape != quantized.shape:
        raise ValueError("agreement needs two label vectors of the same shape")
    labels = int(max(reference.max(initial=0), quantized.max(initial=0))) + 1
    shares = [np.bincount(side, minlength=labels) / max(side.size, 1) for side in (reference, quantized)]
    chance = float(shares[0] @ shares[1])
    agree = (reference == quantized).astype(np.float64)
    kappa = (agree - chance) / (1 - chance) if chance < 1 else agree
    return np.ones(reference.shape, dtype=np.float64), kappa


# --- prompts ----------------------------------------------------------------------------------------------

def chat_prompt(tokenizer: "PreTrainedTokenizerBase", user: str, no_chat_suffix: str) -> str:
    """``user`` as a chat turn awaiting the assistant's answer, or plain text plus ``no_chat_suffix``."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        ))
    return user + no_chat_suffix


def nli_prompt(tokenizer: "PreTrainedTokenizerBase", premise: str, hypothesis: str) -> str:
    """The e-SNLI label-scoring prompt for one premise/hypothesis pair."""
    question = NLI_TEMPLATE["question"].format(premise=premise, hypothesis=hypothesis)
    return chat_prompt(tokenizer, question, NLI_TEMPLATE["no_chat_suffix"])


def mcq_prompt(question: str) -> str:
    """The 3-shot ECQA cloze prompt for one question."""
    shots = "".join(
        MCQ_TEMPLATE["item"].format(question=q) + MCQ_TEMPLATE["option"].format(option=a) + "\n\n"
        for q, a in MCQ_TEMPLATE["demos"]
    )
    return shots + MCQ_TEMPLATE["item"].format(question=question)


def template_id(tokenizer: "PreTrainedTokenizerBase") -> str:
    """A hash of both task templates and the chat template they are rendered with."""
    return stable_hash([NLI_TEMPLATE, MCQ_TEMPLATE, getattr(tokenizer, "chat_template", None)])


# --- scoring ----------------------------------------------------------------------------------------------

def option_scores(runtime: "Runtime", prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
    """``[n, options]`` log-likelihood of each option after each prompt, up to a term shared by all options.

    When the options' tokens differ only in their last one (single tokens, or " 1" … " 5" when a tokenizer
    splits them into a space and a digit), one forward per prompt, extended by the shared tokens, scores them
    all; the shared tokens' log-probability is the same for every option and left out. Otherwise each
    (prompt, option) pair is teacher-forced and its summed log-probability returned.
    """
    if not prompts:
        return np.zeros((0, len(options)))
    ids = runtime.encode(options, add_special_tokens=False)
    shared = ids[0][:-1]
    extension = runtime.tokenizer.decode(shared) if shared else ""
    if (all(len(i) == len(shared) + 1 and i[:-1] == shared for i in ids)
            and runtime.encode([prompts[0] + extension])[0] == runtime.encode([prompts[0]])[0] + shared):
        columns = [i[-1] for i in ids]
        return np.concatenate([
            runtime.next_token_logprobs([p + extension for p in prompts[start : start + VOCAB_CHUNK]])[:, columns]
            for start in range(0, len(prompts), VOCAB_CHUNK)
        ])
    return np.stack(runtime.option_logprobs(prompts, [tuple(options)] * len(prompts)))


def nli_logprobs(runtime: "Runtime", pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """``[n, 3]`` log-likelihood of each NLI label (order of :data:`NLI_LABELS`) per (premise, hypothesis)."""
    prompts = [nli_prompt(runtime.tokenizer, p, h) for p, h in pairs]
    return option_scores(runtime, prompts, NLI_TEMPLATE["options"])


def predict_nli(runtime: "Runtime", pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Index into :data:`NLI_LABELS` of the predicted label per (premise, hypothesis)."""
    return np.argmax(nli_logprobs(runtime, pairs), axis=1)


def mcq_logprobs(runtime: "Runtime", items: Sequence[MCQItem]) -> np.ndarray:
    """``[n, options]`` summed log-probability of each option's text after the cloze prompt (−inf pads short rows).

    The demonstrations are the same for every question: the token prefix all prompts share runs once and
    every (question, option) continuation is scored after it in length-sorted batches across questions.
    """
    out = np.full((len(items), max((len(item.options) for item in items), default=0)), -np.inf)
    if not items:
        return out
    prompts = runtime.encode([mcq_prompt(item.question) for item in items])
    shared = min(len(os.path.commonprefix(prompts)), min(len(p) for p in prompts) - 1)
    seqs: list[list[int]] = []
    tails: list[int] = []
    where: list[tuple[int, int]] = []
    for row, (item, prompt) in enumerate(zip(items, prompts)):
        options = runtime.encode([MCQ_TEMPLATE["option"].format(option=o) for o in item.options],
                                 add_special_tokens=False)
        for column, ids in enumerate(options):
            seqs.append(prompt[shared:] + ids)
            tails.append(len(ids))
            where.append((row, column))
    scores = runtime.prefixed_tail_logprobs(prompts[0][:shared], seqs, tails)
    for (row, column), score in zip(where, scores):
        out[row, column] = float(score.sum())
    return out


# --- cached per-side predictions --------------------------------------------------------------------------

def esnli_items(pair: "ModelPair", n: int) -> list[NLIItem]:
    """The first ``n`` e-SNLI items of this run (bundled or ``--qxai-data esnli=...``)."""
    return load_esnli(n, pair.config.seed, pair.config.data.get("esnli"))


def ecqa_items(pair: "ModelPair", n: int) -> list[MCQItem]:
    """The first ``n`` ECQA items of this run (bundled or ``--qxai-data ecqa=...``)."""
    return load_ecqa(n, pair.config.seed, pair.config.data.get("ecqa"))


def task_size(pair: "ModelPair") -> int:
    """Items per dataset of the task suite under this run's profile."""
    return suite_size(SUITE, pair.config.profile, pair.config.samples)


def nli_predictions(pair: "ModelPair", side: "ModelSide", n: int) -> Predictions:
    """A side's e-SNLI predictions on the first ``n`` items, computed once on the task suite's item set."""
    items = esnli_items(pair, max(n, task_size(pair)))
    params = {"data": dataset_fingerprint(items), "template": template_id(pair.tokenizer)}

    def compute() -> Predictions:
        logprobs = nli_logprobs(side.runtime, [(item.premise, item.hypothesis) for item in items])
        gold = np.array([NLI_LABELS.index(item.label) for item in items], dtype=np.int64)
        return Predictions(tuple(item.id for item in items), logprobs, gold)

    return pair.cached(side, "task/esnli", params, compute).head(n)


def mcq_predictions(pair: "ModelPair", side: "ModelSide", n: int) -> Predictions:
    """A side's ECQA predictions on the first ``n`` items, computed once on the task suite's item set."""
    items = ecqa_items(pair, max(n, task_size(pair)))
    params = {"data": dataset_fingerprint(items), "template": template_id(pair.tokenizer)}

    def compute() -> Predictions:
        gold = np.array([item.options.index(item.answer) for item in items], dtype=np.int64)
        return Predictions(tuple(item.id for item in items), mcq_logprobs(side.runtime, items), gold)

    return pair.cached(side, "task/ecqa", params, compute).head(n)


def run_task_accuracy(pair: "ModelPair") -> SuiteResult:
    """Accuracy and FP–quantized label agreement on e-SNLI and ECQA, per item, for both models."""
    n = task_size(pair)
    nli = [nli_predictions(pair, side, n) for side in pair.sides]
    mcq = [mcq_predictions(pair, side, n) for side in pair.sides]
    ids = [f"esnli:{i}" for i in nli[0].item_ids] + [f"ecqa:{i}" for i in mcq[0].item_ids]
    blank_nli, blank_mcq = np.full(len(nli[0].item_ids), np.nan), np.full(len(mcq[0].item_ids), np.nan)
    values: dict[str, dict[str, np.ndarray]] = {"reference": {}, "quantized": {}}
    for role, esnli, ecqa in zip(values, nli, mcq):
        values[role][ESNLI_ACCURACY.name] = np.concatenate([esnli.correct, blank_mcq])
        values[role][ECQA_ACCURACY.name] = np.concatenate([blank_nli, ecqa.correct])
    for metric, (ref, quant), blank, first in (
        (ESNLI_AGREEMENT, nli, blank_mcq, True), (ECQA_AGREEMENT, mcq, blank_nli, False)
    ):
        for role, per_item in zip(values, agreement(ref.predicted, quant.predicted)):
            values[role][metric.name] = np.concatenate([per_item, blank] if first else [blank, per_item])
    predicted = {role: np.bincount(p.predicted, minlength=len(NLI_LABELS)).tolist() for role, p in zip(values, nli)}
    return SuiteResult(
        suite=SUITE,
        item_ids=ids,
        reference=values["reference"],
        quantized=values["quantized"],
        fingerprint={
            "esnli": dataset_fingerprint(esnli_items(pair, n)),
            "ecqa": dataset_fingerprint(ecqa_items(pair, n)),
            "templates": template_id(pair.tokenizer),
            "agreement": "cohen-kappa",
        },
        notes={
            "templates": f"{NLI_TEMPLATE['version']}, {MCQ_TEMPLATE['version']}",
            "esnli": "zero-shot, chat template; options ' yes'/' maybe'/' no' = entailment/neutral/contradiction",
            "ecqa": "3-shot cloze (ECQA validation demos); option score = summed log-probability of its text",
            "chance": {"esnli": 1 / 3, "ecqa": 1 / 5},
            "items": {"esnli": len(nli[0].item_ids), "ecqa": len(mcq[0].item_ids)},
            "esnli_predicted_label_counts": predicted,
            "agreement": "per-item shares of Cohen's kappa with the reference's labels; reference side = 1",
        },
    )


def remeasure_task(pair: "ModelPair", item_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Accuracy and agreement of the quantized model as it is now on the suite's items ``item_ids`` (for blame).

    Ids are the suite's (``esnli:…``, ``ecqa:…``); a metric of the other dataset is NaN, as in the suite.
    """
    n = task_size(pair)
    out = {m.name: np.full(len(item_ids), np.nan) for m in TASK_METRICS}
    datasets = (
        ("esnli", esnli_items(pair, n), nli_predictions(pair, pair.reference, n), ESNLI_ACCURACY, ESNLI_AGREEMENT,
         lambda items: nli_logprobs(pair.quantized.runtime, [(it.premise, it.hypothesis) for it in items]),
         lambda item: NLI_LABELS.index(item.label)),
        ("ecqa", ecqa_items(pair, n), mcq_predictions(pair, pair.reference, n), ECQA_ACCURACY, ECQA_AGREEMENT,
         lambda items: mcq_logprobs(pair.quantized.runtime, items), lambda item: item.options.index(item.answer)),
    )
    for prefix, items, reference, accuracy, agreeing, score, gold in datasets:
        by_id = {item.id: item for item in items}
        rows = [(k, by_id[i.split(":", 1)[1]]) for k, i in enumerate(item_ids) if i.split(":", 1)[0] == prefix]
        if not rows:
            continue
        predicted = np.argmax(score([item for _, item in rows]), axis=1)
        theirs = dict(zip(reference.item_ids, reference.predicted))
        where = [k for k, _ in rows]
        out[accuracy.name][where] = [float(p == gold(item)) for p, (_, item) in zip(predicted, rows)]
        out[agreeing.name][where] = [float(p == theirs[item.id]) for p, (_, item) in zip(predicted, rows)]
    return out


register_blame(BlameSupport(SUITE, tuple(m.name for m in TASK_METRICS), remeasure_task, run_task_accuracy))
