"""NLE faithfulness suite: insertion candidates, the unfaithfulness rate, CC-SHAP normalisation and estimation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pytest_qxai.datasets import NLIItem, load_esnli
from pytest_qxai.methods import faithfulness as F
from pytest_qxai.methods import nle as N
from pytest_qxai.methods import task as T
from test_attribution import smollm, tiny_pair, tiny_runtime  # noqa: F401 - shared model fixtures

ITEM = NLIItem("x", "A man is playing a guitar.", "The old man plays music.", "entailment", ("guitar is music",))
NLI = T.LabelTask("esnli", "nli", T.NLI_LABELS)
vectors = st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=12)


# --- counterfactual edits ---------------------------------------------------------------------------------

def test_unfaithfulness_by_hand() -> None:
    flipped = np.array([1, 1, 0, 1, 1, np.nan])
    mentioned = np.array([0, 1, np.nan, 0, 1, np.nan])
    per_item = F.unfaithful_items(flipped, mentioned)
    assert per_item[[0, 1, 3, 4]].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert np.isnan(per_item[[2, 5]]).all()
    assert F.unfaithfulness(flipped, mentioned) == pytest.approx(2 / 4)
    assert np.isnan(F.unfaithfulness(np.zeros(3), np.full(3, np.nan)))


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_unfaithfulness_is_a_share_of_the_flipped_items(cases: list[tuple[bool, bool]]) -> None:
    flipped = np.array([float(f) for f, _ in cases])
    mentioned = np.array([float(m) if f else np.nan for f, m in cases])
    rate = F.unfaithfulness(flipped, mentioned)
    n_flipped = int(flipped.sum())
    if n_flipped == 0:
        assert np.isnan(rate)
    else:
        assert 0.0 <= rate <= 1.0
        assert rate == pytest.approx(sum(f and not m for f, m in cases) / n_flipped)


def test_slots_are_after_determiners_and_before_ing_verbs() -> None:
    assert F.insertion_slots("A man is playing a guitar.") == [(1, "adjectives"), (3, "adverbs"), (5, "adjectives")]
    assert F.insertion_slots("Running dogs") == []  # no determiner; an -ing word first in the sentence is skipped


def test_insertion_puts_the_word_before_the_slot() -> None:
    assert F.Insertion(0, 3, "happily").apply(NLI, ITEM) == ("A man is happily playing a guitar.", ITEM.hypothesis)
    assert F.Insertion(1, 1, "tall").apply(NLI, ITEM) == (ITEM.premise, "The tall old man plays music.")


def test_insertions_are_seeded_bounded_and_drawn_from_the_fixed_lists() -> None:
    attempts = F.insertions(NLI, ITEM, seed=0)
    assert attempts == F.insertions(NLI, ITEM, seed=0)
    assert 0 < len(attempts) <= F.INSERTIONS["positions"] * F.INSERTIONS["words_per_position"]
    for attempt in attempts:
        pool = dict(F.insertion_slots(NLI.fields(ITEM)[attempt.field]))[attempt.position]
        assert attempt.word in F.INSERTIONS[pool]
    per_slot: dict[tuple[int, int], list[str]] = {}
    for attempt in attempts:
        per_slot.setdefault((attempt.field, attempt.position), []).append(attempt.word)
    assert all(len(set(ws)) == len(ws) == F.INSERTIONS["words_per_position"] for ws in per_slot.values())
    items = load_esnli(30, 0)
    assert any(F.insertions(NLI, it, 0) != F.insertions(NLI, it, 1) for it in items)


def test_mention_is_a_case_insensitive_whole_word_match() -> None:
    assert F.mentions("The Happy man smiles.", "happy")
    assert not F.mentions("An unhappy man.", "happy")


# --- CC-SHAP ----------------------------------------------------------------------------------------------

def test_cc_shap_by_hand() -> None:
    assert F.cc_shap(np.array([1.0, -1.0, 2.0]), np.array([2.0, -2.0, 4.0])) == pytest.approx(1.0)
    assert F.cc_shap(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert F.cc_shap(np.array([1.0, -2.0]), np.array([-1.0, 2.0])) == pytest.approx(-1.0)
    # per-token ratios are averaged: tokens [1, 0] and [0, 1] → [0.5, 0.5], parallel to the answer [1, 1]
    assert F.cc_shap(np.array([1.0, 1.0]), np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)
    assert np.isnan(F.cc_shap(np.zeros(3), np.ones(3)))


def test_ratios_are_shares_of_the_total_magnitude() -> None:
    np.testing.assert_allclose(F.ratios(np.array([1.0, -1.0, 2.0])), [0.25, -0.25, 0.5])
    np.testing.assert_allclose(F.ratios(np.array([[0.0, 0.0], [3.0, 1.0]])), [[0.0, 0.0], [0.75, 0.25]])


@given(vectors, vectors)
def test_cc_shap_is_a_cosine_in_minus_one_to_one(a: list[float], b: list[float]) -> None:
    n = min(len(a), len(b))
    score = F.cc_shap(np.array(a[:n]), np.array(b[:n]))
    assert np.isnan(score) or -1.0 <= score <= 1.0


@given(vectors, vectors, st.floats(0.01, 100), st.floats(0.01, 100))
def test_cc_shap_ignores_the_scale_of_either_attribution(a: list[float], b: list[float], s: float, t: float) -> None:
    n = min(len(a), len(b))
    answer, explanation = np.array(a[:n]), np.array(b[:n])
    assume(np.abs(answer).sum() > 1e-6 and np.abs(explanation).sum() > 1e-6)
    assert F.cc_shap(s * answer, t * explanation) == pytest.approx(F.cc_shap(answer, explanation), abs=1e-9)
    assert F.cc_shap(answer, -explanation) == pytest.approx(-F.cc_shap(answer, explanation), abs=1e-9)


@given(st.lists(st.lists(st.floats(0.1, 10), min_size=3, max_size=3), min_size=1, max_size=5),
       st.lists(st.floats(0.01, 100), min_size=5, max_size=5))
def test_each_explanation_tokens_scale_is_normalised_away(rows: list[list[float]], scales: list[float]) -> None:
    phi = np.array(rows)
    scaled = phi * np.array(scales[: len(rows)])[:, None]
    answer = np.array([1.0, -0.5, 2.0])
    assert F.cc_shap(answer, scaled) == pytest.approx(F.cc_shap(answer, phi), abs=1e-9)


def test_segments_rebuild_the_prompt_word_by_word(tiny_runtime: Any) -> None:  # noqa: F811
    render = lambda p, h: N.explanation_prompt(p, h, "neutral")  # noqa: E731
    parts = F.segments(tiny_runtime, render, 2)
    premise = tiny_runtime.encode([" " + w for w in ITEM.premise.split()], add_special_tokens=False)
    hypothesis = tiny_runtime.encode([" " + w for w in ITEM.hypothesis.split()], add_special_tokens=False)
    ids = parts.prefix + parts.around([sum(premise, []), sum(hypothesis, [])], [])
    assert tiny_runtime.tokenizer.decode(ids, skip_special_tokens=True) == render(ITEM.premise, ITEM.hypothesis)


def test_prefixed_scoring_equals_scoring_the_whole_sequence(tiny_runtime: Any) -> None:  # noqa: F811
    prefix = tiny_runtime.encode(["The capital of France is Paris. "])[0]
    seqs = [tiny_runtime.encode([t], add_special_tokens=False)[0][:n] for t, n in
            (("The quick brown fox jumps", 6), ("Two plus two equals four and", 4), ("A cat sat on the mat", 7))]
    tails = [3, 2, 5]
    prefixed = tiny_runtime.prefixed_tail_logprobs(prefix, seqs, tails)
    whole = tiny_runtime._score_tails([prefix + s for s in seqs], tails)
    for got, want in zip(prefixed, whole):
        np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError):
        tiny_runtime.prefixed_tail_logprobs(prefix, seqs, [6, 2, 5])


def test_shapley_values_of_the_answer_add_up_to_the_full_minus_the_masked_score(
    tiny_runtime: Any,  # noqa: F811
) -> None:
    phi = F.word_attributions(tiny_runtime, NLI, ITEM, 0, "The man plays.", seed=0)
    assert phi is not None
    n_words = len(ITEM.premise.split()) + len(ITEM.hypothesis.split())
    answer_tail = tiny_runtime.encode([T.NLI_TEMPLATE["options"][0]], add_special_tokens=False)[0]
    assert phi.shape == (1 + len(tiny_runtime.encode([" The man plays."], add_special_tokens=False)[0]), n_words)
    parts = F.segments(tiny_runtime, lambda p, h: T.nli_prompt(tiny_runtime.tokenizer, p, h), 2)
    mask = F.mask_token_id(tiny_runtime.tokenizer)

    def score(keep: bool) -> float:
        words = [tiny_runtime.encode([" " + w], add_special_tokens=False)[0] for w in ITEM.premise.split()], \
            [tiny_runtime.encode([" " + w], add_special_tokens=False)[0] for w in ITEM.hypothesis.split()]
        p, h = ([t if keep else mask for ids in group for t in ids] for group in words)
        seq = parts.around([p, h], answer_tail)
        return float(tiny_runtime.prefixed_tail_logprobs(parts.prefix, [seq], [len(answer_tail)])[0].sum())

    assert phi[0].sum() == pytest.approx(score(True) - score(False), abs=1e-3)


def test_empty_explanation_has_no_cc_shap(tiny_runtime: Any) -> None:  # noqa: F811
    assert F.word_attributions(tiny_runtime, NLI, ITEM, 0, "  ", seed=0) is None
    assert np.isnan(F.cc_shap_scores(tiny_runtime, NLI, [ITEM], np.array([0]), [""], seed=0)).all()


def test_suite_on_identical_models_gives_identical_values(tiny_runtime: Any, make_config: Any) -> None:  # noqa: F811
    pair = tiny_pair(tiny_runtime, make_config)
    result = F.run_nle_faithfulness(pair)
    assert set(result.reference) == {m.name for m in F.NLE_FAITHFULNESS_METRICS}
    for metric in result.reference:
        np.testing.assert_array_equal(result.reference[metric], result.quantized[metric])
    flip, unfaithful = result.reference["flip"], result.reference["unfaithful"]
    assert np.isnan(unfaithful[flip == 0]).all() and not np.isnan(unfaithful[flip == 1]).any()
    assert result.fingerprint["attempts_per_item"] == "8"


# --- real model (slow) ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_predictions_flip_under_insertions_and_the_test_is_defined(smollm: Any) -> None:  # noqa: F811
    items = load_esnli(40, 0)
    labels = T.predict_nli(smollm, [(item.premise, item.hypothesis) for item in items])
    result = F.counterfactual_test(smollm, NLI, items, labels, seed=0)
    assert 0.1 < np.nanmean(result["flip"]) < 0.9
    assert 0.0 <= np.nanmean(result["unfaithful"]) <= 1.0
    attempts = np.array(result["attempts"])
    assert attempts.max() == 8 and (attempts == 8).mean() > 0.5  # up to 4 positions x 2 words, fewer on short items
    assert np.isnan(result["flip"][attempts == 0]).all()
