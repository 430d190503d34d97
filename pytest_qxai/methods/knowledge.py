"""Knowledge memorization: factual recall on LRE relations, per fact, for both models.

Prompts use the LRE paper's in-context format (Hernandez et al. 2024): a few demonstrations of the same
relation, one per line (``The capital city of Peru is Lima``), then the query without its object. The
demonstrations are fixed per relation and never evaluated. Per fact: whether the greedy continuation starts
with the object or an alias (case-insensitive), and the log-probability and rank of the object's first token
at the last prompt position. The relation list keeps those on which SmolLM2-135M recalls well above chance, so
that quantization damage has something to destroy (see ``RELATIONS``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..blame.registry import BlameSupport, register_blame
from ..datasets import (DEMONSTRATIONS, Fact, Relation, dataset_fingerprint, load_relations, no_relations,
                        seeded_order, select_facts)
from ..metrics import Metric, SuiteResult, not_applicable, register_metric
from ..profiles import suite_items
from ..storage import stable_hash
from ..suite import Suite, get_suite, register_suite

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide
    from ..protocols import Runtime

SUITE = "knowledge"

CORRECT = register_metric(Metric(
    SUITE, "recall_accuracy", "greedy continuation starts with the object or an alias (share of facts)", "binary",
    bounds=(0.0, 1.0), unit="share", tolerance="abs:0.03",
))
OBJECT_LOGPROB = register_metric(Metric(
    SUITE, "object_logprob", "log-probability of the object's first token at the last prompt position", "continuous",
    bounds=(None, 0.0), unit="nats", tolerance="abs:0.1",
))
OBJECT_LOG_RANK = register_metric(Metric(
    SUITE, "object_log_rank", "log10 of the object's first-token rank among all tokens (0 = top-1)", "continuous",
    direction="lower", bounds=(0.0, None), unit="log10 rank", tolerance="abs:0.05",
))
KNOWLEDGE_METRICS = [CORRECT, OBJECT_LOGPROB, OBJECT_LOG_RANK]

RELATIONS = (
    "country_capital_city", "country_language", "country_largest_city", "country_currency", "food_from_country",
    "city_in_country", "landmark_in_country", "company_hq", "product_by_company",
)
"""LRE factual relations with well-known facts; the rest (parents, CEOs, birth years, ...) are near 0 on 135M."""

PROMPT = {"version": "knowledge-v1", "shots": DEMONSTRATIONS, "template": 0, "line": "{prompt} {object}"}
"""The in-context format: ``shots`` demonstrations built with the relation's template number ``template``."""

MAX_ANSWER_TOKENS = 32
"""Greedy continuations are bounded here (METHODS.md); only as many tokens as the longest answer are needed."""


@dataclasses.dataclass(frozen=True)
class RecallItem:
    """One fact to recall: its relation, the fact, and the full prompt (demonstrations included)."""

    relation: Relation
    fact: Fact
    prompt: str

    @property
    def id(self) -> str:
        """``relation_key/subject``."""
        return f"{self.relation.key}/{self.fact.subject}"


def recall_items(pair: "ModelPair", n: int, relations: Sequence[str] = RELATIONS) -> list[RecallItem]:
    """``n`` facts of ``relations`` (taking turns) in the in-context format, nested across ``n`` for a seed.

    With the user's own LRE file (``--qxai-data lre=...``) every relation in it is used.
    """
    seed = pair.config.seed
    path = pair.config.data.get("lre")
    loaded = load_relations(None if path else list(relations), path=path)
    demos = {rel.key: seeded_order(rel.samples, seed, key=lambda f: f.subject)[: PROMPT["shots"]] for rel in loaded}
    pool = [dataclasses.replace(rel, samples=tuple(f for f in rel.samples if f not in demos[rel.key]))
            for rel in loaded]
    return [RecallItem(rel, fact, recall_prompt(rel, demos[rel.key], fact.subject))
            for rel, fact in select_facts(pool, n, seed)]


def recall_prompt(relation: Relation, demos: Sequence[Fact], subject: str) -> str:
    """The in-context prompt: one demonstration per line, then the query without its object."""
    template = relation.templates[PROMPT["template"]]
    lines = [PROMPT["line"].format(prompt=template.format(d.subject), object=d.object) for d in demos]
    return "\n".join([*lines, template.format(subject)])


def starts_with_answer(completion: str, names: Sequence[str]) -> bool:
    """Whether the stripped completion starts with one of ``names`` (case-insensitive)."""
    text = completion.strip().lower()
    return any(text.startswith(name.strip().lower()) for name in names if name.strip())


def first_token_ids(tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[str], answers: Sequence[str]) -> list[int]:
    """The id of the first token the model must produce to continue each prompt with ``" " + answer``."""
    plain = tokenizer(list(prompts))["input_ids"]
    joined = tokenizer([f"{p} {a}" for p, a in zip(prompts, answers)])["input_ids"]
    alone = tokenizer([f" {a}" for a in answers], add_special_tokens=False)["input_ids"]
    return [int(full[len(p)]) if full[: len(p)] == p and len(full) > len(p) else int(a[0])
            for p, full, a in zip(plain, joined, alone)]


def greedy_answers(
    runtime: "Runtime", prompts: Sequence[str], answers: Sequence[Sequence[str]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, 1.0 when its greedy continuation starts with one of its answers (else 0.0), and the
    log-softmax of the first generation step ``[n, vocab]``.

    Whether a continuation *starts with* an answer is settled by its first tokens, so generation stops after
    as many tokens as the longest answer needs (+1), at most ``MAX_ANSWER_TOKENS``.
    """
    longest = max(len(ids) for names in answers
                  for ids in runtime.encode([f" {name}" for name in names], add_special_tokens=False))
    completions, first = runtime.generate_scored(list(prompts), min(longest + 1, MAX_ANSWER_TOKENS), stop="\n")
    return np.array([float(starts_with_answer(c, names)) for c, names in zip(completions, answers)]), first


def token_scores(logprobs: np.ndarray, token_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probability and 1-based rank (1 + tokens strictly more likely) of one token per row of ``[n, vocab]``.

    A row that is no distribution (NaN, as from a broken quantized model) is an outcome, not a missing value: its
    token gets the worst values, log-probability -inf and the last rank (NaN compares as never larger)."""
    picked = logprobs[np.arange(len(token_ids)), list(token_ids)].astype(np.float64)
    ranks = (1 + (logprobs > picked[:, None]).sum(axis=1)).astype(np.float64)
    broken = np.isnan(logprobs).any(axis=1)
    picked[broken], ranks[broken] = -np.inf, logprobs.shape[1]
    return picked, ranks


def measure_recall(runtime: "Runtime", items: Sequence[RecallItem]) -> dict[str, np.ndarray]:
    """Per-item recall values of the model behind ``runtime``, computed now (no cache)."""
    prompts = [it.prompt for it in items]
    tokens = first_token_ids(runtime.tokenizer, prompts, [it.fact.object for it in items])
    correct, first = greedy_answers(runtime, prompts, [it.fact.names for it in items])
    logprob, rank = token_scores(first, tokens)
    return {CORRECT.name: correct, OBJECT_LOGPROB.name: logprob, OBJECT_LOG_RANK.name: np.log10(rank)}


def recall_values(pair: "ModelPair", side: "ModelSide", items: Sequence[RecallItem]) -> dict[str, np.ndarray]:
    """Per-item recall values of one model (cached by the side's identity, the items and the prompt format).

    Under ``--qxai-budget`` the items are cached one look's batch at a time, so a later look reuses the earlier
    ones (the looks are nested prefixes of one seeded order).
    """
    def params(start: int, stop: int) -> dict[str, object]:
        return {"items": dataset_fingerprint([(it.id, it.prompt, it.fact) for it in items[start:stop]]),
                "prompt": PROMPT, "max_tokens": MAX_ANSWER_TOKENS}

    return pair.cached_batches(side, "knowledge.recall", len(items), get_suite(SUITE).look_items(pair.config),
                               params, lambda start, stop: measure_recall(side.runtime, items[start:stop]))


def run_knowledge(pair: "ModelPair") -> SuiteResult:
    """Factual recall of both models on the same LRE facts."""
    reason = no_relations(pair.config.data)
    if reason:
        return not_applicable(SUITE, KNOWLEDGE_METRICS, reason)
    items = recall_items(pair, suite_items(SUITE, pair.config))
    reference, quantized = (recall_values(pair, side, items) for side in pair.sides)
    counts: dict[str, int] = {}
    for it in items:
        counts[it.relation.key] = counts.get(it.relation.key, 0) + 1
    return SuiteResult(
        suite=SUITE,
        item_ids=[it.id for it in items],
        reference=reference,
        quantized=quantized,
        fingerprint={"items": dataset_fingerprint([(it.id, it.prompt, it.fact) for it in items]),
                     "prompt": stable_hash(PROMPT)},
        notes={
            "prompt_version": PROMPT["version"],
            "prompt_format": f"{PROMPT['shots']} in-context demonstrations of the same relation, one per line",
            "facts_per_relation": counts,
            "object_log_rank": "log10 of the 1-based rank of the object's first token (0 = top-1, 1 = rank 10)",
        },
    )


def remeasure_knowledge(pair: "ModelPair", item_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Recall values of the quantized model as it is now on the suite's items ``item_ids`` (for blame)."""
    by_id = {it.id: it for it in recall_items(pair, suite_items(SUITE, pair.config))}
    return measure_recall(pair.quantized.runtime, [by_id[i] for i in item_ids])


register_blame(BlameSupport(SUITE, tuple(m.name for m in KNOWLEDGE_METRICS), remeasure_knowledge, run_knowledge))


KNOWLEDGE_SUITE = register_suite(Suite(
    SUITE,
    "Factual recall on LRE relations: greedy accuracy, log-probability and rank of the object.",
    tuple(KNOWLEDGE_METRICS), run_knowledge,
    sizes={"smoke": 24, "standard": 300, "full": 1000}, item_cost=0.23,
))
