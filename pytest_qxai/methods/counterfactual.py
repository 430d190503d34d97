"""Self-generated counterfactual examples: does the model's own minimal edit reach the requested label?

On e-SNLI (plain metrics, both variants), ECQA and the run's classification files (``ecqa_`` and ``label_``, one
step each; described below for e-SNLI, the others alike).

Each model sees the item and *its own* predicted label (the task suite's prediction, shared through the
cache) and is asked for a minimal edit of the hypothesis that would make the relationship a target label:
the next label after its prediction in the fixed cycle entailment → neutral → contradiction →
entailment. Two variants (versioned few-shot templates, greedy, bounded length): one step ("Edited
hypothesis:"), and two steps (first "Words to change:", then the edit of those words). The unit is the item:
every item of the suite counts on both sides. Per item and variant:

* ``degenerate_rate``: the edit is degenerate: empty, or exactly the hypothesis's words (case and spacing
  ignored).
* ``self_flip``: the generating model's prediction (task suite prompt) on a non-degenerate edit is the
  requested target.
* ``validity``: the FP reference, a fixed judge, predicts the requested target on the edit, and the edit is
  non-degenerate and minimal: its ``minimality`` is at most :data:`MINIMALITY_BOUND`.
* ``minimality``: word-level Levenshtein distance between hypothesis and edit, normalised by the longer
  word sequence (rapidfuzz); lower is more minimal.
* ``similarity``: sentence-embedding cosine of hypothesis and edit.
* ``fluency``: log-perplexity (mean token negative log-likelihood) of the edit under the reference model.

A degenerate edit is an outcome, never a missing value: it never flips and never counts as valid, and it
scores the worst value of each text metric (minimality 1, similarity −1, fluency the log-perplexity of a
uniform guess over the scorer's vocabulary), so copying the input or writing nothing can never look minimal.

ECQA (``ecqa_`` metrics, one step): the model sees an ECQA question, its own cloze answer (task suite) and a
target, the next option after its answer in the item's option order, and edits the question (hand-written
demonstrations, not from ECQA). The edit is answered by the task suite's cloze scoring over the same options;
the six metrics are defined and scored as their e-SNLI counterparts, against the question.

Classification files (``label_`` metrics, one step, zero-shot: no demonstration fits every task): "Change as few
words of the text as possible so that its label becomes the target label." with the text, the model's own label
and the target, the next label in the file's label order (cyclic); the edit is labelled by the task suite's
classification prompt, and the six metrics are scored as e-SNLI's, against the text.

Precondition: ``self_flip`` and ``validity`` ask whether the model can move its own task label; the e-SNLI and
the ECQA ones are ``not applicable`` when the reference is not significantly above chance on that task's items.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..datasets import NLI_LABELS, ClassItem, MCQItem, NLIItem, dataset_fingerprint
from ..metrics import Metric, SuiteResult, combine, not_applicable, register_metric
from ..profiles import suite_items
from ..storage import stable_hash
from ..suite import Suite, register_suite
from . import task
from .nle import log_perplexity
from .outcomes import (competence_items, degenerate_metric, lost_counts, require_competence, scored,
                       uniform_log_perplexity, worst_value)
from .text import pairwise_cosine, token_edit_distance, words

if TYPE_CHECKING:
    from ..models.pair import ModelPair, ModelSide
    from ..protocols import Runtime

SUITE = "counterfactual"

VARIANTS = {"one_step": "", "two_step": "two_step_"}
"""Variant name → metric name prefix."""
MAX_EDIT_TOKENS = 40
MAX_WORDS_TOKENS = 12
EXAMPLES_IN_NOTES = 3
MINIMALITY_BOUND = 0.5
"""Largest normalised word edit distance of a valid counterfactual: an edit that changes more than half of the
hypothesis's words writes a new sentence rather than a minimal edit of this one."""
SCORING_VERSION = "counterfactual-scoring-v2"

TEMPLATES: dict[str, Any] = {
    "version": "counterfactual-v1",
    "instruction": (
        "Change as few words of the hypothesis as possible so that the relationship between the premise and "
        "the hypothesis becomes the target relationship.\n\n"
    ),
    "words_instruction": (
        "Name the words of the hypothesis that must change so that the relationship between the premise and "
        "the hypothesis becomes the target relationship.\n\n"
    ),
    "item": "Premise: {premise}\nHypothesis: {hypothesis}\nRelationship: {label}\nTarget: {target}\n",
    "words": "Words to change:",
    "edit": "Edited hypothesis:",
    # Hand-written demonstrations (not from e-SNLI), one per step of the label cycle.
    "demos": (
        {"premise": "A man in a red shirt is riding a bike down a hill.", "hypothesis": "A man is riding a bike.",
         "label": "entailment", "target": "neutral", "words": "a bike", "edit": "A man is riding his new bike."},
        {"premise": "Two children are playing with a ball in the park.", "hypothesis": "The children are brothers.",
         "label": "neutral", "target": "contradiction", "words": "brothers", "edit": "The children are sleeping."},
        {"premise": "A woman is cooking dinner in the kitchen.", "hypothesis": "A woman is sleeping on the couch.",
         "label": "contradiction", "target": "entailment", "words": "sleeping on the couch",
         "edit": "A woman is cooking in the kitchen."},
    ),
}


ECQA_TEMPLATES: dict[str, Any] = {
    "version": "counterfactual-ecqa-v1",
    "instruction": "Change as few words of the question as possible so that the target becomes its answer.\n\n",
    "item": "Question: {question}\nAnswer: {answer}\nTarget: {target}\n",
    "edit": "Edited question:",
    # Hand-written demonstrations (not from ECQA).
    "demos": (
        {"question": "What do people use to write on paper?", "answer": "pen", "target": "scissors",
         "edit": "What do people use to cut paper?"},
        {"question": "Where would you see many fish swimming?", "answer": "aquarium", "target": "zoo",
         "edit": "Where would you see many lions sleeping?"},
        {"question": "Where do you keep milk cold?", "answer": "refrigerator", "target": "oven",
         "edit": "Where do you keep bread hot?"},
    ),
}


CLASS_TEMPLATES: dict[str, Any] = {
    "version": "counterfactual-class-v1",
    "instruction": "Change as few words of the text as possible so that its label becomes the target label.\n\n",
    "item": "Text: {text}\nLabel: {label}\nTarget: {target}\n",
    "edit": "Edited text:",
}
"""The zero-shot edit prompt for a classification file (no demonstration fits every task)."""


def _metric(name: str, description: str, kind: str, **kwargs: Any) -> dict[str, Metric]:
    """Register one metric for every variant (``two_step_`` prefix for the two-step one)."""
    return {
        variant: register_metric(Metric(SUITE, prefix + name, f"{description} ({variant.replace('_', '-')})",
                                        kind, **kwargs))  # type: ignore[arg-type]
        for variant, prefix in VARIANTS.items()
    }


SELF_FLIP = _metric("self_flip", "Generating model's own label on its non-degenerate edit is the requested target",
                    "binary", direction="higher", bounds=(0.0, 1.0), tolerance="abs:0.05")
VALIDITY = _metric("validity", "FP reference predicts the requested target on a non-degenerate edit within the "
                   "minimality bound (fixed judge)", "binary", direction="higher", bounds=(0.0, 1.0),
                   tolerance="abs:0.05")
MINIMALITY = _metric("minimality", "Normalised word edit distance between hypothesis and counterfactual "
                     "(degenerate edit = 1)", "continuous", direction="lower", bounds=(0.0, 1.0),
                     tolerance="abs:0.05")
SIMILARITY = _metric("similarity", "Sentence-embedding cosine of hypothesis and counterfactual (degenerate edit = -1)",
                     "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.03")
FLUENCY = _metric("fluency", "Log-perplexity of the counterfactual under the reference model (degenerate edit = "
                  "log vocabulary size)", "continuous", direction="lower", bounds=(0.0, None), unit="nats/token",
                  tolerance="abs:0.25")
DEGENERATE = {variant: degenerate_metric(SUITE, f"{variant.replace('_', '-')} edit empty or a copy of the hypothesis",
                                         prefix + "degenerate_rate") for variant, prefix in VARIANTS.items()}
COUNTERFACTUAL_METRICS: list[Metric] = [
    group[variant] for variant in VARIANTS
    for group in (SELF_FLIP, VALIDITY, MINIMALITY, SIMILARITY, FLUENCY, DEGENERATE)
]
TASK_DEPENDENT: list[Metric] = [group[variant] for variant in VARIANTS for group in (SELF_FLIP, VALIDITY)]
ESNLI_METRICS = list(COUNTERFACTUAL_METRICS)


def _one_step_on(prefix: str, data: str, edited: str) -> dict[str, Metric]:
    """Register each one-step e-SNLI metric for other data (``prefix``), edits of ``edited`` for the hypothesis's."""
    return {metric.name: register_metric(dataclasses.replace(
        metric, name=prefix + metric.name, description=metric.description.replace("(one-step)", f"({data}, one-step)")
        .replace("hypothesis", edited)))
        for metric in (SELF_FLIP["one_step"], VALIDITY["one_step"], MINIMALITY["one_step"], SIMILARITY["one_step"],
                       FLUENCY["one_step"], DEGENERATE["one_step"])}


ECQA_METRICS = _one_step_on("ecqa_", "ECQA", "question")
"""Each one-step e-SNLI metric's name → its ECQA counterpart."""
LABEL_METRICS = _one_step_on("label_", "your classification data", "text")
"""Each one-step e-SNLI metric's name → its counterpart on the run's classification files."""
COUNTERFACTUAL_METRICS += [*ECQA_METRICS.values(), *LABEL_METRICS.values()]


# --- templates --------------------------------------------------------------------------------------------

def target_label(label: int) -> int:
    """The requested label: the next one in the cycle entailment → neutral → contradiction → entailment."""
    return (label + 1) % len(NLI_LABELS)


def _item_block(premise: str, hypothesis: str, label: str, target: str) -> str:
    """One item: premise, hypothesis, the model's label and the requested target."""
    return TEMPLATES["item"].format(premise=premise, hypothesis=hypothesis, label=label, target=target)


def _demo_block(demo: dict[str, str], with_words: bool, with_edit: bool) -> str:
    """A worked demonstration, with its words to change and/or its edit."""
    block = _item_block(demo["premise"], demo["hypothesis"], demo["label"], demo["target"])
    if with_words:
        block += f"{TEMPLATES['words']} {demo['words']}\n"
    if with_edit:
        block += f"{TEMPLATES['edit']} {demo['edit']}\n"
    return block + "\n"


def edit_prompt(item: NLIItem, label: int, words_to_change: str | None = None) -> str:
    """The prompt asking for the edit; with ``words_to_change`` it is step two of the two-step variant."""
    two_step = words_to_change is not None
    demos = "".join(_demo_block(d, with_words=two_step, with_edit=True) for d in TEMPLATES["demos"])
    query = _item_block(item.premise, item.hypothesis, NLI_LABELS[label], NLI_LABELS[target_label(label)])
    if two_step:
        query += f"{TEMPLATES['words']} {words_to_change}\n"
    return TEMPLATES["instruction"] + demos + query + TEMPLATES["edit"]


def words_prompt(item: NLIItem, label: int) -> str:
    """Step one of the two-step variant: which words of the hypothesis to change."""
    demos = "".join(_demo_block(d, with_words=True, with_edit=False) for d in TEMPLATES["demos"])
    query = _item_block(item.premise, item.hypothesis, NLI_LABELS[label], NLI_LABELS[target_label(label)])
    return TEMPLATES["words_instruction"] + demos + query + TEMPLATES["words"]


# --- per-item formulas ------------------------------------------------------------------------------------

def is_degenerate(hypothesis: str, edit: str) -> bool:
    """An edit that is empty or has exactly the hypothesis's words (case and spacing ignored)."""
    return not words(edit) or words(edit) == words(hypothesis)


def reaches(target: np.ndarray, after: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """1 where an eligible edit's label is the requested target, else 0 (an ineligible edit never counts)."""
    return ((np.asarray(target) == np.asarray(after)) & np.asarray(eligible, dtype=bool)).astype(np.float64)


def text_scores(hypotheses: Sequence[str], edits: Sequence[str], scorer: "Runtime") -> dict[str, np.ndarray]:
    """Minimality, similarity and fluency per item, as measured (degenerate edits are scored by the caller)."""
    return {
        "minimality": np.array([token_edit_distance(h, e) for h, e in zip(hypotheses, edits)]),
        "similarity": pairwise_cosine(list(hypotheses), list(edits)),
        "fluency": log_perplexity(scorer, edits),
    }


def degenerate_scores(scores: dict[str, np.ndarray], degenerate: np.ndarray, fluency_worst: float
                      ) -> dict[str, np.ndarray]:
    """The text metrics with every degenerate edit at the metric's worst value."""
    worst = {"minimality": worst_value(MINIMALITY["one_step"]), "similarity": worst_value(SIMILARITY["one_step"]),
             "fluency": fluency_worst}
    return {name: scored(values, degenerate, worst[name]) for name, values in scores.items()}


# --- model computations -----------------------------------------------------------------------------------

def _predict_edited(runtime: "Runtime", items: Sequence[NLIItem], edits: Sequence[str]) -> np.ndarray:
    """The task suite's prediction with each hypothesis replaced by its edit."""
    return task.predict_nli(runtime, [(item.premise, edit) for item, edit in zip(items, edits)])


def _generate(side: "ModelSide", items: Sequence[NLIItem], labels: np.ndarray) -> dict[str, Any]:
    """Both variants' edits by one model, and that model's predictions on them."""
    runtime = side.runtime
    one_step = runtime.generate([edit_prompt(it, int(y)) for it, y in zip(items, labels)], MAX_EDIT_TOKENS)
    chosen = runtime.generate([words_prompt(it, int(y)) for it, y in zip(items, labels)], MAX_WORDS_TOKENS)
    two_step = runtime.generate(
        [edit_prompt(it, int(y), w) for it, y, w in zip(items, labels, chosen)], MAX_EDIT_TOKENS
    )
    edits = {"one_step": one_step, "two_step": two_step}
    return {
        "edits": edits,
        "words": chosen,
        "predictions": {v: _predict_edited(runtime, items, e) for v, e in edits.items()},
    }


def _generated_and_judged(pair: "ModelPair", side: "ModelSide", items: Sequence[NLIItem], labels: np.ndarray,
                          params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A side's e-SNLI edits (:func:`_generate`) and the reference's judgement of them (:func:`_judge`), each cached
    one sequential look's batch of items at a time."""
    looks = COUNTERFACTUAL_SUITE.look_items(pair.config)

    def batch(start: int, stop: int) -> dict[str, Any]:
        return params | {"data": dataset_fingerprint(items[start:stop])}

    def generate(start: int, stop: int) -> dict[str, Any]:
        return _generate(side, items[start:stop], labels[start:stop])

    generated = pair.cached_batches(side, "counterfactual", len(items), looks, batch, generate)
    judged = pair.cached_batches(
        side, "counterfactual/judge", len(items), looks,
        lambda start, stop: batch(start, stop) | {"judge": pair.reference.identity, "scoring": SCORING_VERSION},
        lambda start, stop: _judge(pair, side, items[start:stop], pair.cached(
            side, "counterfactual", batch(start, stop), lambda: generate(start, stop))))
    return generated, judged


def _judge(
    pair: "ModelPair", side: "ModelSide", items: Sequence[NLIItem], generated: dict[str, Any]
) -> dict[str, Any]:
    """The FP reference's predictions on a side's edits and the raw text metrics (scored by the reference)."""
    scorer = pair.reference.runtime
    out: dict[str, Any] = {}
    for variant, texts in generated["edits"].items():
        own = generated["predictions"][variant]  # the reference judging its own edits: already computed
        out[variant] = {
            "predictions": own if side is pair.reference else _predict_edited(scorer, items, texts),
            **text_scores([it.hypothesis for it in items], texts, scorer),
        }
    return out


def ecqa_target(item: MCQItem, answer: int) -> int:
    """The requested ECQA answer: the next option after the model's answer in the item's option order."""
    return (answer + 1) % len(item.options)


def ecqa_edit_prompt(item: MCQItem, answer: int) -> str:
    """The prompt asking for an edit of the question that makes the target option its answer."""
    t = ECQA_TEMPLATES
    demos = "".join(t["item"].format(**d) + f"{t['edit']} {d['edit']}\n\n" for d in t["demos"])
    query = t["item"].format(question=item.question, answer=item.options[answer],
                             target=item.options[ecqa_target(item, answer)])
    return t["instruction"] + demos + query + t["edit"]


def class_edit_prompt(item: ClassItem, label: str, target: str) -> str:
    """The zero-shot prompt asking for an edit of a classification item's text that makes ``target`` its label."""
    return CLASS_TEMPLATES["instruction"] + CLASS_TEMPLATES["item"].format(text=item.text, label=label,
                                                                           target=target) + CLASS_TEMPLATES["edit"]


def _ecqa_answers(runtime: "Runtime", items: Sequence[MCQItem], questions: Sequence[str]) -> np.ndarray:
    """The task suite's cloze answer with each question replaced by its edit (same options)."""
    edited = [dataclasses.replace(item, question=q) for item, q in zip(items, questions)]
    return np.argmax(task.mcq_logprobs(runtime, edited), axis=1)


def _one_step_side(
    pair: "ModelPair", side: "ModelSide", key: str, params: dict[str, Any], items: Sequence[Any],
    prompts: Sequence[str], originals: Sequence[str], targets: np.ndarray,
    predict: Callable[["Runtime", Sequence[Any], list[str]], np.ndarray], metrics: dict[str, Metric],
    fluency_worst: float,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """One side's one-step edits of ``originals``: the metrics (degenerate edits at their worst), the flags, the edits.

    ``predict(runtime, items, edits)`` gives a model's label on those items edited; the reference judges every
    side's edits. Cached one sequential look's batch of items at a time (``params`` plus the batch's data).
    """
    def compute(start: int, stop: int) -> dict[str, Any]:
        edits = side.runtime.generate(list(prompts[start:stop]), MAX_EDIT_TOKENS)
        own = predict(side.runtime, items[start:stop], edits)
        judged = own if side is pair.reference else predict(pair.reference.runtime, items[start:stop], edits)
        return {"edits": edits, "own": own, "judged": judged,
                **text_scores(originals[start:stop], edits, pair.reference.runtime)}

    out = pair.cached_batches(side, key, len(items), COUNTERFACTUAL_SUITE.look_items(pair.config),
                              lambda start, stop: params | {"data": dataset_fingerprint(items[start:stop])}, compute)
    flags = np.array([is_degenerate(o, e) for o, e in zip(originals, out["edits"])], dtype=bool)
    texts = degenerate_scores({k: out[k] for k in ("minimality", "similarity", "fluency")}, flags, fluency_worst)
    values = {"self_flip": reaches(targets, out["own"], ~flags),
              "validity": reaches(targets, out["judged"], ~flags & (texts["minimality"] <= MINIMALITY_BOUND)),
              **texts, "degenerate_rate": flags.astype(np.float64)}
    return {metrics[name].name: v for name, v in values.items()}, flags, out["edits"]


def _ecqa_part(pair: "ModelPair", n: int, fluency_worst: float) -> SuiteResult:
    """The ``ecqa_`` metrics: one-step edits of the question toward the next option, with their precondition."""
    questions = task.ecqa_items(pair, n)
    if not questions:
        return not_applicable(SUITE, list(ECQA_METRICS.values()), task.absent(pair, "ecqa"))
    params = {"data": dataset_fingerprint(questions), "templates": stable_hash(ECQA_TEMPLATES),
              "task": task.template_id(pair.tokenizer), "max_tokens": MAX_EDIT_TOKENS,
              "judge": pair.reference.identity, "scoring": SCORING_VERSION}
    values: dict[str, dict[str, np.ndarray]] = {}
    flags: dict[str, np.ndarray] = {}
    notes: dict[str, Any] = {"degenerate_edits": {}, "examples": {}}
    for side in pair.sides:
        answers = task.mcq_predictions(pair, side, len(questions)).predicted
        values[side.role], flags[side.role], edits = _one_step_side(
            pair, side, "counterfactual/ecqa", params, questions,
            [ecqa_edit_prompt(it, int(a)) for it, a in zip(questions, answers)],
            [it.question for it in questions], np.array([ecqa_target(it, int(a)) for it, a in zip(questions, answers)]),
            _ecqa_answers, ECQA_METRICS, fluency_worst)
        notes["degenerate_edits"][f"{side.role}/ecqa"] = f"{int(flags[side.role].sum())}/{len(questions)}"
        notes["examples"][f"{side.role}/ecqa"] = [{"id": it.id, "question": it.question, "edit": e}
                                                  for it, e in zip(questions[:EXAMPLES_IN_NOTES], edits)]
    result = SuiteResult(SUITE, [f"ecqa:{it.id}" for it in questions], values["reference"], values["quantized"],
                         fingerprint={"scoring": SCORING_VERSION,
                                      "ecqa": stable_hash([dataset_fingerprint(questions), ECQA_TEMPLATES])},
                         notes=notes, lost=lost_counts(flags, [ECQA_METRICS[name] for name in (
                             "self_flip", "validity", "minimality", "similarity", "fluency")]))
    tested, settled = competence_items(pair, SUITE, n)
    require_competence(result, "ECQA", task.mcq_predictions(pair, pair.reference, tested).correct,
                       task.ecqa_chance(pair, tested),
                       [ECQA_METRICS["self_flip"], ECQA_METRICS["validity"]], settled)
    return result


def _label_part(pair: "ModelPair", n: int, fluency_worst: float) -> SuiteResult:
    """The ``label_`` metrics: one-step edits of each classification text toward the next label; the precondition."""
    tasks = task.classification_tasks(pair)
    if not tasks:
        return not_applicable(SUITE, list(LABEL_METRICS.values()), task.absent(pair, "classification"))
    items = [t.items(n, pair.config.seed) for t in tasks]
    values: dict[str, dict[str, list[np.ndarray]]] = {"reference": {}, "quantized": {}}
    flags: dict[str, list[np.ndarray]] = {"reference": [], "quantized": []}
    notes: dict[str, Any] = {"degenerate_edits": {}, "examples": {}}
    for t, group in zip(tasks, items):
        params = {"data": dataset_fingerprint(group), "templates": stable_hash(CLASS_TEMPLATES),
                  "task": t.template_id(pair.tokenizer), "max_tokens": MAX_EDIT_TOKENS,
                  "judge": pair.reference.identity, "scoring": SCORING_VERSION}
        for side in pair.sides:
            labels = task.label_predictions(pair, side, t, len(group)).predicted
            targets = (labels + 1) % len(t.labels)
            found, flagged, edits = _one_step_side(
                pair, side, "counterfactual/label", params, group,
                [class_edit_prompt(it, t.labels[y], t.labels[z]) for it, y, z in zip(group, labels, targets)],
                [it.text for it in group], targets,
                lambda runtime, edited, texts, t=t: task.predict_labels(
                    runtime, t, [dataclasses.replace(it, text=e) for it, e in zip(edited, texts)]),
                LABEL_METRICS, fluency_worst)
            for name, per_item in found.items():
                values[side.role].setdefault(name, []).append(per_item)
            flags[side.role].append(flagged)
            notes["degenerate_edits"][f"{side.role}/{t.name}"] = f"{int(flagged.sum())}/{len(group)}"
            notes["examples"][f"{side.role}/{t.name}"] = [{"id": it.id, "text": it.text, "edit": e}
                                                          for it, e in zip(group[:EXAMPLES_IN_NOTES], edits)]
    notes["label_target"] = "next label after the model's own prediction, in the file's label order (cyclic)"
    result = SuiteResult(
        SUITE, task.prefixed_ids(tasks, items),
        *({name: np.concatenate(parts) for name, parts in values[role].items()} for role in ("reference", "quantized")),
        fingerprint={"scoring": SCORING_VERSION, "label": stable_hash(
            [[t.name, dataset_fingerprint(group), t.template_id(pair.tokenizer)] for t, group in zip(tasks, items)]
            + [CLASS_TEMPLATES, MAX_EDIT_TOKENS])},
        notes=notes, lost=lost_counts({role: np.concatenate(f) for role, f in flags.items()}, [
            LABEL_METRICS[name] for name in ("self_flip", "validity", "minimality", "similarity", "fluency")]))
    correct = np.concatenate([task.label_predictions(pair, pair.reference, t, len(g)).correct
                              for t, g in zip(tasks, items)])
    require_competence(result, ", ".join(t.name for t in tasks), correct, task.pooled_chance(tasks, items),
                       [LABEL_METRICS["self_flip"], LABEL_METRICS["validity"]])
    return result


def _esnli_part(pair: "ModelPair", n: int, fluency_worst: float) -> SuiteResult:
    """The e-SNLI metrics: both variants' edits of the hypothesis toward the next label, with their precondition."""
    items = task.esnli_items(pair, n)
    if not items:
        return not_applicable(SUITE, ESNLI_METRICS, task.absent(pair, "esnli"))
    data_hash = dataset_fingerprint(items)
    params = {"data": data_hash, "templates": stable_hash(TEMPLATES), "task": task.template_id(pair.tokenizer),
              "max_tokens": [MAX_EDIT_TOKENS, MAX_WORDS_TOKENS]}
    values: dict[str, dict[str, np.ndarray]] = {}
    degenerate: dict[str, dict[str, np.ndarray]] = {variant: {} for variant in VARIANTS}
    notes: dict[str, Any] = {
        "target": "next label after the model's own prediction: " + " -> ".join((*NLI_LABELS, NLI_LABELS[0])),
        "degenerate_edits": {}, "examples": {},
    }
    for side in pair.sides:
        labels = task.nli_predictions(pair, side, n).predicted
        targets = np.array([target_label(int(y)) for y in labels])
        generated, judged = _generated_and_judged(pair, side, items, labels, params)
        values[side.role] = {}
        for variant, prefix in VARIANTS.items():
            verdict, edits = judged[variant], generated["edits"][variant]
            flags = np.array([is_degenerate(it.hypothesis, e) for it, e in zip(items, edits)])
            degenerate[variant][side.role] = flags
            texts = degenerate_scores({k: verdict[k] for k in ("minimality", "similarity", "fluency")}, flags,
                                      fluency_worst)
            minimal = ~flags & (texts["minimality"] <= MINIMALITY_BOUND)
            values[side.role][prefix + "self_flip"] = reaches(targets, generated["predictions"][variant], ~flags)
            values[side.role][prefix + "validity"] = reaches(targets, verdict["predictions"], minimal)
            for name, per_item in texts.items():
                values[side.role][prefix + name] = per_item
            values[side.role][prefix + "degenerate_rate"] = flags.astype(np.float64)
            notes["degenerate_edits"][f"{side.role}/{variant}"] = f"{int(flags.sum())}/{n}"
            notes["examples"][f"{side.role}/{variant}"] = [
                {"id": it.id, "hypothesis": it.hypothesis, "edit": e} for it, e in zip(items[:EXAMPLES_IN_NOTES], edits)
            ]
    result = SuiteResult(
        SUITE, [item.id for item in items], values["reference"], values["quantized"],
        fingerprint={"data": data_hash, "templates": TEMPLATES["version"],
                     "task_template": task.template_id(pair.tokenizer), "params": stable_hash(params),
                     "scoring": SCORING_VERSION},
        notes=notes,
    )
    for variant, prefix in VARIANTS.items():
        result.lost.update(lost_counts(degenerate[variant], [prefix + name for name in (
            "self_flip", "validity", "minimality", "similarity", "fluency")]))
    tested, settled = competence_items(pair, SUITE, n)
    reference = task.nli_predictions(pair, pair.reference, tested)
    require_competence(result, "e-SNLI", reference.correct, 1 / len(NLI_LABELS), TASK_DEPENDENT, settled)
    return result


def run_counterfactual(pair: "ModelPair") -> SuiteResult:
    """Counterfactual edits of both models: target reached, validity, minimality, similarity, fluency, degeneracy.

    e-SNLI (both variants), ECQA (``ecqa_``) and the run's classification files (``label_``) each fill their own
    metrics; a kind the run has no data of is reported as not applicable.
    """
    n = suite_items(SUITE, pair.config)
    fluency_worst = uniform_log_perplexity(pair.reference.runtime)
    result = combine(SUITE, [_esnli_part(pair, n, fluency_worst), _ecqa_part(pair, n, fluency_worst),
                             _label_part(pair, n, fluency_worst)])
    if result.item_ids:
        result.notes |= {
            "judge": "the reference model, with the task suite's prompt", "fluency_scorer": "the reference model",
            "template_version": f"{TEMPLATES['version']}, {task.NLI_TEMPLATE['version']}, {SCORING_VERSION}",
            "minimality_bound": MINIMALITY_BOUND,
            "degenerate": "edit empty or the edited text's words; scored minimality 1, similarity -1, fluency "
                          f"{fluency_worst:.3f} (log vocabulary size), never a flip nor valid",
        }
    return result


COUNTERFACTUAL_SUITE = register_suite(Suite(
    SUITE,
    "Self-generated counterfactual edits on e-SNLI: label flips (self and FP-judged), minimality, similarity, "
    "fluency.",
    tuple(COUNTERFACTUAL_METRICS), run_counterfactual,
    sizes={"smoke": 16, "standard": 48, "full": 300}, item_cost=8.6,
))
