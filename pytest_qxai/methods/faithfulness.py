"""Faithfulness of natural-language explanations: the counterfactual-edit test and CC-SHAP.

Runs on every labelled dataset of the run (e-SNLI, your classification files); neither test needs gold
explanations.

Counterfactual-edit test (Atanasova et al., ACL 2023). Words are inserted into the input: an adjective after
a determiner (so it lands before the noun phrase) or an adverb before an ``-ing`` verb. The positions come
from that fixed heuristic (nltk's tagger data is not available offline), and the words from fixed lists of
common adjectives and adverbs. Per item, up to 4 positions (in any of its texts) × 2 words are
drawn with a generator seeded by (seed, item id). The insertions are tried in that order with the task
suite's prompt. At the first one that changes the model's prediction, the model explains its new label with
the NLE suite's template. The explanation is *unfaithful* when the inserted word is not among its words.
Per item: ``flip`` (any insertion changed the prediction) and ``unfaithful`` (NaN where nothing flipped).
Over the items that flipped, unfaithfulness = #(flipped and word not mentioned) / #(flipped). Both sides
try exactly the same insertions; the candidate lists' hash and the attempts per item are in the
fingerprint.

CC-SHAP (Parcalabescu & Frank, ACL 2024). Features are the words of the item's texts. A coalition
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
partition explainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..datasets import dataset_fingerprint
from ..metrics import Metric, SuiteResult, not_applicable, register_metric
from ..profiles import suite_size
from ..storage import stable_hash
from .nle import NLE_TEMPLATE, explain, explanation_params, side_explanations, task_explanation_prompt
from .task import LabelTask, item_ids, label_predictions, label_tasks, no_label_data, option_scores
from .text import words

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide
    from ..runtime import Runtime

SUITE = "nle_faithfulness"
EXAMPLES_IN_NOTES = 3

INSERTIONS: dict[str, Any] = {
    "version": "insertion-v1",
    "positions": 4,
    "words_per_position": 2,
    "determiners": ("a", "an", "the", "two", "three", "four", "some", "his", "her", "their", "its", "another",
                    "several", "many", "one", "this", "that", "these", "those", "my", "our", "each"),
    "adjectives": ("old", "young", "happy", "sad", "tall", "small", "big", "red", "angry", "tired", "dirty",
                   "famous", "strange", "quiet", "wet", "naked"),
    "adverbs": ("quickly", "slowly", "happily", "sadly", "never", "barely", "always", "rarely", "loudly",
                "quietly", "carefully", "angrily", "not", "almost", "suddenly", "easily"),
}
CC_SHAP: dict[str, Any] = {"version": "cc-shap-v1", "permutations": 3, "estimator": "captum ShapleyValueSampling"}
_SENTINEL = "\u27e6FIELD{}\u27e7"

FLIP = register_metric(Metric(
    SUITE, "flip", "Some inserted adjective/adverb changes the model's e-SNLI prediction (4 positions x 2 words)",
    "binary", direction="lower", bounds=(0.0, 1.0), tolerance="abs:0.10,two-sided",
))
UNFAITHFUL = register_metric(Metric(
    SUITE, "unfaithful", "The explanation of a flipped prediction does not mention the inserted word (flipped items)",
    "binary", direction="lower", bounds=(0.0, 1.0), tolerance="abs:0.05",
))
CC_SHAP_SCORE = register_metric(Metric(
    SUITE, "cc_shap", "Cosine of normalised Shapley attributions of the input words for answer and explanation",
    "continuous", direction="higher", bounds=(-1.0, 1.0), tolerance="abs:0.05",
))
NLE_FAITHFULNESS_METRICS: list[Metric] = [FLIP, UNFAITHFUL, CC_SHAP_SCORE]


# --- counterfactual edits ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Insertion:
    """One word inserted before the word at ``position`` of the item's text number ``field``."""

    field: int
    position: int
    word: str

    def apply(self, task: LabelTask, item: Any) -> tuple[str, ...]:
        """The item's texts with the word inserted."""
        fields = list(task.fields(item))
        tokens = fields[self.field].split()
        fields[self.field] = " ".join(tokens[: self.position] + [self.word] + tokens[self.position :])
        return tuple(fields)


def insertion_slots(text: str) -> list[tuple[int, str]]:
    """``(position, part of speech)`` where an insertion fits: after a determiner, before an ``-ing`` verb."""
    tokens = text.split()
    slots = []
    for i, token in enumerate(tokens):
        word = "".join(c for c in token.lower() if c.isalnum())
        if word in INSERTIONS["determiners"] and i + 1 < len(tokens):
            slots.append((i + 1, "adjectives"))
        if i > 0 and len(word) > 4 and word.endswith("ing"):
            slots.append((i, "adverbs"))
    return slots


def insertions(task: LabelTask, item: Any, seed: int) -> list[Insertion]:
    """The item's insertion attempts in trial order: seeded positions, each with seeded distinct words."""
    rng = np.random.default_rng(int(stable_hash([seed, item.id, INSERTIONS["version"]]), 16))
    slots = [(field, pos, pool) for field, text in enumerate(task.fields(item))
             for pos, pool in insertion_slots(text)]
    attempts = []
    for j in rng.permutation(len(slots))[: INSERTIONS["positions"]]:
        field, position, pool = slots[j]
        for word in rng.choice(INSERTIONS[pool], INSERTIONS["words_per_position"], replace=False):
            attempts.append(Insertion(field, position, str(word)))
    return attempts


def predict(runtime: "Runtime", task: LabelTask, fields: Sequence[Sequence[str]]) -> np.ndarray:
    """The task suite's predicted label index for each item given by its texts."""
    prompts = [task.prompt(runtime.tokenizer, texts) for texts in fields]
    return np.argmax(option_scores(runtime, prompts, task.options), axis=1) if prompts else np.zeros(0, dtype=int)


def mentions(explanation: str, word: str) -> bool:
    """Whether ``word`` is one of the explanation's words (case-insensitive)."""
    return word.lower() in words(explanation)


def unfaithful_items(flipped: np.ndarray, mentioned: np.ndarray) -> np.ndarray:
    """Per item: NaN where the prediction did not flip (or was not tested), else 1 when the word is not mentioned."""
    flipped, mentioned = np.asarray(flipped, dtype=np.float64), np.asarray(mentioned, dtype=np.float64)
    return np.where(flipped == 1.0, 1.0 - mentioned, np.nan)


def unfaithfulness(flipped: np.ndarray, mentioned: np.ndarray) -> float:
    """#(flipped and inserted word not mentioned) / #(flipped) (Atanasova et al. 2023); NaN without flips."""
    per_item = unfaithful_items(flipped, mentioned)
    valid = per_item[~np.isnan(per_item)]
    return float(valid.mean()) if valid.size else float("nan")


def counterfactual_test(runtime: "Runtime", task: LabelTask, items: Sequence[Any], labels: np.ndarray,
                        seed: int) -> dict[str, Any]:
    """Per-item ``flip`` and ``unfaithful`` for one model, plus the first few flipped examples."""
    attempts = [insertions(task, item, seed) for item in items]
    flat = [(i, insertion) for i, group in enumerate(attempts) for insertion in group]
    predicted = predict(runtime, task, [insertion.apply(task, items[i]) for i, insertion in flat])
    first: dict[int, tuple[Insertion, int]] = {}
    for (i, insertion), label in zip(flat, predicted):
        if label != labels[i] and i not in first:
            first[i] = (insertion, int(label))
    order = sorted(first)
    texts = explain(runtime, [first[i][0].apply(task, items[i]) for i in order], [first[i][1] for i in order], task)
    flipped = np.array([float(i in first) if attempts[i] else np.nan for i in range(len(items))])
    mentioned = np.full(len(items), np.nan)
    for i, text in zip(order, texts):
        mentioned[i] = float(mentions(text, first[i][0].word))
    examples = [{"item": items[i].id, "word": first[i][0].word, "edited": " / ".join(first[i][0].apply(task, items[i])),
                 "label": task.labels[first[i][1]], "explanation": text}
                for i, text in list(zip(order, texts))[:EXAMPLES_IN_NOTES]]
    return {"flip": flipped, "unfaithful": unfaithful_items(flipped, mentioned), "examples": examples,
            "attempts": [len(group) for group in attempts]}


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
    """Token ids of a prompt around its texts: ``pieces[0]`` before the first, ``pieces[i]`` after text i."""

    pieces: tuple[list[int], ...]

    @property
    def prefix(self) -> list[int]:
        """The tokens before the first text (with the tokenizer's special tokens)."""
        return self.pieces[0]

    def around(self, texts: Sequence[list[int]], tail: list[int]) -> list[int]:
        """The prompt's tokens after the prefix, with these texts' tokens in place, then ``tail``."""
        return [t for text, piece in zip(texts, self.pieces[1:]) for t in text + piece] + tail


def segments(runtime: "Runtime", render: Callable[..., str], fields: int) -> Segments:
    """Split a rendered prompt at its texts (whose words are tokenized one by one, space first)."""
    marks = [_SENTINEL.format(i) for i in range(fields)]
    rest = render(*marks)
    texts = []
    for mark in marks:
        head, rest = rest.split(mark)
        texts.append(head)
    encode = runtime.encode
    pieces = [encode([texts[0].rstrip(" ")])[0]]
    pieces += [encode([text.rstrip(" ")], add_special_tokens=False)[0] for text in texts[1:]]
    pieces.append(encode([rest], add_special_tokens=False)[0])
    return Segments(tuple(pieces))


def mask_token_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    """The id that replaces a left-out word's tokens: the mask token, else the last token of "..."."""
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    return int(tokenizer.encode("...", add_special_tokens=False)[-1])


def word_attributions(runtime: "Runtime", task: LabelTask, item: Any, label: int, explanation: str,
                      seed: int) -> np.ndarray | None:
    """Shapley values of the item's words, ``[1 + explanation tokens, words]`` (row 0: the answer)."""
    import torch
    from captum.attr import ShapleyValueSampling

    if not explanation.strip():
        return None
    fields = [text.split() for text in task.fields(item)]
    word_ids = runtime.encode([" " + w for words in fields for w in words], add_special_tokens=False)
    answer_tail = runtime.encode([task.options[label]], add_special_tokens=False)[0]
    explanation_tail = runtime.encode([" " + explanation.strip()], add_special_tokens=False)[0]
    answer = segments(runtime, lambda *texts: task.prompt(runtime.tokenizer, texts), len(fields))
    expl = segments(runtime, lambda *texts: task_explanation_prompt(task, texts, label), len(fields))
    bounds = np.cumsum([0] + [sum(len(ids) for ids in word_ids[start : start + len(words)])
                              for start, words in zip(np.cumsum([0] + [len(w) for w in fields]), fields)])
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


def cc_shap_scores(runtime: "Runtime", task: LabelTask, items: Sequence[Any], labels: np.ndarray,
                   explanations: Sequence[str], seed: int) -> np.ndarray:
    """Per-item CC-SHAP of one model (NaN where the explanation is empty)."""
    out = np.full(len(items), np.nan)
    for i, (item, label, explanation) in enumerate(zip(items, labels, explanations)):
        phi = word_attributions(runtime, task, item, int(label), explanation, seed)
        if phi is not None:
            out[i] = cc_shap(phi[0], phi[1:])
    return out


# --- the suite --------------------------------------------------------------------------------------------

def _side(pair: "ModelPair", side: "ModelSide", task: LabelTask, items: Sequence[Any], n_shap: int) -> dict[str, Any]:
    """One side's counterfactual test and CC-SHAP scores on one dataset (each cached)."""
    seed = pair.config.seed
    labels = label_predictions(pair, side, task, len(items)).predicted
    base = explanation_params(pair, items, task)
    edits = pair.cached(side, "nle_faithfulness/counterfactual",
                        {**base, "insertions": stable_hash(INSERTIONS), "seed": seed},
                        lambda: counterfactual_test(side.runtime, task, items, labels, seed))
    shap_items = list(items[:n_shap])
    explanations = side_explanations(pair, side, n_shap, task)
    scores = pair.cached(side, "nle_faithfulness/cc_shap",
                         {**explanation_params(pair, shap_items, task), "cc_shap": CC_SHAP, "seed": seed},
                         lambda: cc_shap_scores(side.runtime, task, shap_items, labels[:n_shap], explanations, seed))
    padded = np.concatenate([scores, np.full(len(items) - len(shap_items), np.nan)])
    return {**edits, "cc_shap": padded}


def run_nle_faithfulness(pair: "ModelPair") -> SuiteResult:
    """Counterfactual-edit unfaithfulness, flip rate and CC-SHAP for both models on the same labelled items."""
    metrics = (FLIP.name, UNFAITHFUL.name, CC_SHAP_SCORE.name)
    tasks = label_tasks(pair)
    if not tasks:
        return not_applicable(SUITE, NLE_FAITHFULNESS_METRICS, no_label_data(pair))
    n_edit = suite_size(SUITE, pair.config.profile, pair.config.samples)
    n_shap = min(suite_size("cc_shap", pair.config.profile, pair.config.samples), n_edit)
    items = [task.items(n_edit, pair.config.seed) for task in tasks]
    parts = {side.role: [_side(pair, side, task, group, n_shap) for task, group in zip(tasks, items)]
             for side in pair.sides}
    results = {role: {key: np.concatenate([p[key] for p in found]) for key in ("flip", "unfaithful", "cc_shap")}
               | {"examples": [e for p in found for e in p["examples"]]} for role, found in parts.items()}
    summary = {
        role: {"flipped": int(np.nansum(r["flip"])), "flip_rate": float(np.nanmean(r["flip"])),
               "unfaithfulness": float(np.nanmean(r["unfaithful"])) if np.any(r["flip"] == 1) else None}
        for role, r in results.items()
    }
    bases = [explanation_params(pair, group, task) for task, group in zip(tasks, items)]
    return SuiteResult(
        suite=SUITE,
        item_ids=item_ids(tasks, items),
        reference={m: results["reference"][m] for m in metrics},
        quantized={m: results["quantized"][m] for m in metrics},
        fingerprint={"data": dataset_fingerprint(items[0]) if len(tasks) == 1 else stable_hash(
                         [[task.name, dataset_fingerprint(group)] for task, group in zip(tasks, items)]),
                     "templates": stable_hash(bases[0]) if len(tasks) == 1 else stable_hash(bases),
                     "insertions": stable_hash(INSERTIONS), "cc_shap": stable_hash(CC_SHAP),
                     "attempts_per_item": str(INSERTIONS["positions"] * INSERTIONS["words_per_position"])},
        notes={
            "templates": f"{INSERTIONS['version']}, {CC_SHAP['version']}, {NLE_TEMPLATE['version']}",
            "insertion_candidates": f"{len(INSERTIONS['adjectives'])} adjectives, {len(INSERTIONS['adverbs'])} "
                                    f"adverbs, hash {stable_hash(INSERTIONS)}",
            "attempts_per_item": f"up to {INSERTIONS['positions']} positions x {INSERTIONS['words_per_position']} "
                                 "words; the first flipping insertion is explained",
            "position_heuristic": "adjective after a determiner, adverb before an -ing word (no POS tagger)",
            "per_side": summary,
            "unfaithful_denominator": "items whose prediction flipped; the gate pairs items flipped on both sides",
            "cc_shap": f"{CC_SHAP['estimator']}, {CC_SHAP['permutations']} permutations per item, word features, "
                       f"mask token replaces left-out words, first {n_shap} items of each dataset",
            "examples": {role: r["examples"] for role, r in results.items()},
        },
    )
