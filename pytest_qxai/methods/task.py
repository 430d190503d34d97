"""Task accuracy on e-SNLI and ECQA: predictions by option log-likelihood, the prerequisite of every explanation metric.

Each model scores every label option after a fixed, versioned prompt (no sampling) and predicts the best one.

* e-SNLI (zero-shot, through the model's chat template when it has one): "Premise: … Hypothesis: … Does the
  premise imply the hypothesis? Answer yes, maybe or no." and the options `` yes`` / `` maybe`` / `` no``
  stand for entailment / neutral / contradiction. On SmolLM2-135M-Instruct this was the best of eleven
  zero- and few-shot prompts we measured on 600 test items (0.395 against a chance level of 0.333). The
  NLI-label wording, yes/no wording without the chat template, and 3–6-shot prompts built from e-SNLI dev
  items all stayed at 0.33–0.39. SmolLM2 never answers "maybe" with this prompt: its accuracy comes from
  telling entailment from contradiction.
* Your classification data (``--qxai-data NAME=FILE``, zero-shot, through the chat template when there is one):
  "Text: … Which label fits this text: a, b, c? Answer with the label only." and the options are the labels
  with a leading space. A label of several tokens is scored as a whole continuation: the sum of its tokens'
  log-probabilities. No length normalisation: the sum is ``log p(label | prompt)``, the probability of the whole
  answer, so a label is not favoured for having more tokens to spread its probability over; a long label is
  disfavoured only as far as the model finds it less likely. ``label_accuracy`` and ``label_agreement`` pool
  every classification dataset of the run (item ids ``NAME:id``).
* ECQA (3-shot cloze): three fixed ECQA **validation** questions with their answers, then
  "Question: …\\nAnswer:". The score of an option is the summed log-probability of its text (0.457 on
  SmolLM2 against a chance level of 0.2). Listing the options with letters stayed at chance (0.17–0.19).

Per item: ``*_accuracy`` is 1 when the prediction equals the gold label. ``*_agreement`` is the item's share
of Cohen's kappa between the quantized model's labels and the reference's (its mean is kappa: chance-corrected,
so labels at random score 0). It is 1 for every reference item, so its gate is a one-sample question about
the quantized side's kappa against 1.

The per-item predictions are cached per side and shared: :func:`shared_predictions` computes on the task
suite's item set (the explanation suites' items are a prefix of it), in sequential mode block by block of the
task suite's looks, and returns the first ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np

from ..blame.registry import BlameSupport, register_blame
from ..datasets import (BUNDLED_NAMES, NLI_LABELS, ClassItem, MCQItem, NLIItem, dataset_fingerprint,
                        load_classification, load_ecqa, load_esnli, not_in_run, run_datasets)
from ..metrics import Metric, SuiteResult, register_metric
from ..profiles import suite_items
from ..runtime import shared_prefix
from ..storage import cache_type, stable_hash
from ..suite import Suite, register_suite

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide
    from ..protocols import Runtime

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

CLASS_TEMPLATE: dict[str, Any] = {
    "version": "task-class-v1",
    "question": "Text: {text}\nWhich label fits this text: {labels}? Answer with the label only.",
    "no_chat_suffix": "\nAnswer:",
    "option": " {label}",
}
"""The prompt for a classification dataset; options are its labels after a space."""

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
LABEL_ACCURACY = register_metric(Metric(
    SUITE, "label_accuracy",
    "Label predicted by option log-likelihood equals the gold label (your classification data)",
    "binary", direction="higher", bounds=(0.0, 1.0), tolerance="abs:0.03",
))
LABEL_AGREEMENT = register_metric(Metric(
    SUITE, "label_agreement", "Cohen's kappa of the quantized model's labels with the reference's on your "
    "classification data, per dataset (reference = 1)", "continuous", direction="higher", bounds=(-1.0, 1.0),
    tolerance="abs:0.2",
))
TASK_METRICS: list[Metric] = [ESNLI_ACCURACY, ECQA_ACCURACY, ESNLI_AGREEMENT, ECQA_AGREEMENT, LABEL_ACCURACY,
                              LABEL_AGREEMENT]
LabelItem = NLIItem | ClassItem


@dataclass(frozen=True)
class LabelTask:
    """A labelled text dataset of this run as the label suites see it: e-SNLI (NLI) or a classification file.

    ``fields`` are an item's texts in prompt order (premise and hypothesis, or the text); counterfactual edits
    change the last one.
    """

    name: str
    kind: Literal["nli", "classification"]
    labels: tuple[str, ...]
    path: Path | None = None

    def items(self, n: int | None, seed: int) -> list[Any]:
        """The first ``n`` items of this dataset for ``seed`` (nested across ``n``; all when None)."""
        if self.kind == "nli":
            return load_esnli(n, seed, self.path)
        assert self.path is not None
        return load_classification(n, seed, self.path)

    def fields(self, item: Any) -> tuple[str, ...]:
        """The item's texts in prompt order."""
        return (item.premise, item.hypothesis) if self.kind == "nli" else (item.text,)

    def field_names(self) -> tuple[str, ...]:
        """Names of the texts in prompt order."""
        return ("premise", "hypothesis") if self.kind == "nli" else ("text",)

    def gold(self, item: Any) -> int:
        """Index of the item's gold label."""
        return self.labels.index(item.label)

    @property
    def options(self) -> tuple[str, ...]:
        """The scored continuation of each label, in label order."""
        if self.kind == "nli":
            return tuple(NLI_TEMPLATE["options"])
        return tuple(CLASS_TEMPLATE["option"].format(label=label) for label in self.labels)

    def prompt(self, tokenizer: "PreTrainedTokenizerBase", fields: Sequence[str]) -> str:
        """The label-scoring prompt for these field texts."""
        if self.kind == "nli":
            return nli_prompt(tokenizer, *fields)
        question = CLASS_TEMPLATE["question"].format(text=fields[0], labels=", ".join(self.labels))
        return chat_prompt(tokenizer, question, CLASS_TEMPLATE["no_chat_suffix"])

    def item_options(self, item: Any) -> tuple[str, ...]:
        """The scored continuation of each label (the same for every item)."""
        return self.options

    def template_id(self, tokenizer: "PreTrainedTokenizerBase") -> str:
        """A hash of what the prompts depend on besides the items."""
        if self.kind == "nli":
            return template_id(tokenizer)
        return stable_hash([CLASS_TEMPLATE, self.labels, getattr(tokenizer, "chat_template", None)])


NLI_TASK = LabelTask("esnli", "nli", NLI_LABELS)
"""e-SNLI as a labelled dataset (prompts and options; its items come from :func:`esnli_items`)."""


@dataclass(frozen=True)
class ClozeTask:
    """ECQA as the attribution suite sees it: the question is the item's only text, and each item has its own options.

    The prompt is the task suite's 3-shot cloze; an option's score is its text's summed log-probability after it.
    """

    name: str = "ecqa"
    kind: Literal["mcq"] = "mcq"

    def fields(self, item: MCQItem) -> tuple[str, ...]:
        """The item's texts in prompt order: the question."""
        return (item.question,)

    def prompt(self, tokenizer: "PreTrainedTokenizerBase", fields: Sequence[str]) -> str:
        """The cloze prompt for this question text (no chat template, as the task suite scores ECQA)."""
        return mcq_prompt(fields[0])

    def item_options(self, item: MCQItem) -> tuple[str, ...]:
        """The scored continuation of each of the item's answer options, in option order."""
        return tuple(MCQ_TEMPLATE["option"].format(option=option) for option in item.options)

    def template_id(self, tokenizer: "PreTrainedTokenizerBase") -> str:
        """A hash of what the prompts depend on besides the items."""
        return template_id(tokenizer)


MCQ_TASK = ClozeTask()
"""ECQA as an explained dataset (its items come from :func:`ecqa_items`)."""


def predict_labels(runtime: "Runtime", task: LabelTask, items: Sequence[Any]) -> np.ndarray:
    """The task suite's predicted label index for each item (e.g. edited copies of a dataset's items)."""
    prompts = [task.prompt(runtime.tokenizer, task.fields(item)) for item in items]
    return np.argmax(option_scores(runtime, prompts, task.options), axis=1) if prompts else np.zeros(0, dtype=int)


def label_tasks(pair: "ModelPair") -> list[LabelTask]:
    """The run's labelled text datasets: e-SNLI when the run uses it, then each classification file, as given."""
    tasks = []
    for name, path in run_datasets(pair.config.data).items():
        if name == "esnli":
            tasks.append(LabelTask(name, "nli", NLI_LABELS, path))
        elif name not in BUNDLED_NAMES:
            assert path is not None
            tasks.append(LabelTask(name, "classification", load_classification(1, 0, path)[0].label_set, path))
    return tasks


def item_ids(tasks: Sequence[LabelTask], items: Sequence[Sequence[Any]]) -> list[str]:
    """Item ids across the tasks: plain ids for one task, ``NAME:id`` for several."""
    return [f"{task.name}:{it.id}" if len(tasks) > 1 else it.id for task, group in zip(tasks, items) for it in group]


def classification_tasks(pair: "ModelPair") -> list[LabelTask]:
    """The run's classification files, as given."""
    return [task for task in label_tasks(pair) if task.kind == "classification"]


def absent(pair: "ModelPair", kind: Literal["esnli", "ecqa", "classification"]) -> str:
    """Why a suite's metrics of one kind of data do not apply: the run has none of it (one line)."""
    datasets = ", ".join(run_datasets(pair.config.data))
    return {"esnli": f"not applicable: no e-SNLI data in this run ({datasets})",
            "ecqa": f"not applicable: no multiple-choice (ECQA) data in this run ({datasets})",
            "classification": f"not applicable: no classification dataset in this run ({datasets}); give one with "
                              "--qxai-data NAME=FILE"}[kind]


def prefixed_ids(tasks: Sequence[LabelTask], items: Sequence[Sequence[Any]]) -> list[str]:
    """Item ids ``NAME:id`` across the tasks (never confused with the bundled datasets' ids in one suite)."""
    return [f"{task.name}:{it.id}" for task, group in zip(tasks, items) for it in group]


def pooled_chance(tasks: Sequence[LabelTask], items: Sequence[Sequence[Any]]) -> float:
    """Chance accuracy over the items of several labelled datasets: the mean of 1 / label count per item."""
    return float(np.mean([1 / len(task.labels) for task, group in zip(tasks, items) for _ in group]))


def ecqa_chance(pair: "ModelPair", n: int) -> float:
    """Chance accuracy on the first ``n`` ECQA items: the mean of 1 / option count per item (a file may have any)."""
    return float(np.mean([1 / len(item.options) for item in ecqa_items(pair, n)]))


def no_label_data(pair: "ModelPair") -> str:
    """Why a label suite has nothing to run on (no e-SNLI and no classification data in the run)."""
    return not_in_run(pair.config.data, "labelled texts", "the suite needs e-SNLI or a classification file "
                      "(--qxai-data NAME=FILE)")


@cache_type
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
    """``[n, options]`` summed log-probability of each option's text after the cloze prompt (−inf pads short rows)."""
    return cloze_logprobs(runtime, [mcq_prompt(item.question) for item in items],
                          [MCQ_TASK.item_options(item) for item in items])


def cloze_logprobs(runtime: "Runtime", prompts: Sequence[str], options: Sequence[Sequence[str]]) -> np.ndarray:
    """``[n, options]`` summed log-probability of each prompt's own continuations (−inf pads short rows).

    The demonstrations are the same for every prompt and run once; each prompt runs once and its options are
    scored after it (:meth:`Runtime.grouped_logprobs`).
    """
    out = np.full((len(prompts), max((len(o) for o in options), default=0)), -np.inf)
    if not prompts:
        return out
    encoded = runtime.encode(prompts)
    shared = shared_prefix(encoded)
    scores = runtime.grouped_logprobs(encoded[0][:shared], [p[shared:] for p in encoded],
                                      [runtime.encode(list(own), add_special_tokens=False) for own in options])
    for row, values in enumerate(scores):
        out[row, : len(values)] = [float(v.sum()) for v in values]
    return out


# --- cached per-side predictions --------------------------------------------------------------------------

def esnli_items(pair: "ModelPair", n: int | None) -> list[NLIItem]:
    """The first ``n`` e-SNLI items of this run, all when None (bundled or ``--qxai-data esnli=...``; none when it
    has no e-SNLI)."""
    data = run_datasets(pair.config.data)
    return load_esnli(n, pair.config.seed, data["esnli"]) if "esnli" in data else []


def ecqa_items(pair: "ModelPair", n: int | None) -> list[MCQItem]:
    """The first ``n`` ECQA items of this run, all when None (bundled or ``--qxai-data ecqa=...``; none when it
    has no ECQA)."""
    data = run_datasets(pair.config.data)
    return load_ecqa(n, pair.config.seed, data["ecqa"]) if "ecqa" in data else []


def task_size(pair: "ModelPair") -> int:
    """Items per dataset of the task suite under this run's profile."""
    return suite_items(SUITE, pair.config)


def shared_predictions(pair: "ModelPair", side: "ModelSide", namespace: str, n: int, items: Sequence[Any],
                       template: str, compute: Callable[[Sequence[Any]], np.ndarray],
                       gold: Callable[[Any], int]) -> Predictions:
    """A side's predictions on the first ``n`` of ``items`` (a dataset in the run's seeded order), computed on
    the task suite's items so that every suite shares them: on its whole item set outside sequential mode, and
    one entry per task-suite look's block in sequential mode, so that no suite's look recomputes an item."""
    looks = TASK_ACCURACY_SUITE.look_items(pair.config)
    total = max(n, task_size(pair)) if looks is None else next((look for look in looks if look >= n), n)
    chosen = list(items[:total])

    def part(start: int, stop: int) -> dict[str, Any]:
        block = chosen[start:stop]
        return {"ids": [item.id for item in block], "logprobs": compute(block),
                "gold": np.array([gold(item) for item in block], dtype=np.int64)}

    joined = pair.cached_batches(side, namespace, len(chosen), looks,
                                 lambda start, stop: {"data": dataset_fingerprint(chosen[start:stop]),
                                                      "template": template}, part)
    return Predictions(tuple(joined["ids"]), joined["logprobs"], joined["gold"]).head(n)


def nli_predictions(pair: "ModelPair", side: "ModelSide", n: int) -> Predictions:
    """A side's e-SNLI predictions on the first ``n`` items (:func:`shared_predictions`)."""
    return shared_predictions(
        pair, side, "task/esnli", n, esnli_items(pair, None), template_id(pair.tokenizer),
        lambda items: nli_logprobs(side.runtime, [(item.premise, item.hypothesis) for item in items]),
        lambda item: NLI_LABELS.index(item.label))


def mcq_predictions(pair: "ModelPair", side: "ModelSide", n: int) -> Predictions:
    """A side's ECQA predictions on the first ``n`` items (:func:`shared_predictions`)."""
    return shared_predictions(pair, side, "task/ecqa", n, ecqa_items(pair, None), template_id(pair.tokenizer),
                              lambda items: mcq_logprobs(side.runtime, items),
                              lambda item: item.options.index(item.answer))


def label_predictions(pair: "ModelPair", side: "ModelSide", task: LabelTask, n: int) -> Predictions:
    """A side's predictions on the first ``n`` items of a labelled dataset (:func:`shared_predictions`)."""
    if task.kind == "nli":
        return nli_predictions(pair, side, n)
    return shared_predictions(
        pair, side, "task/classification", n, task.items(None, pair.config.seed), task.template_id(pair.tokenizer),
        lambda items: option_scores(side.runtime, [task.prompt(side.runtime.tokenizer, task.fields(item))
                                                   for item in items], task.options),
        task.gold)


def run_task_accuracy(pair: "ModelPair") -> SuiteResult:
    """Accuracy and FP–quantized label agreement on each dataset of the run, per item, for both models.

    e-SNLI, ECQA and the classification datasets fill their own metrics (NaN on the other datasets' items); a
    metric whose dataset the run does not use is reported as not applicable.
    """
    n = task_size(pair)
    classes = classification_tasks(pair)
    blocks: list[tuple[list[str], dict[str, list[np.ndarray]]]] = []
    skipped: dict[str, str] = {}
    notes: dict[str, Any] = {"templates": f"{NLI_TEMPLATE['version']}, {MCQ_TEMPLATE['version']}, "
                                          f"{CLASS_TEMPLATE['version']}", "items": {}}
    fingerprint: dict[str, str] = {}
    if esnli_items(pair, 1):
        nli = [nli_predictions(pair, side, n) for side in pair.sides]
        blocks.append(_block("esnli", nli, ESNLI_ACCURACY, ESNLI_AGREEMENT))
        fingerprint["esnli"] = dataset_fingerprint(esnli_items(pair, n))
        notes |= {"esnli": "zero-shot, chat template; options ' yes'/' maybe'/' no' = entailment/neutral/contradiction",
                  "esnli_predicted_label_counts": {role: np.bincount(p.predicted, minlength=len(NLI_LABELS)).tolist()
                                                   for role, p in zip(("reference", "quantized"), nli)}}
    else:
        skipped |= dict.fromkeys([ESNLI_ACCURACY.name, ESNLI_AGREEMENT.name], absent(pair, "esnli"))
    if ecqa_items(pair, 1):
        blocks.append(_block("ecqa", [mcq_predictions(pair, side, n) for side in pair.sides], ECQA_ACCURACY,
                             ECQA_AGREEMENT))
        fingerprint["ecqa"] = dataset_fingerprint(ecqa_items(pair, n))
        notes["ecqa"] = "3-shot cloze (ECQA validation demos); option score = summed log-probability of its text"
    else:
        skipped |= dict.fromkeys([ECQA_ACCURACY.name, ECQA_AGREEMENT.name], absent(pair, "ecqa"))
    for task in classes:
        blocks.append(_block(task.name, [label_predictions(pair, side, task, n) for side in pair.sides],
                             LABEL_ACCURACY, LABEL_AGREEMENT))
        fingerprint[task.name] = stable_hash([dataset_fingerprint(task.items(n, pair.config.seed)),
                                              task.template_id(pair.tokenizer)])
        notes[task.name] = f"zero-shot, labels {', '.join(task.labels)}; option score = summed log-probability"
    if not classes:
        skipped |= dict.fromkeys([LABEL_ACCURACY.name, LABEL_AGREEMENT.name], absent(pair, "classification"))
    if blocks:
        fingerprint |= {"templates": template_id(pair.tokenizer), "agreement": "cohen-kappa"}
    ids = [i for block_ids, _ in blocks for i in block_ids]
    values: dict[str, dict[str, np.ndarray]] = {"reference": {}, "quantized": {}}
    for metric in TASK_METRICS:
        if metric.name in skipped:
            continue
        for side, role in enumerate(values):
            values[role][metric.name] = np.concatenate([
                block[metric.name][side] if metric.name in block else np.full(len(block_ids), np.nan)
                for block_ids, block in blocks
            ])
    notes["items"] = {block_ids[0].split(":")[0]: len(block_ids) for block_ids, _ in blocks if block_ids}
    notes["chance"] = {"esnli": 1 / 3} | ({"ecqa": ecqa_chance(pair, n)} if "ecqa" in run_datasets(pair.config.data) else {}) | {
        task.name: 1 / len(task.labels) for task in classes}
    notes["agreement"] = "per-item shares of Cohen's kappa with the reference's labels, per dataset; reference side = 1"
    return SuiteResult(suite=SUITE, item_ids=ids, reference=values["reference"], quantized=values["quantized"],
                       fingerprint=fingerprint, skipped=skipped, notes=notes)


def _block(name: str, predictions: Sequence[Predictions], accuracy: Metric,
           agreement_metric: Metric) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    """One dataset's item ids (``NAME:id``) and its per-side accuracy and agreement values."""
    reference, quantized = predictions
    return [f"{name}:{i}" for i in reference.item_ids], {
        accuracy.name: [reference.correct, quantized.correct],
        agreement_metric.name: list(agreement(reference.predicted, quantized.predicted)),
    }


TASK_ACCURACY_SUITE = register_suite(Suite(
    SUITE,
    "Task accuracy on e-SNLI and ECQA and FP–quantized label agreement, the prerequisite of every explanation "
    "metric.",
    tuple(TASK_METRICS), run_task_accuracy,
    sizes={"smoke": 24, "standard": 300, "full": 1200}, item_cost=0.38,
))
