"""Counterfactual suite: the label cycle, template rendering, flip and degeneracy rules, text metrics."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai.datasets import NLI_LABELS, NLIItem
from pytest_qxai.methods import counterfactual as C
from pytest_qxai.methods import task
from pytest_qxai.methods.text import token_edit_distance
from test_attribution import smollm, tiny_pair, tiny_runtime  # noqa: F401 - shared model fixtures
from tiny import NO_CLASSIFICATION

ITEM = NLIItem("x", "A dog runs in the park.", "An animal moves.", "entailment", ("dogs are animals",))


def test_target_is_the_next_label_in_the_cycle() -> None:
    assert [NLI_LABELS[C.target_label(i)] for i in range(3)] == ["neutral", "contradiction", "entailment"]


def test_one_step_prompt_shows_the_models_label_and_the_target() -> None:
    prompt = C.edit_prompt(ITEM, label=2)
    assert prompt.startswith(C.TEMPLATES["instruction"])
    assert prompt.endswith(
        "Premise: A dog runs in the park.\nHypothesis: An animal moves.\nRelationship: contradiction\n"
        "Target: entailment\nEdited hypothesis:"
    )
    assert prompt.count("Edited hypothesis:") == len(C.TEMPLATES["demos"]) + 1
    assert "Words to change:" not in prompt


def test_two_step_prompts_ask_for_words_then_for_the_edit_of_those_words() -> None:
    first = C.words_prompt(ITEM, label=0)
    assert first.startswith(C.TEMPLATES["words_instruction"])
    assert first.endswith("Relationship: entailment\nTarget: neutral\nWords to change:")
    assert "Edited hypothesis:" not in first
    second = C.edit_prompt(ITEM, label=0, words_to_change="animal")
    assert second.endswith("Target: neutral\nWords to change: animal\nEdited hypothesis:")
    assert second.count("Words to change:") == len(C.TEMPLATES["demos"]) + 1


def test_the_ecqa_target_is_the_next_option_and_the_prompt_asks_for_it() -> None:
    from pytest_qxai.datasets import MCQItem

    item = MCQItem("q", "Where do fish live?", ("sea", "desert", "sky"), "sea", "x")
    assert [C.ecqa_target(item, a) for a in range(3)] == [1, 2, 0]
    assert C.ecqa_edit_prompt(item, 2).endswith(
        "Question: Where do fish live?\nAnswer: sky\nTarget: sea\nEdited question:")


def test_templates_cover_every_step_of_the_cycle() -> None:
    steps = {(d["label"], d["target"]) for d in C.TEMPLATES["demos"]}
    assert steps == {(NLI_LABELS[i], NLI_LABELS[C.target_label(i)]) for i in range(3)}


@pytest.mark.parametrize(("edit", "degenerate"), [
    ("", True), ("   ", True), ("An animal moves.", True), ("an  animal moves .", True),
    ("An animal sleeps.", False), ("An animal moves", False),
])
def test_degenerate_edits_are_empty_or_the_same_words(edit: str, degenerate: bool) -> None:
    assert C.is_degenerate("An animal moves.", edit) is degenerate


def test_a_flip_is_the_requested_target_reached_by_an_eligible_edit() -> None:
    targets = np.array([1, 2, 0, 1])
    after = np.array([1, 0, 0, 1])  # item 1 changed its label, but not to the target
    eligible = np.array([True, True, False, True])
    assert C.reaches(targets, after, eligible).tolist() == [1.0, 0.0, 0.0, 1.0]


def test_minimality_is_word_levenshtein_over_the_longer_sequence() -> None:
    from rapidfuzz.distance import Levenshtein

    # words: a man is riding a bike . -> one substitution out of seven tokens
    assert token_edit_distance("A man is riding a bike.", "A man is riding a horse.") == pytest.approx(1 / 7)
    # two insertions, normalised by the longer sequence (5 words), not the shorter one
    assert token_edit_distance("a b c", "a b c d e") == pytest.approx(2 / 5)
    assert Levenshtein.distance(["a", "b", "c"], ["a", "b", "c", "d", "e"]) == 2
    assert token_edit_distance("Same words.", "same words .") == 0.0


class _FixedNLL:
    """A scorer whose every token has negative log-likelihood 2 (perplexity e²)."""

    def token_nll(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.full(3, 2.0) for _ in texts]


def test_degenerate_edits_score_the_worst_value_of_each_text_metric() -> None:
    hypotheses = ["An animal moves.", "A cat sits.", "A man runs."]
    edits = ["An animal sleeps.", "", "A man runs."]
    raw = C.text_scores(hypotheses, edits, _FixedNLL())  # type: ignore[arg-type]
    scores = C.degenerate_scores(raw, np.array([False, True, True]), fluency_worst=10.0)
    assert scores["minimality"][0] == pytest.approx(token_edit_distance(hypotheses[0], edits[0]))
    assert scores["fluency"][0] == pytest.approx(2.0)  # log-perplexity = mean token NLL
    assert 0.0 < scores["similarity"][0] < 1.0
    assert scores["minimality"][1:].tolist() == [1.0, 1.0]  # a copy never looks minimal
    assert scores["similarity"][1:].tolist() == [-1.0, -1.0]
    assert scores["fluency"][1:].tolist() == [10.0, 10.0]
    assert not any(np.isnan(v).any() for v in scores.values())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.booleans()), min_size=1, max_size=20))
def test_flips_are_binary_and_never_count_ineligible_edits(rows: list[tuple[int, int, bool]]) -> None:
    target, after, eligible = (np.array(col) for col in zip(*rows))
    got = C.reaches(target, after, eligible)
    assert set(got.tolist()) <= {0.0, 1.0}
    assert not got[~eligible].any()
    assert np.array_equal(got == 1.0, (target == after) & eligible)


words_text = st.lists(st.sampled_from(["a", "dog", "runs", "the", "park", "."]), max_size=8).map(" ".join)


@settings(max_examples=100, deadline=None)
@given(words_text, words_text)
def test_minimality_is_a_symmetric_normalised_distance(a: str, b: str) -> None:
    d = token_edit_distance(a, b)
    assert 0.0 <= d <= 1.0
    assert d == token_edit_distance(b, a)
    assert token_edit_distance(a, a) == 0.0


# --- plumbing on a tiny random model, and the real model (slow) -----------------------------------------

def test_identical_models_give_identical_per_item_values(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(C, "MAX_EDIT_TOKENS", 4)
    monkeypatch.setattr(C, "MAX_WORDS_TOKENS", 2)
    monkeypatch.setitem(C.TEMPLATES, "demos", C.TEMPLATES["demos"][:1])
    result = C.run_counterfactual(tiny_pair(tiny_runtime, make_config))
    assert [m.name for m in C.COUNTERFACTUAL_METRICS if m not in C.LABEL_METRICS.values()] == list(result.reference)
    assert {k: v for k, v in result.skipped.items() if k.startswith("label_")} == dict.fromkeys(
        [m.name for m in C.LABEL_METRICS.values()], NO_CLASSIFICATION)
    for name, values in result.reference.items():
        assert np.array_equal(values, result.quantized[name], equal_nan=True)
    assert np.all(result.reference["validity"][:3] <= result.reference["self_flip"][:3])  # validity adds the bound
    assert set(result.notes["degenerate_edits"]) == {f"{side}/{v}" for side in ("reference", "quantized")
                                                    for v in [*C.VARIANTS, "ecqa"]}
    assert len(result.item_ids) == 6 and result.item_ids[3].startswith("ecqa:")  # 3 e-SNLI, then 3 ECQA items
    for name, values in result.reference.items():
        part = slice(3, 6) if name.startswith("ecqa_") else slice(0, 3)
        assert not np.isnan(values[part]).any(), name  # every item of the metric's task counts
    assert set(result.notes["precondition"]) == {"e-SNLI", "ECQA"}


@pytest.mark.slow
def test_smollm_writes_real_edits_for_most_items(smollm: Any) -> None:
    from pytest_qxai.datasets import load_esnli

    items = load_esnli(16, 0)
    labels = task.predict_nli(smollm, [(it.premise, it.hypothesis) for it in items])
    edits = smollm.generate([C.edit_prompt(it, int(y)) for it, y in zip(items, labels)], C.MAX_EDIT_TOKENS)
    degenerate = [C.is_degenerate(it.hypothesis, e) for it, e in zip(items, edits)]
    assert sum(degenerate) < len(items) / 2  # a 135M model copies or empties about a third of its edits
    assert np.mean([token_edit_distance(it.hypothesis, e) for it, e in zip(items, edits)]) < 0.8
