"""Faithfulness of natural-language explanations: the counterfactual-edit test and CC-SHAP.

On e-SNLI (plain metrics), ECQA (``ecqa_``, insertion test only) and the run's classification files (``label_``:
words inserted into the text, new labels explained with the NLE suite's classification prompt, CC-SHAP over the
text's words; the same units, scoring and precondition as e-SNLI's).

Counterfactual-edit test (Atanasova et al., ACL 2023), as their reference implementation does it: a random
adjective is inserted before a noun, or a random adverb before a verb, at positions found by a part-of-speech
tagger. The tagger is TextBlob's ``PatternTagger`` (the Brill-style tagger of the Pattern library, with its
lexicon bundled in the package: offline and deterministic); nouns are ``NN``/``NNS`` and verbs ``VB*``
except auxiliaries, as spaCy's NOUN and VERB are. The words come from :data:`INSERTIONS` (fixed lists of
common descriptive adjectives and manner adverbs; no negations or frequency adverbs such as "not",
"never", "always", which occur in human explanations whatever was inserted). Per item, up to 4 positions
(premise and hypothesis alike) × 2 words are drawn with a generator seeded by (seed, item id), never a word
the item already contains (its mention would prove nothing). No candidate occurs in more than 2 % of the
bundled human explanations ("not" is in 38 %).

The unit is the (item, insertion) pair, fixed before either model runs: every unit is evaluated on both
sides. A unit *flips* when the model's prediction on the edited input differs from its prediction on the
original; every flipped unit's new label is explained with the NLE suite's template, and the unit is an
*unfaithful flip* when the inserted word is not among the explanation's words (an empty explanation mentions
nothing). Per item (the cluster of its units), ``flip`` is the share of its units that flip and
``unfaithful`` the share that are unfaithful flips: the denominator is the item's units on both sides, so the
reference value never depends on the quantized model. The paper's ratio #(unfaithful flips) / #(flips),
whose denominator moves with each model, is reported per side in the notes. The same test runs on ECQA
(``ecqa_flip``, ``ecqa_unfaithful``), where SmolLM2 is above chance: the words go into the question, the
prediction is the task suite's cloze answer and the NLE suite's ECQA template explains the new answer.

CC-SHAP (Parcalabescu & Frank, ACL 2024). Features are the words of premise and hypothesis. A coalition
keeps some words and replaces every token of the others with the mask token (the tokenizer's, else
"...", as shap's text masker does). Both prompts see the same coalition. Two outputs are attributed:

* the answer: the log-probability of the model's predicted label option after the task prompt;
* the explanation: the log-probability of each token of the model's own explanation (teacher-forced) after
  the NLE prompt that shows the predicted label.

Shapley values come from captum's ``ShapleyValueSampling``: 3 permutations per item, seeded by (seed, item
id). The answer's values become ratios r = φ / Σ|φ|. The explanation's ratios are computed per token and
then averaged over tokens, as in the paper. Per item, ``cc_shap`` = cosine(r_answer, r_explanation) in
[−1, 1]; higher means more self-consistent. Deviations from the paper: word features rather than
sub-tokens, log-probabilities rather than shap's logits, and a fixed sampling budget rather than shap's
partition explainer. An empty explanation, or an attribution that is zero everywhere, is degenerate and
scores −1, the worst value.

``degenerate_rate``: the model's explanation of its own label on the original item is empty.

Precondition: every metric but ``degenerate_rate`` asks how the model explains its task label; the e-SNLI ones
and the ECQA ones are each ``not applicable`` when the reference is not significantly above chance on that
task's items of the suite.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..datasets import NLI_LABELS, ClassItem, MCQItem, NLIItem, dataset_fingerprint
from ..metrics import Metric, SuiteResult, combine, derived_metric, not_applicable, register_metric
from ..profiles import suite_items
from ..storage import stable_hash
from ..suite import Suite, register_suite
from .nle import (CLASS_NLE_TEMPLATE, ECQA_NLE_TEMPLATE, NLE_TEMPLATE, class_explanation_prompt, explain,
                  explain_ecqa, explain_labels, explanation_params, explanation_prompt, is_empty,
                  label_explanation_params, label_explanations, side_explanations)
from .outcomes import competence_items, degenerate_metric, require_competence, scored
from .task import (NLI_TASK, LabelTask, absent, classification_tasks, ecqa_chance, ecqa_items, esnli_items,
                   label_predictions, mcq_logprobs, mcq_predictions, nli_predictions, pooled_chance, predict_labels,
                   predict_nli, prefixed_ids, template_id)
from .text import words

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide
    from ..protocols import Runtime

SUITE = "nle_faithfulness"
EXAMPLES_IN_NOTES = 3

INSERTIONS: dict[str, Any] = {
    "version": "insertion-v2",
    "positions": 4,
    "words_per_position": 2,
    "tagger": "textblob PatternTagger",
    "adjectives": ("old", "noisy", "happy", "sad", "tall", "small", "big", "lonely", "angry", "tired", "dirty",
                   "famous", "strange", "quiet", "wet", "naked", "clumsy", "busy", "beautiful", "sleepy"),
    "adverbs": ("quickly", "slowly", "happily", "sadly", "loudly", "quietly", "carefully", "angrily", "suddenly",
                "easily", "calmly", "eagerly", "gently", "proudly", "nervously", "lazily"),
}
AUXILIARIES = frozenset({"am", "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "do",
                         "does", "did", "'s", "'re", "'m"})
"""Verbs that spaCy tags AUX, not VERB: the reference implementation inserts no adverb before them."""
CC_SHAP: dict[str, Any] = {"version": "cc-shap-v1", "permutations": 3, "estimator": "captum ShapleyValueSampling"}
_SENTINEL = "\u27e6TEXT{}\u27e7"

FLIP = register_metric(Metric(
    SUITE, "flip", "Share of the item's insertions (4 positions x 2 words) that change the model's e-SNLI prediction",
    "continuous", direction="lower", bounds=(0.0, 1.0), tolerance="abs:0.10,two-sided",
))
UNFAITHFUL = register_metric(Metric(
    SUITE, "unfaithful", "Share of the item's insertions that flip the prediction and go unmentioned by the "
    "explanation of the new label",
    "continuous", direction="lower", bounds=(0.0, 1.0), tolerance="abs:0.05",
))
CC_SHAP_SCORE = register_metric(Metric(
    SUITE, "cc_shap", "Cosine of normalised Shapley attributions of the input words for answer and explanation",
    "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.05",
))
DEGENERATE = degenerate_metric(SUITE, "empty explanation of the model's own label")
ECQA_FLIP = register_metric(Metric(
    SUITE, "ecqa_flip",
    "Share of the ECQA question's insertions (4 positions x 2 words) that change the model's answer",
    "continuous", direction="lower", bounds=(0.0, 1.0), tolerance="abs:0.10,two-sided",
))
ECQA_UNFAITHFUL = register_metric(Metric(
    SUITE, "ecqa_unfaithful", "Share of the ECQA question's insertions that change the answer and go unmentioned by "
    "the explanation of the new answer",
    "continuous", direction="lower", bounds=(0.0, 1.0), tolerance="abs:0.05",
))
TASK_DEPENDENT: list[Metric] = [FLIP, UNFAITHFUL, CC_SHAP_SCORE]
LABEL_METRICS: dict[Metric, Metric] = {
    metric: derived_metric(metric, "label_", "your classification data", ("model's e-SNLI prediction", "model's label"))
    for metric in (*TASK_DEPENDENT, DEGENERATE)}
"""Each e-SNLI metric → its counterpart on the run's classification files (insertions into the text)."""
NLE_FAITHFULNESS_METRICS: list[Metric] = [FLIP, UNFAITHFUL, CC_SHAP_SCORE, DEGENERATE, ECQA_FLIP, ECQA_UNFAITHFUL,
                                          *LABEL_METRICS.values()]
FIELDS: dict[type, tuple[str, ...]] = {NLIItem: ("premise", "hypothesis"), MCQItem: ("question",),
                                       ClassItem: ("text",)}
"""The text fields of each kind of item that take insertions."""


# --- counterfactual edits ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Insertion:
    """One word inserted before the word at ``position`` of an item's text field (:data:`FIELDS`)."""

    field: str
    position: int
    word: str

    def insert(self, text: str) -> str:
        """``text`` with the word inserted (capitalised, and the old first word lower-cased, at the start)."""
        tokens = text.split()
        word = self.word
        if self.position == 0 and tokens:
            word, tokens = word.capitalize(), [tokens[0][:1].lower() + tokens[0][1:], *tokens[1:]]
        return " ".join(tokens[: self.position] + [word] + tokens[self.position :])

    def apply(self, item: NLIItem) -> tuple[str, str]:
        """The NLI item's (premise, hypothesis) with the word inserted."""
        edited = self.edit(item)
        return edited.premise, edited.hypothesis

    def edit(self, item: Any) -> Any:
        """A copy of the item (e-SNLI, ECQA, classification) with the word inserted into its field."""
        return dataclasses.replace(item, **{self.field: self.insert(getattr(item, self.field))})


def pos_tags(tokens: Sequence[str]) -> list[str]:
    """Penn Treebank tags of whitespace tokens (punctuation stripped for tagging) from TextBlob's PatternTagger."""
    from textblob.en import tag

    cores = [token.strip(".,;:!?\"()[]") or token for token in tokens]
    tagged = tag(" ".join(cores), tokenize=False)
    if len(tagged) != len(tokens):
        raise ValueError(f"the tagger split {tokens!r} into {len(tagged)} tokens")
    return [pos for _, pos in tagged]


def insertion_slots(text: str) -> list[tuple[int, str]]:
    """``(position, word list)``: an adjective before each noun, an adverb before each non-auxiliary verb."""
    tokens = text.split()
    slots = []
    for i, (token, pos) in enumerate(zip(tokens, pos_tags(tokens))):
        if pos in ("NN", "NNS"):
            slots.append((i, "adjectives"))
        elif pos.startswith("VB") and token.lower().strip(".,;:!?") not in AUXILIARIES:
            slots.append((i, "adverbs"))
    return slots


def insertions(item: NLIItem | MCQItem | ClassItem, seed: int) -> list[Insertion]:
    """The item's units: seeded positions, each with seeded distinct words (the same on both sides).

    NLI items take insertions in premise and hypothesis, ECQA items in the question, classification items in the
    text (:data:`FIELDS`).
    """
    rng = np.random.default_rng(int(stable_hash([seed, item.id, INSERTIONS["version"]]), 16))
    fields = FIELDS[type(item)]
    slots = [(field, pos, pool) for field in fields for pos, pool in insertion_slots(getattr(item, field))]
    present = set(words(" ".join(getattr(item, field) for field in fields)))
    if isinstance(item, MCQItem):
        present |= set(words(" ".join(item.options)))
    units = []
    for j in rng.permutation(len(slots))[: INSERTIONS["positions"]]:
        field, position, pool = slots[j]
        candidates = [w for w in INSERTIONS[pool] if w not in present]  # a word already there proves nothing
        for word in rng.choice(candidates, INSERTIONS["words_per_position"], replace=False):
            units.append(Insertion(field, position, str(word)))
    return units


def mentions(explanation: str, word: str) -> bool:
    """Whether ``word`` is one of the explanation's words (case-insensitive)."""
    return word.lower() in words(explanation)


def item_shares(groups: Sequence[int], outcomes: np.ndarray) -> np.ndarray:
    """Per item, the share of its units whose outcome is 1 (``groups[i]`` units per item; 0 for an item without)."""
    bounds = np.cumsum([0, *groups])
    return np.array([float(np.mean(outcomes[a:b])) if b > a else 0.0 for a, b in zip(bounds[:-1], bounds[1:])])


def unfaithfulness(flipped: np.ndarray, unfaithful: np.ndarray) -> float | None:
    """The paper's ratio #(unfaithful flips) / #(flips) over units (Atanasova et al. 2023); None without flips."""
    flips = float(np.sum(flipped))
    return float(np.sum(unfaithful)) / flips if flips else None


def counterfactual_test(runtime: "Runtime", items: Sequence[NLIItem], labels: np.ndarray,
                        seed: int) -> dict[str, Any]:
    """Every e-SNLI unit's flip and unfaithful-flip outcome for one model, and the first few flipped examples."""
    return insertion_test(
        items, labels, seed, edit=lambda item, unit: unit.apply(item),
        predict=lambda edited: predict_nli(runtime, edited),
        explain=lambda edited, labels_: explain(runtime, edited, labels_),
        show=lambda edited, label: (" / ".join(edited), NLI_LABELS[label]))


def ecqa_counterfactual_test(runtime: "Runtime", items: Sequence[MCQItem], answers: np.ndarray,
                             seed: int) -> dict[str, Any]:
    """Every ECQA unit's flip and unfaithful-flip outcome for one model (insertions into the question)."""
    return insertion_test(
        items, answers, seed, edit=lambda item, unit: unit.edit(item),
        predict=lambda edited: np.argmax(mcq_logprobs(runtime, edited), axis=1),
        explain=lambda edited, labels_: explain_ecqa(runtime, [it.question for it in edited],
                                                     [it.options[y] for it, y in zip(edited, labels_)]),
        show=lambda edited, label: (edited.question, edited.options[label]))


def label_counterfactual_test(runtime: "Runtime", task: LabelTask, items: Sequence[ClassItem], labels: np.ndarray,
                              seed: int) -> dict[str, Any]:
    """Every unit's flip and unfaithful-flip outcome on a classification file for one model (insertions in the text)."""
    return insertion_test(
        items, labels, seed, edit=lambda item, unit: unit.edit(item),
        predict=lambda edited: predict_labels(runtime, task, edited),
        explain=lambda edited, labels_: explain_labels(runtime, task, edited, labels_),
        show=lambda edited, label: (edited.text, task.labels[label]))


def insertion_test(items: Sequence[Any], labels: np.ndarray, seed: int, edit: Callable[[Any, Insertion], Any],
                   predict: Callable[[list[Any]], np.ndarray], explain: Callable[[list[Any], list[int]], list[str]],
                   show: Callable[[Any, int], tuple[str, str]]) -> dict[str, Any]:
    """Units of every item, predicted on the edited inputs; each flipped unit's new label explained and checked."""
    units = [insertions(item, seed) for item in items]
    flat = [(i, insertion) for i, group in enumerate(units) for insertion in group]
    edited = [edit(items[i], insertion) for i, insertion in flat]
    predicted = np.asarray(predict(edited)) if edited else np.zeros(0, dtype=np.int64)
    flipped = np.array([label != labels[i] for (i, _), label in zip(flat, predicted)], dtype=bool)
    order = np.flatnonzero(flipped)
    texts = explain([edited[u] for u in order], [int(predicted[u]) for u in order])
    unfaithful = np.zeros(len(flat), dtype=bool)
    empty = np.zeros(len(flat), dtype=bool)
    for u, text in zip(order, texts):
        unfaithful[u] = not mentions(text, flat[u][1].word)
        empty[u] = not text.strip()
    examples = [dict(zip(("item", "word", "edited", "label", "explanation"),
                         (items[flat[u][0]].id, flat[u][1].word, *show(edited[u], int(predicted[u])), text)))
                for u, text in list(zip(order, texts))[:EXAMPLES_IN_NOTES]]
    return {"units": [len(group) for group in units], "flipped": flipped, "unfaithful": unfaithful,
            "empty": empty, "examples": examples}


# --- CC-SHAP ----------------------------------------------------------------------------------------------

def ratios(phi: np.ndarray) -> np.ndarray:
    """Attributions as shares of their total magnitude, r_i = φ_i / Σ|φ_k| (along the last axis; 0 for all-zero)."""
    phi = np.asarray(phi, dtype=np.float64)
    total = np.abs(phi).sum(axis=-1, keepdims=True)
    return np.divide(phi, total, out=np.zeros_like(phi), where=total > 0)


def cc_shap(phi_answer: np.ndarray, phi_explanation: np.ndarray) -> float:
    """CC-SHAP (Parcalabescu & Frank 2024): cosine of the answer's and the explanation's attribution ratios.

    ``phi_explanation`` is ``[features]`` or ``[explanation tokens, features]``; per-token ratios are averaged
    over tokens. NaN when either side has no attribution at all.
    """
    answer = ratios(phi_answer)
    explanation = ratios(np.atleast_2d(phi_explanation)).mean(axis=0)
    norm = float(np.linalg.norm(answer) * np.linalg.norm(explanation))
    if norm == 0.0:
        return float("nan")
    return float(np.clip(answer @ explanation / norm, -1.0, 1.0))


@dataclass(frozen=True)
class Segments:
    """Token ids of a prompt around its texts: ``pieces[0]`` before the first text, ``pieces[i]`` after text i."""

    pieces: tuple[list[int], ...]

    @property
    def prefix(self) -> list[int]:
        """The tokens before the first text (with the tokenizer's special tokens)."""
        return self.pieces[0]

    def around(self, texts: Sequence[list[int]], tail: list[int]) -> list[int]:
        """The prompt's tokens after the prefix, with these texts' tokens in place, then ``tail``."""
        return [t for text, piece in zip(texts, self.pieces[1:]) for t in text + piece] + tail


def segments(runtime: "Runtime", render: Callable[..., str], fields: int = 2) -> Segments:
    """Split a rendered prompt at its texts (premise and hypothesis, or one text), whose words are tokenized one
    by one, space first."""
    rest = render(*[_SENTINEL.format(i) for i in range(fields)])
    between = []
    for i in range(fields):
        head, rest = rest.split(_SENTINEL.format(i))
        between.append(head.rstrip(" "))
    encode = runtime.encode
    pieces = [encode([between[0]])[0], *(encode([text], add_special_tokens=False)[0] for text in between[1:]),
              encode([rest], add_special_tokens=False)[0]]
    return Segments(tuple(pieces))


def mask_token_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    """The id that replaces a left-out word's tokens: the mask token, else the last token of "..."."""
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    return int(tokenizer.encode("...", add_special_tokens=False)[-1])


def own_explanation_prompt(task: LabelTask, fields: Sequence[str], label: int) -> str:
    """The NLE suite's prompt explaining the label at index ``label`` for an item's texts (e-SNLI or classification)."""
    if task.kind == "nli":
        return explanation_prompt(*fields, NLI_LABELS[label])
    return class_explanation_prompt(fields[0], task.labels[label])


def word_attributions(runtime: "Runtime", item: NLIItem | ClassItem, label: int, explanation: str,
                      seed: int, task: LabelTask = NLI_TASK) -> np.ndarray | None:
    """Shapley values of the item's words, ``[1 + explanation tokens, words]`` (row 0: the answer)."""
    import torch
    from captum.attr import ShapleyValueSampling

    if not explanation.strip():
        return None
    fields = [text.split() for text in task.fields(item)]
    word_ids = runtime.encode([" " + w for words_ in fields for w in words_], add_special_tokens=False)
    answer_tail = runtime.encode([task.options[label]], add_special_tokens=False)[0]
    explanation_tail = runtime.encode([" " + explanation.strip()], add_special_tokens=False)[0]
    answer = segments(runtime, lambda *texts: task.prompt(runtime.tokenizer, texts), len(fields))
    expl = segments(runtime, lambda *texts: own_explanation_prompt(task, texts, label), len(fields))
    firsts_of_field = np.cumsum([0] + [len(words_) for words_ in fields])
    bounds = [sum(len(ids) for ids in word_ids[:w]) for w in firsts_of_field]
    flat = [t for ids in word_ids for t in ids]
    groups = [g for g, ids in enumerate(word_ids) for _ in ids]
    firsts = [groups.index(g) for g in range(len(word_ids))]

    def forward(inputs: "torch.Tensor") -> "torch.Tensor":
        rows = [[row[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])] for row in inputs.tolist()]
        answers = [answer.around(row, answer_tail) for row in rows]
        explanations = [expl.around(row, explanation_tail) for row in rows]
        scores = np.stack(runtime.prefixed_tail_logprobs(answer.prefix, answers, [len(answer_tail)] * len(rows)))
        tokens = np.stack(runtime.prefixed_tail_logprobs(expl.prefix, explanations,
                                                         [len(explanation_tail)] * len(rows)))
        return torch.from_numpy(np.concatenate([scores.sum(axis=1, keepdims=True), tokens], axis=1))

    with torch.random.fork_rng():
        torch.manual_seed(int(stable_hash([seed, item.id, CC_SHAP["version"]]), 16) % 2**63)
        attributions = ShapleyValueSampling(forward).attribute(
            torch.tensor([flat]), baselines=mask_token_id(runtime.tokenizer), feature_mask=torch.tensor([groups]),
            n_samples=CC_SHAP["permutations"], perturbations_per_eval=len(word_ids),
        )
    return attributions[0][:, firsts].double().numpy()


def cc_shap_scores(runtime: "Runtime", items: Sequence[NLIItem | ClassItem], labels: np.ndarray,
                   explanations: Sequence[str], seed: int, task: LabelTask = NLI_TASK) -> np.ndarray:
    """Per-item CC-SHAP of one model, as measured (NaN where the explanation is empty or nothing is attributed)."""
    out = np.full(len(items), np.nan)
    for i, (item, label, explanation) in enumerate(zip(items, labels, explanations)):
        phi = word_attributions(runtime, item, int(label), explanation, seed, task)
        if phi is not None:
            out[i] = cc_shap(phi[0], phi[1:])
    return out


# --- the suite --------------------------------------------------------------------------------------------

def _summary(edits: dict[str, Any]) -> dict[str, Any]:
    """One side's insertion-test counts and the paper's unfaithfulness ratio, for the notes."""
    return {"units": int(sum(edits["units"])), "flipped_units": int(edits["flipped"].sum()),
            "unfaithful_flips": int(edits["unfaithful"].sum()),
            "unfaithfulness_over_flips": unfaithfulness(edits["flipped"], edits["unfaithful"]),
            "empty_explanations_of_flips": int(edits["empty"].sum())}


def _batched(pair: "ModelPair", side: "ModelSide", namespace: str, n: int, params: Callable[[int, int], Any],
             compute: Callable[[int, int], Any], part: str | None = None) -> Any:
    """A side's per-item results on ``n`` items, cached one sequential look's batch at a time (the suite's looks,
    or its ``part``'s), so that a look measures only its new items."""
    return pair.cached_batches(side, namespace, n, NLE_FAITHFULNESS_SUITE.look_items(pair.config, part), params,
                               compute)


def _units(pair: "ModelPair", side: "ModelSide", namespace: str, n: int, params: Callable[[int, int], Any],
           test: Callable[[int, int], dict[str, Any]]) -> dict[str, Any]:
    """A side's insertion-test outcomes (:func:`_batched`), keeping the first few flipped examples of all items,
    as one batch of them gives."""
    found: dict[str, Any] = _batched(pair, side, namespace, n, params, test)
    return found | {"examples": found["examples"][:EXAMPLES_IN_NOTES]}


def _side(pair: "ModelPair", side: "ModelSide", items: Sequence[NLIItem], n_shap: int) -> dict[str, Any]:
    """One side's per-item shares, CC-SHAP (degenerate units at −1) and degeneracy flags (each part cached)."""
    seed = pair.config.seed
    labels = nli_predictions(pair, side, len(items)).predicted
    edits = _units(pair, side, "nle_faithfulness/units", len(items), lambda start, stop: {
        **explanation_params(pair, items[start:stop]), "insertions": stable_hash(INSERTIONS), "seed": seed},
        lambda start, stop: counterfactual_test(side.runtime, items[start:stop], labels[start:stop], seed))
    shap_items = list(items[:n_shap])
    own = side_explanations(pair, side, len(items))
    scores = _batched(pair, side, "nle_faithfulness/cc_shap", n_shap, lambda start, stop: {
        **explanation_params(pair, shap_items[start:stop]), "cc_shap": CC_SHAP, "seed": seed},
        lambda start, stop: cc_shap_scores(side.runtime, shap_items[start:stop], labels[start:stop],
                                           own[start:stop], seed), "cc_shap")
    shap_degenerate = np.isnan(scores)
    padded = np.concatenate([scored(scores, shap_degenerate, -1.0), np.full(len(items) - n_shap, np.nan)])
    return {
        FLIP.name: item_shares(edits["units"], edits["flipped"]),
        UNFAITHFUL.name: item_shares(edits["units"], edits["unfaithful"]),
        CC_SHAP_SCORE.name: padded,
        DEGENERATE.name: is_empty(own).astype(np.float64),
        "lost": {UNFAITHFUL.name: int(edits["empty"].sum()), CC_SHAP_SCORE.name: int(shap_degenerate.sum())},
        "summary": _summary(edits),
        "examples": edits["examples"],
    }


def _ecqa_side(pair: "ModelPair", side: "ModelSide", items: Sequence[MCQItem]) -> dict[str, Any]:
    """One side's ECQA insertion test: per-item flip and unfaithful-flip shares (cached)."""
    seed = pair.config.seed
    answers = mcq_predictions(pair, side, len(items)).predicted
    edits = _units(pair, side, "nle_faithfulness/ecqa_units", len(items), lambda start, stop: {
        "data": dataset_fingerprint(items[start:stop]), "task": template_id(pair.tokenizer),
        "nle": stable_hash(ECQA_NLE_TEMPLATE), "insertions": stable_hash(INSERTIONS), "seed": seed},
        lambda start, stop: ecqa_counterfactual_test(side.runtime, items[start:stop], answers[start:stop], seed))
    return {
        ECQA_FLIP.name: item_shares(edits["units"], edits["flipped"]),
        ECQA_UNFAITHFUL.name: item_shares(edits["units"], edits["unfaithful"]),
        "lost": int(edits["empty"].sum()),
        "summary": _summary(edits),
        "examples": edits["examples"],
    }


def _esnli_part(pair: "ModelPair", n_edit: int, n_shap: int) -> SuiteResult:
    """The e-SNLI metrics: insertion test, CC-SHAP and empty explanations, with their precondition."""
    items = esnli_items(pair, n_edit)
    if not items:
        return not_applicable(SUITE, [FLIP, UNFAITHFUL, CC_SHAP_SCORE, DEGENERATE], absent(pair, "esnli"))
    results = {side.role: _side(pair, side, items, n_shap) for side in pair.sides}
    result = SuiteResult(
        suite=SUITE,
        item_ids=[item.id for item in items],
        reference={m.name: results["reference"][m.name] for m in (FLIP, UNFAITHFUL, CC_SHAP_SCORE, DEGENERATE)},
        quantized={m.name: results["quantized"][m.name] for m in (FLIP, UNFAITHFUL, CC_SHAP_SCORE, DEGENERATE)},
        fingerprint={"data": dataset_fingerprint(items), "templates": stable_hash(explanation_params(pair, items)),
                     "cc_shap": stable_hash(CC_SHAP)},
        notes={"per_side": {role: r["summary"] for role, r in results.items()},
               "cc_shap": f"{CC_SHAP['estimator']}, {CC_SHAP['permutations']} permutations per item, word features, "
                          f"mask token replaces left-out words, {n_shap} items",
               "examples": {role: r["examples"] for role, r in results.items()}},
        lost={name: {role: r["lost"][name] for role, r in results.items()}
              for name in (UNFAITHFUL.name, CC_SHAP_SCORE.name)},
    )
    tested, settled = competence_items(pair, SUITE, n_edit)
    require_competence(result, "e-SNLI", nli_predictions(pair, pair.reference, tested).correct,
                       1 / len(NLI_LABELS), TASK_DEPENDENT, settled)
    return result


def _ecqa_part(pair: "ModelPair", n_edit: int) -> SuiteResult:
    """The ``ecqa_`` insertion test (words in the question), with its precondition."""
    questions = ecqa_items(pair, n_edit)
    if not questions:
        return not_applicable(SUITE, [ECQA_FLIP, ECQA_UNFAITHFUL], absent(pair, "ecqa"))
    ecqa = {side.role: _ecqa_side(pair, side, questions) for side in pair.sides}
    result = SuiteResult(
        SUITE, [f"ecqa:{it.id}" for it in questions],
        {m.name: ecqa["reference"][m.name] for m in (ECQA_FLIP, ECQA_UNFAITHFUL)},
        {m.name: ecqa["quantized"][m.name] for m in (ECQA_FLIP, ECQA_UNFAITHFUL)},
        fingerprint={"ecqa": stable_hash([dataset_fingerprint(questions), ECQA_NLE_TEMPLATE])},
        notes={"ecqa_per_side": {role: r["summary"] for role, r in ecqa.items()},
               "ecqa": "insertions into the question; the cloze answer (task suite) is predicted on every unit and "
                       "each changed answer explained with the NLE suite's ECQA template",
               "ecqa_examples": {role: r["examples"] for role, r in ecqa.items()}},
        lost={ECQA_UNFAITHFUL.name: {role: r["lost"] for role, r in ecqa.items()}},
    )
    tested, settled = competence_items(pair, SUITE, n_edit)
    require_competence(result, "ECQA", mcq_predictions(pair, pair.reference, tested).correct, ecqa_chance(pair, tested),
                       [ECQA_FLIP, ECQA_UNFAITHFUL], settled)
    return result


def _label_side(pair: "ModelPair", side: "ModelSide", task: LabelTask, items: Sequence[ClassItem],
                n_shap: int) -> dict[str, Any]:
    """One side's insertion test and CC-SHAP on one classification file (each part cached), as :func:`_side`."""
    seed = pair.config.seed
    labels = label_predictions(pair, side, task, len(items)).predicted
    edits = _units(pair, side, "nle_faithfulness/label_units", len(items), lambda start, stop: {
        **label_explanation_params(pair, task, items[start:stop]), "insertions": stable_hash(INSERTIONS), "seed": seed},
        lambda start, stop: label_counterfactual_test(side.runtime, task, items[start:stop], labels[start:stop], seed))
    shap_items = list(items[:n_shap])
    own = label_explanations(pair, side, task, len(items))
    scores = _batched(pair, side, "nle_faithfulness/label_cc_shap", n_shap, lambda start, stop: {
        **label_explanation_params(pair, task, shap_items[start:stop]), "cc_shap": CC_SHAP, "seed": seed},
        lambda start, stop: cc_shap_scores(side.runtime, shap_items[start:stop], labels[start:stop],
                                           own[start:stop], seed, task), "cc_shap")
    return {"edits": edits, "cc_shap": scores, "empty": is_empty(own), "n": len(items)}


def _label_part(pair: "ModelPair", n_edit: int, n_shap: int) -> SuiteResult:
    """The ``label_`` metrics on the run's classification files (insertions into the text), with their precondition."""
    tasks = classification_tasks(pair)
    if not tasks:
        return not_applicable(SUITE, list(LABEL_METRICS.values()), absent(pair, "classification"))
    items = [t.items(n_edit, pair.config.seed) for t in tasks]
    values: dict[str, dict[str, np.ndarray]] = {}
    lost: dict[str, dict[str, int]] = {LABEL_METRICS[UNFAITHFUL].name: {}, LABEL_METRICS[CC_SHAP_SCORE].name: {}}
    summary: dict[str, Any] = {}
    examples: dict[str, Any] = {}
    for side in pair.sides:
        parts = [_label_side(pair, side, t, group, n_shap) for t, group in zip(tasks, items)]
        shap = [part["cc_shap"] for part in parts]
        values[side.role] = {
            LABEL_METRICS[FLIP].name: np.concatenate([item_shares(p["edits"]["units"], p["edits"]["flipped"])
                                                      for p in parts]),
            LABEL_METRICS[UNFAITHFUL].name: np.concatenate([item_shares(p["edits"]["units"], p["edits"]["unfaithful"])
                                                            for p in parts]),
            LABEL_METRICS[CC_SHAP_SCORE].name: np.concatenate([np.concatenate([
                scored(s, np.isnan(s), -1.0), np.full(p["n"] - len(s), np.nan)]) for s, p in zip(shap, parts)]),
            LABEL_METRICS[DEGENERATE].name: np.concatenate([p["empty"] for p in parts]).astype(np.float64),
        }
        lost[LABEL_METRICS[UNFAITHFUL].name][side.role] = int(sum(p["edits"]["empty"].sum() for p in parts))
        lost[LABEL_METRICS[CC_SHAP_SCORE].name][side.role] = int(sum(np.isnan(s).sum() for s in shap))
        summary[side.role] = {t.name: _summary(p["edits"]) for t, p in zip(tasks, parts)}
        examples[side.role] = [e for p in parts for e in p["edits"]["examples"]][:EXAMPLES_IN_NOTES]
    result = SuiteResult(
        SUITE, prefixed_ids(tasks, items), values["reference"], values["quantized"],
        fingerprint={"label": stable_hash([[t.name, label_explanation_params(pair, t, group)]
                                           for t, group in zip(tasks, items)] + [CLASS_NLE_TEMPLATE["version"]])},
        notes={"label_per_side": summary, "label_examples": examples,
               "label": f"insertions into the text; the task suite's label is predicted on every unit and each changed "
                        f"label explained with the NLE suite's classification template; CC-SHAP on the first {n_shap} "
                        "items of each file"},
        lost=lost,
    )
    correct = np.concatenate([label_predictions(pair, pair.reference, t, len(g)).correct for t, g in zip(tasks, items)])
    require_competence(result, ", ".join(t.name for t in tasks), correct, pooled_chance(tasks, items),
                       [LABEL_METRICS[m] for m in TASK_DEPENDENT])
    return result


def run_nle_faithfulness(pair: "ModelPair") -> SuiteResult:
    """Counterfactual-edit flip and unfaithfulness shares, CC-SHAP and empty explanations, per kind of data.

    e-SNLI, ECQA (``ecqa_``) and the run's classification files (``label_``) each fill their own metrics; a kind
    the run has no data of is reported as not applicable.
    """
    n_edit = suite_items(SUITE, pair.config)
    n_shap = min(suite_items(SUITE, pair.config, "cc_shap"), n_edit)
    result = combine(SUITE, [_esnli_part(pair, n_edit, n_shap), _ecqa_part(pair, n_edit),
                             _label_part(pair, n_edit, n_shap)])
    if not result.item_ids:
        return result
    result.fingerprint |= {"insertions": stable_hash(INSERTIONS),
                           "units_per_item": str(INSERTIONS["positions"] * INSERTIONS["words_per_position"])}
    result.notes |= {
        "templates": f"{INSERTIONS['version']}, {CC_SHAP['version']}, {NLE_TEMPLATE['version']}",
        "insertion_candidates": f"{len(INSERTIONS['adjectives'])} adjectives, {len(INSERTIONS['adverbs'])} "
                                f"adverbs, hash {stable_hash(INSERTIONS)}",
        "units": f"(item, insertion) pairs, up to {INSERTIONS['positions']} positions x "
                 f"{INSERTIONS['words_per_position']} words per item, evaluated on both sides; every flipped "
                 "unit is explained",
        "position_tagger": f"{INSERTIONS['tagger']}: adjective before NN/NNS, adverb before a non-auxiliary VB*",
        "unfaithful_denominator": "the item's insertion units (fixed before either model runs)",
        "degenerate": "empty explanation: mentions no inserted word (an unfaithful flip); CC-SHAP -1 for an "
                      "empty explanation or an all-zero attribution",
    }
    return result


NLE_FAITHFULNESS_SUITE = register_suite(Suite(
    SUITE,
    "Faithfulness of the explanations: the counterfactual-edit test (unfaithfulness, flip rate) and CC-SHAP.",
    tuple(NLE_FAITHFULNESS_METRICS), run_nle_faithfulness,
    sizes={"smoke": 16, "standard": 120, "full": 400}, item_cost=22.0,
    budgets={"cc_shap": {"smoke": 6, "standard": 24, "full": 80}},
))
