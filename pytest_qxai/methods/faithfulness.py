"""Faithfulness of natural-language explanations on e-SNLI: the counterfactual-edit test and CC-SHAP.

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

from ..datasets import NLI_LABELS, MCQItem, NLIItem, dataset_fingerprint
from ..metrics import Metric, SuiteResult, not_applicable, register_metric
from ..profiles import suite_size
from ..storage import stable_hash
from ..suite import Suite, register_suite
from .nle import (ECQA_NLE_TEMPLATE, NLE_TEMPLATE, explain, explain_ecqa, explanation_params, explanation_prompt,
                  is_empty, side_explanations)
from .outcomes import degenerate_metric, require_competence, scored
from .task import (NLI_TEMPLATE, ecqa_items, esnli_items, lacks, mcq_logprobs, mcq_predictions, nli_predictions,
                   nli_prompt, predict_nli, template_id)
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
_SENTINELS = ("\u27e6PREMISE\u27e7", "\u27e6HYPOTHESIS\u27e7")

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
NLE_FAITHFULNESS_METRICS: list[Metric] = [FLIP, UNFAITHFUL, CC_SHAP_SCORE, DEGENERATE, ECQA_FLIP, ECQA_UNFAITHFUL]
TASK_DEPENDENT: list[Metric] = [FLIP, UNFAITHFUL, CC_SHAP_SCORE]


# --- counterfactual edits ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Insertion:
    """One word inserted before the word at ``position`` of an item's text field (premise, hypothesis, question)."""

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
        edited = self.insert(getattr(item, self.field))
        return (edited, item.hypothesis) if self.field == "premise" else (item.premise, edited)

    def ask(self, item: MCQItem) -> MCQItem:
        """The ECQA item with the word inserted into its question."""
        return dataclasses.replace(item, question=self.insert(item.question))


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


def insertions(item: NLIItem | MCQItem, seed: int) -> list[Insertion]:
    """The item's units: seeded positions, each with seeded distinct words (the same on both sides).

    NLI items take insertions in premise and hypothesis, ECQA items in the question.
    """
    rng = np.random.default_rng(int(stable_hash([seed, item.id, INSERTIONS["version"]]), 16))
    fields = ("question",) if isinstance(item, MCQItem) else ("premise", "hypothesis")
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
        items, answers, seed, edit=lambda item, unit: unit.ask(item),
        predict=lambda edited: np.argmax(mcq_logprobs(runtime, edited), axis=1),
        explain=lambda edited, labels_: explain_ecqa(runtime, [it.question for it in edited],
                                                     [it.options[y] for it, y in zip(edited, labels_)]),
        show=lambda edited, label: (edited.question, edited.options[label]))


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
    """Token ids of a prompt around its premise and hypothesis words."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]


def segments(runtime: "Runtime", render: Callable[[str, str], str]) -> Segments:
    """Split a rendered prompt at the premise and hypothesis (their words are tokenized one by one, space first)."""
    text = render(*_SENTINELS)
    head, rest = text.split(_SENTINELS[0])
    middle, tail = rest.split(_SENTINELS[1])
    encode = runtime.encode
    return Segments(encode([head.rstrip(" ")])[0], encode([middle.rstrip(" ")], add_special_tokens=False)[0],
                    encode([tail], add_special_tokens=False)[0])


def mask_token_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    """The id that replaces a left-out word's tokens: the mask token, else the last token of "..."."""
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    return int(tokenizer.encode("...", add_special_tokens=False)[-1])


def word_attributions(runtime: "Runtime", item: NLIItem, label: int, explanation: str,
                      seed: int) -> np.ndarray | None:
    """Shapley values of the item's words, ``[1 + explanation tokens, words]`` (row 0: the answer)."""
    import torch
    from captum.attr import ShapleyValueSampling

    if not explanation.strip():
        return None
    premise, hypothesis = item.premise.split(), item.hypothesis.split()
    word_ids = runtime.encode([" " + w for w in premise + hypothesis], add_special_tokens=False)
    answer_tail = runtime.encode([NLI_TEMPLATE["options"][label]], add_special_tokens=False)[0]
    explanation_tail = runtime.encode([" " + explanation.strip()], add_special_tokens=False)[0]
    answer = segments(runtime, lambda p, h: nli_prompt(runtime.tokenizer, p, h))
    expl = segments(runtime, lambda p, h: explanation_prompt(p, h, NLI_LABELS[label]))
    split = sum(len(ids) for ids in word_ids[: len(premise)])
    flat = [t for ids in word_ids for t in ids]
    groups = [g for g, ids in enumerate(word_ids) for _ in ids]
    firsts = [groups.index(g) for g in range(len(word_ids))]

    def forward(inputs: "torch.Tensor") -> "torch.Tensor":
        rows = inputs.tolist()
        answers = [r[:split] + answer.middle + r[split:] + answer.suffix + answer_tail for r in rows]
        explanations = [r[:split] + expl.middle + r[split:] + expl.suffix + explanation_tail for r in rows]
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


def cc_shap_scores(runtime: "Runtime", items: Sequence[NLIItem], labels: np.ndarray,
                   explanations: Sequence[str], seed: int) -> np.ndarray:
    """Per-item CC-SHAP of one model, as measured (NaN where the explanation is empty or nothing is attributed)."""
    out = np.full(len(items), np.nan)
    for i, (item, label, explanation) in enumerate(zip(items, labels, explanations)):
        phi = word_attributions(runtime, item, int(label), explanation, seed)
        if phi is not None:
            out[i] = cc_shap(phi[0], phi[1:])
    return out


# --- the suite --------------------------------------------------------------------------------------------

def _side(pair: "ModelPair", side: "ModelSide", items: Sequence[NLIItem], n_shap: int) -> dict[str, Any]:
    """One side's per-item shares, CC-SHAP (degenerate units at −1) and degeneracy flags (each part cached)."""
    seed = pair.config.seed
    labels = nli_predictions(pair, side, len(items)).predicted
    base = explanation_params(pair, items)
    edits = pair.cached(side, "nle_faithfulness/units",
                        {**base, "insertions": stable_hash(INSERTIONS), "seed": seed},
                        lambda: counterfactual_test(side.runtime, items, labels, seed))
    shap_items = list(items[:n_shap])
    own = side_explanations(pair, side, len(items))
    scores = pair.cached(side, "nle_faithfulness/cc_shap",
                         {**explanation_params(pair, shap_items), "cc_shap": CC_SHAP, "seed": seed},
                         lambda: cc_shap_scores(side.runtime, shap_items, labels[:n_shap], own[:n_shap], seed))
    shap_degenerate = np.isnan(scores)
    padded = np.concatenate([scored(scores, shap_degenerate, -1.0), np.full(len(items) - n_shap, np.nan)])
    return {
        FLIP.name: item_shares(edits["units"], edits["flipped"]),
        UNFAITHFUL.name: item_shares(edits["units"], edits["unfaithful"]),
        CC_SHAP_SCORE.name: padded,
        DEGENERATE.name: is_empty(own).astype(np.float64),
        "lost": {UNFAITHFUL.name: int(edits["empty"].sum()), CC_SHAP_SCORE.name: int(shap_degenerate.sum())},
        "summary": {"units": int(sum(edits["units"])), "flipped_units": int(edits["flipped"].sum()),
                    "unfaithful_flips": int(edits["unfaithful"].sum()),
                    "unfaithfulness_over_flips": unfaithfulness(edits["flipped"], edits["unfaithful"]),
                    "empty_explanations_of_flips": int(edits["empty"].sum())},
        "examples": edits["examples"],
    }


def _ecqa_side(pair: "ModelPair", side: "ModelSide", items: Sequence[MCQItem]) -> dict[str, Any]:
    """One side's ECQA insertion test: per-item flip and unfaithful-flip shares (cached)."""
    seed = pair.config.seed
    answers = mcq_predictions(pair, side, len(items)).predicted
    params = {"data": dataset_fingerprint(items), "task": template_id(pair.tokenizer),
              "nle": stable_hash(ECQA_NLE_TEMPLATE), "insertions": stable_hash(INSERTIONS), "seed": seed}
    edits = pair.cached(side, "nle_faithfulness/ecqa_units", params,
                        lambda: ecqa_counterfactual_test(side.runtime, items, answers, seed))
    return {
        ECQA_FLIP.name: item_shares(edits["units"], edits["flipped"]),
        ECQA_UNFAITHFUL.name: item_shares(edits["units"], edits["unfaithful"]),
        "lost": int(edits["empty"].sum()),
        "summary": {"units": int(sum(edits["units"])), "flipped_units": int(edits["flipped"].sum()),
                    "unfaithful_flips": int(edits["unfaithful"].sum()),
                    "unfaithfulness_over_flips": unfaithfulness(edits["flipped"], edits["unfaithful"])},
        "examples": edits["examples"],
    }


def run_nle_faithfulness(pair: "ModelPair") -> SuiteResult:
    """Counterfactual-edit flip and unfaithfulness shares, CC-SHAP and empty explanations on the same items."""
    reason = lacks(pair, ("esnli", "ecqa"))
    if reason:
        return not_applicable(SUITE, NLE_FAITHFULNESS_METRICS, reason)
    n_edit = suite_size(SUITE, pair.config.profile, pair.config.samples)
    n_shap = min(suite_size(SUITE, pair.config.profile, pair.config.samples, budget="cc_shap"), n_edit)
    items, questions = esnli_items(pair, n_edit), ecqa_items(pair, n_edit)
    results = {side.role: _side(pair, side, items, n_shap) for side in pair.sides}
    ecqa = {side.role: _ecqa_side(pair, side, questions) for side in pair.sides}
    blank = {"esnli": np.full(len(questions), np.nan), "ecqa": np.full(len(items), np.nan)}
    values = {role: {m.name: np.concatenate([results[role][m.name], blank["esnli"]])
                     for m in (FLIP, UNFAITHFUL, CC_SHAP_SCORE, DEGENERATE)}
              | {m.name: np.concatenate([blank["ecqa"], ecqa[role][m.name]]) for m in (ECQA_FLIP, ECQA_UNFAITHFUL)}
              for role in results}
    result = SuiteResult(
        suite=SUITE,
        item_ids=[item.id for item in items] + [f"ecqa:{it.id}" for it in questions],
        reference=values["reference"],
        quantized=values["quantized"],
        fingerprint={"data": dataset_fingerprint(items), "templates": stable_hash(explanation_params(pair, items)),
                     "insertions": stable_hash(INSERTIONS), "cc_shap": stable_hash(CC_SHAP),
                     "units_per_item": str(INSERTIONS["positions"] * INSERTIONS["words_per_position"]),
                     "ecqa": stable_hash([dataset_fingerprint(questions), ECQA_NLE_TEMPLATE])},
        notes={
            "templates": f"{INSERTIONS['version']}, {CC_SHAP['version']}, {NLE_TEMPLATE['version']}",
            "insertion_candidates": f"{len(INSERTIONS['adjectives'])} adjectives, {len(INSERTIONS['adverbs'])} "
                                    f"adverbs, hash {stable_hash(INSERTIONS)}",
            "units": f"(item, insertion) pairs, up to {INSERTIONS['positions']} positions x "
                     f"{INSERTIONS['words_per_position']} words per item, evaluated on both sides; every flipped "
                     "unit is explained",
            "position_tagger": f"{INSERTIONS['tagger']}: adjective before NN/NNS, adverb before a non-auxiliary VB*",
            "per_side": {role: r["summary"] for role, r in results.items()},
            "ecqa_per_side": {role: r["summary"] for role, r in ecqa.items()},
            "ecqa": "insertions into the question; the cloze answer (task suite) is predicted on every unit and each "
                    "changed answer explained with the NLE suite's ECQA template",
            "unfaithful_denominator": "the item's insertion units (fixed before either model runs)",
            "degenerate": "empty explanation: mentions no inserted word (an unfaithful flip); CC-SHAP -1 for an "
                          "empty explanation or an all-zero attribution",
            "cc_shap": f"{CC_SHAP['estimator']}, {CC_SHAP['permutations']} permutations per item, word features, "
                       f"mask token replaces left-out words, {n_shap} items",
            "examples": {role: r["examples"] for role, r in results.items()},
            "ecqa_examples": {role: r["examples"] for role, r in ecqa.items()},
        },
        lost={name: {role: r["lost"][name] for role, r in results.items()} for name in (UNFAITHFUL.name,
                                                                                      CC_SHAP_SCORE.name)}
        | {ECQA_UNFAITHFUL.name: {role: r["lost"] for role, r in ecqa.items()}},
    )
    reference = nli_predictions(pair, pair.reference, n_edit)
    require_competence(result, "e-SNLI", reference.correct, 1 / len(NLI_LABELS), TASK_DEPENDENT)
    require_competence(result, "ECQA", mcq_predictions(pair, pair.reference, n_edit).correct, 1 / 5,
                       [ECQA_FLIP, ECQA_UNFAITHFUL])
    return result


NLE_FAITHFULNESS_SUITE = register_suite(Suite(
    SUITE,
    "Faithfulness of the explanations: the counterfactual-edit test (unfaithfulness, flip rate) and CC-SHAP.",
    tuple(NLE_FAITHFULNESS_METRICS), run_nle_faithfulness,
    sizes={"smoke": 16, "standard": 120, "full": 400}, item_cost=15.0,
    budgets={"cc_shap": {"smoke": 6, "standard": 24, "full": 80}},
))
