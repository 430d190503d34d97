"""Self-generated counterfactual examples: does the model's own minimal edit change the label?

Runs on every labelled dataset of the run. Each model sees the item and *its own* predicted label (the task
suite's prediction, shared through the cache) and is asked for a minimal edit of the item's last text (the
hypothesis, or a classification item's text) that would make the label a target label: the next label after its
prediction in the dataset's label order, cyclically (entailment → neutral → contradiction → entailment). Two
variants (versioned templates, greedy, bounded length; few-shot for e-SNLI, zero-shot for classification data):
one step ("Edited hypothesis:" / "Edited text:"), and two steps (first "Words to change:", then the edit of
those words). Per item and variant:

* ``self_flip``: the generating model's prediction (task suite prompt) on the edited input differs from
  its prediction on the original input. Whether the new label is the requested target is reported in
  the notes only: SmolLM2-135M almost never reaches a named target, so that rate carries no signal.
* ``validity``: the same flip judged by the FP reference as a fixed judge (its prediction on the edit
  versus its prediction on the original); on the reference side it equals ``self_flip``.
* ``minimality``: word-level Levenshtein distance between hypothesis and edit, normalised by the longer
  word sequence (rapidfuzz); lower is more minimal.
* ``similarity``: sentence-embedding cosine of hypothesis and edit.
* ``fluency``: log-perplexity (mean token negative log-likelihood) of the edit under the reference model.

A degenerate edit (empty, or the same words as the hypothesis) counts as no flip for ``self_flip`` and
``validity`` and is NaN (not applicable) for the three text metrics, so copying the input can never look
minimal; the number of degenerate edits per side is in the notes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..datasets import dataset_fingerprint
from ..metrics import Metric, SuiteResult, not_applicable, register_metric
from ..profiles import suite_size
from ..storage import stable_hash
from . import task
from .task import LabelTask, label_predictions, option_scores
from .nle import log_perplexity
from .text import pairwise_cosine, token_edit_distance, words

if TYPE_CHECKING:
    from ..models.pair import ModelPair, ModelSide
    from ..runtime import Runtime

SUITE = "counterfactual"

VARIANTS = {"one_step": "", "two_step": "two_step_"}
"""Variant name → metric name prefix."""
MAX_EDIT_TOKENS = 40
MAX_WORDS_TOKENS = 12
EXAMPLES_IN_NOTES = 3

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


CLASS_TEMPLATES: dict[str, Any] = {
    "version": "counterfactual-class-v1",
    "instruction": "Change as few words of the text as possible so that its label becomes the target label.\n\n",
    "words_instruction": "Name the words of the text that must change so that its label becomes the target label."
                         "\n\n",
    "item": "Text: {text}\nLabel: {label}\nTarget: {target}\n",
    "words": "Words to change:",
    "edit": "Edited text:",
}
"""The zero-shot templates for a classification dataset (no demonstrations fit every task)."""


def _metric(name: str, description: str, kind: str, **kwargs: Any) -> dict[str, Metric]:
    """Register one metric for every variant (``two_step_`` prefix for the two-step one)."""
    return {
        variant: register_metric(Metric(SUITE, prefix + name, f"{description} ({variant.replace('_', '-')})",
                                        kind, **kwargs))  # type: ignore[arg-type]
        for variant, prefix in VARIANTS.items()
    }


SELF_FLIP = _metric("self_flip", "Generating model's own label changes on its counterfactual edit", "binary",
                    direction="higher", bounds=(0.0, 1.0), tolerance="abs:0.05")
VALIDITY = _metric("validity", "FP reference's label changes on the counterfactual edit (fixed judge)", "binary",
                   direction="higher", bounds=(0.0, 1.0), tolerance="abs:0.05")
MINIMALITY = _metric("minimality", "Normalised word edit distance between hypothesis and counterfactual",
                     "continuous", direction="lower", bounds=(0.0, 1.0), tolerance="abs:0.05")
SIMILARITY = _metric("similarity", "Sentence-embedding cosine of hypothesis and counterfactual", "continuous",
                     direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.03")
FLUENCY = _metric("fluency", "Log-perplexity of the counterfactual under the reference model", "continuous",
                  direction="lower", bounds=(0.0, None), unit="nats/token", tolerance="abs:0.25")
COUNTERFACTUAL_METRICS: list[Metric] = [
    group[variant] for variant in VARIANTS for group in (SELF_FLIP, VALIDITY, MINIMALITY, SIMILARITY, FLUENCY)
]


# --- templates --------------------------------------------------------------------------------------------

def target_label(label: int, labels: int = 3) -> int:
    """The requested label: the next one in the dataset's label order, cyclically."""
    return (label + 1) % labels


def _item_block(task: LabelTask, item: Any, label: int) -> str:
    """One item: its texts, the model's label and the requested target."""
    names = (task.labels[label], task.labels[target_label(label, len(task.labels))])
    if task.kind == "nli":
        return TEMPLATES["item"].format(premise=item.premise, hypothesis=item.hypothesis, label=names[0],
                                        target=names[1])
    return CLASS_TEMPLATES["item"].format(text=item.text, label=names[0], target=names[1])


def _demo_block(demo: dict[str, str], with_words: bool, with_edit: bool) -> str:
    """A worked e-SNLI-style demonstration, with its words to change and/or its edit."""
    block = TEMPLATES["item"].format(**{k: demo[k] for k in ("premise", "hypothesis", "label", "target")})
    if with_words:
        block += f"{TEMPLATES['words']} {demo['words']}\n"
    if with_edit:
        block += f"{TEMPLATES['edit']} {demo['edit']}\n"
    return block + "\n"


def edit_prompt(task: LabelTask, item: Any, label: int, words_to_change: str | None = None) -> str:
    """The prompt asking for the edit; with ``words_to_change`` it is step two of the two-step variant."""
    two_step = words_to_change is not None
    templates = TEMPLATES if task.kind == "nli" else CLASS_TEMPLATES
    demos = "".join(_demo_block(d, with_words=two_step, with_edit=True) for d in TEMPLATES["demos"]) \
        if task.kind == "nli" else ""
    query = _item_block(task, item, label)
    if two_step:
        query += f"{templates['words']} {words_to_change}\n"
    return templates["instruction"] + demos + query + templates["edit"]


def words_prompt(task: LabelTask, item: Any, label: int) -> str:
    """Step one of the two-step variant: which words of the edited text to change."""
    templates = TEMPLATES if task.kind == "nli" else CLASS_TEMPLATES
    demos = "".join(_demo_block(d, with_words=True, with_edit=False) for d in TEMPLATES["demos"]) \
        if task.kind == "nli" else ""
    return templates["words_instruction"] + demos + _item_block(task, item, label) + templates["words"]


def edited_text(task: LabelTask, item: Any) -> str:
    """The text a counterfactual edits: the item's last one."""
    return task.fields(item)[-1]


# --- per-item formulas ------------------------------------------------------------------------------------

def is_degenerate(hypothesis: str, edit: str) -> bool:
    """An edit that is empty or has exactly the hypothesis's words (case and spacing ignored)."""
    return not words(edit) or words(edit) == words(hypothesis)


def flips(before: np.ndarray, after: np.ndarray, degenerate: np.ndarray) -> np.ndarray:
    """1 where the label changed on a non-degenerate edit, else 0 (a degenerate edit never counts as a flip)."""
    return ((np.asarray(before) != np.asarray(after)) & ~np.asarray(degenerate, dtype=bool)).astype(np.float64)


def text_scores(
    originals: Sequence[str], edits: Sequence[str], degenerate: np.ndarray, scorer: "Runtime"
) -> dict[str, np.ndarray]:
    """Minimality, similarity and fluency per item; NaN for degenerate edits."""
    minimality = np.array([token_edit_distance(h, e) for h, e in zip(originals, edits)])
    similarity = pairwise_cosine(list(originals), list(edits))
    fluency = log_perplexity(scorer, edits)
    scores = {"minimality": minimality, "similarity": similarity, "fluency": fluency}
    for values in scores.values():
        values[np.asarray(degenerate, dtype=bool)] = np.nan
    return scores


# --- model computations -----------------------------------------------------------------------------------

def _predict_edited(runtime: "Runtime", task: LabelTask, items: Sequence[Any], edits: Sequence[str]) -> np.ndarray:
    """The task suite's prediction with each item's last text replaced by its edit."""
    prompts = [task.prompt(runtime.tokenizer, (*task.fields(item)[:-1], edit)) for item, edit in zip(items, edits)]
    return np.argmax(option_scores(runtime, prompts, task.options), axis=1) if prompts else np.zeros(0, dtype=int)


def _generate(side: "ModelSide", task: LabelTask, items: Sequence[Any], labels: np.ndarray) -> dict[str, Any]:
    """Both variants' edits by one model, and that model's predictions on them."""
    runtime = side.runtime
    one_step = runtime.generate([edit_prompt(task, it, int(y)) for it, y in zip(items, labels)], MAX_EDIT_TOKENS)
    chosen = runtime.generate([words_prompt(task, it, int(y)) for it, y in zip(items, labels)], MAX_WORDS_TOKENS)
    two_step = runtime.generate(
        [edit_prompt(task, it, int(y), w) for it, y, w in zip(items, labels, chosen)], MAX_EDIT_TOKENS
    )
    edits = {"one_step": one_step, "two_step": two_step}
    return {
        "edits": edits,
        "words": chosen,
        "predictions": {v: _predict_edited(runtime, task, items, e) for v, e in edits.items()},
    }


def _judge(
    pair: "ModelPair", side: "ModelSide", task: LabelTask, items: Sequence[Any], generated: dict[str, Any]
) -> dict[str, Any]:
    """The FP reference's predictions on a side's edits and the text metrics (scored by the reference)."""
    scorer = pair.reference.runtime
    originals = [edited_text(task, it) for it in items]
    out: dict[str, Any] = {}
    for variant, texts in generated["edits"].items():
        degenerate = np.array([is_degenerate(o, e) for o, e in zip(originals, texts)])
        own = generated["predictions"][variant]  # the reference judging its own edits: already computed
        out[variant] = {
            "predictions": own if side is pair.reference else _predict_edited(scorer, task, items, texts),
            "degenerate": degenerate,
            **text_scores(originals, texts, degenerate, scorer),
        }
    return out


def _task_values(pair: "ModelPair", task: LabelTask, n: int, notes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Both sides' per-item values on one dataset (and its notes)."""
    items = task.items(n, pair.config.seed)
    data_hash = dataset_fingerprint(items)
    templates = TEMPLATES if task.kind == "nli" else CLASS_TEMPLATES
    params = {"data": data_hash, "templates": stable_hash(templates), "task": task.template_id(pair.tokenizer),
              "max_tokens": [MAX_EDIT_TOKENS, MAX_WORDS_TOKENS]}
    judge_labels = label_predictions(pair, pair.reference, task, len(items)).predicted
    values: dict[str, dict[str, Any]] = {"_items": {"items": items, "params": params}}
    for side in pair.sides:
        labels = label_predictions(pair, side, task, len(items)).predicted
        generated = pair.cached(side, "counterfactual", params, lambda: _generate(side, task, items, labels))
        judged = pair.cached(side, "counterfactual/judge", {**params, "judge": pair.reference.identity},
                             lambda: _judge(pair, side, task, items, generated))
        values[side.role] = {}
        for variant, prefix in VARIANTS.items():
            verdict, own = judged[variant], generated["predictions"][variant]
            values[side.role][prefix + "self_flip"] = flips(labels, own, verdict["degenerate"])
            values[side.role][prefix + "validity"] = flips(judge_labels, verdict["predictions"], verdict["degenerate"])
            for name in ("minimality", "similarity", "fluency"):
                values[side.role][prefix + name] = verdict[name]
            key = f"{side.role}/{variant}" if task.kind == "nli" else f"{task.name}/{side.role}/{variant}"
            notes["degenerate"][key] = f"{int(verdict['degenerate'].sum())}/{len(items)}"
            targets = np.array([target_label(int(y), len(task.labels)) for y in labels])
            notes["target_reached"][key] = round(float(((own == targets) & ~verdict["degenerate"]).mean()), 4)
            notes["examples"][key] = [
                {"id": it.id, "text": edited_text(task, it), "edit": e}
                for it, e in zip(items[:EXAMPLES_IN_NOTES], generated["edits"][variant])
            ]
    return values


def run_counterfactual(pair: "ModelPair") -> SuiteResult:
    """Counterfactual edits of both models, with their flip rates, minimality, similarity and fluency."""
    tasks = task.label_tasks(pair)
    if not tasks:
        return not_applicable(SUITE, COUNTERFACTUAL_METRICS, task.no_label_data(pair))
    n = suite_size(SUITE, pair.config.profile, pair.config.samples)
    notes: dict[str, Any] = {
        "judge": "the reference model, with the task suite's prompt", "fluency_scorer": "the reference model",
        "template_version": f"{TEMPLATES['version']}, {CLASS_TEMPLATES['version']}, {task.NLI_TEMPLATE['version']}",
        "target": "next label after the model's own prediction, in the dataset's label order (cyclic)",
        "degenerate": {}, "target_reached": {}, "examples": {},
    }
    parts = [_task_values(pair, t, n, notes) for t in tasks]
    items = [p["_items"]["items"] for p in parts]
    values = {role: {name: np.concatenate([p[role][name] for p in parts]) for name in parts[0][role]}
              for role in ("reference", "quantized")}
    params = [p["_items"]["params"] for p in parts]
    return SuiteResult(
        SUITE, task.item_ids(tasks, items), values["reference"], values["quantized"],
        fingerprint={"data": params[0]["data"] if len(tasks) == 1 else stable_hash([p["data"] for p in params]),
                     "templates": TEMPLATES["version"] if len(tasks) == 1 and tasks[0].kind == "nli"
                     else stable_hash([p["templates"] for p in params]),
                     "task_template": params[0]["task"] if len(tasks) == 1
                     else stable_hash([p["task"] for p in params]),
                     "params": stable_hash(params[0]) if len(tasks) == 1 else stable_hash(params)},
        notes=notes,
    )
