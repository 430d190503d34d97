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
from pytest_qxai.methods.text import words
from test_attribution import smollm, tiny_pair, tiny_runtime  # noqa: F401 - shared model fixtures
from tiny import NO_CLASSIFICATION

ITEM = NLIItem("x", "A man is playing a guitar.", "The old man plays music.", "entailment", ("guitar is music",))
vectors = st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=12)


# --- counterfactual edits ---------------------------------------------------------------------------------

def test_unfaithfulness_by_hand() -> None:
    flipped = np.array([1, 1, 0, 1, 1, 0], dtype=bool)
    unfaithful = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    assert F.unfaithfulness(flipped, unfaithful) == pytest.approx(2 / 4)  # the paper's ratio over flips
    assert F.unfaithfulness(np.zeros(3, dtype=bool), np.zeros(3, dtype=bool)) is None
    # per item, shares over the item's own units: items of 2, 3 and 1 units
    assert F.item_shares([2, 3, 1], unfaithful.astype(float)).tolist() == pytest.approx([0.5, 1 / 3, 0.0])
    assert F.item_shares([2, 0, 4], flipped.astype(float)).tolist() == pytest.approx([1.0, 0.0, 0.5])


@given(st.lists(st.tuples(st.integers(0, 8), st.data()), min_size=1, max_size=20))
def test_item_shares_are_pinned_to_the_units_whatever_the_outcomes(groups: list[tuple[int, Any]]) -> None:
    sizes = [size for size, _ in groups]
    outcomes = np.array([float(d.draw(st.booleans())) for size, d in groups for _ in range(size)])
    shares = F.item_shares(sizes, outcomes)
    assert shares.shape == (len(sizes),) and not np.isnan(shares).any()
    assert np.all((0.0 <= shares) & (shares <= 1.0))
    assert float(np.dot(shares, sizes)) == pytest.approx(outcomes.sum())  # every unit counted once


def test_slots_come_from_the_pos_tagger_nouns_and_non_auxiliary_verbs() -> None:
    # "is" is an auxiliary (spaCy's AUX): no adverb before it; adverb before "playing", adjective before nouns
    assert F.insertion_slots("A man is playing a guitar.") == [(1, "adjectives"), (3, "adverbs"), (5, "adjectives")]
    assert F.insertion_slots("Dogs run in the park") == [(0, "adjectives"), (1, "adverbs"), (4, "adjectives")]
    assert F.pos_tags("The old man plays music .".split())[:3] == ["DT", "JJ", "NN"]


def test_every_bundled_esnli_sentence_is_tagged_token_for_token() -> None:
    for item in load_esnli(1200, 0):
        for text in (item.premise, item.hypothesis):
            assert len(F.pos_tags(text.split())) == len(text.split())


def test_candidates_hold_no_negation_and_are_rare_in_human_explanations() -> None:
    explanations = [set(words(e)) for item in load_esnli(1200, 0) for e in item.explanations]
    candidates = F.INSERTIONS["adjectives"] + F.INSERTIONS["adverbs"]
    assert not {"not", "never", "no", "barely", "rarely", "hardly", "always"} & set(candidates)
    for word in candidates:
        assert sum(word in e for e in explanations) / len(explanations) < 0.02, word
    assert sum("not" in e for e in explanations) / len(explanations) > 0.3  # why negations are out


def test_ecqa_units_go_into_the_question_and_skip_words_of_the_options() -> None:
    from pytest_qxai.datasets import MCQItem

    item = MCQItem("e", "Where do tired people sleep?", ("bed", "quiet room", "car"), "bed", "x")
    units = F.insertions(item, seed=0)
    assert units and {u.field for u in units} == {"question"}
    assert not {u.word for u in units} & {"tired", "quiet"}
    assert all(u.edit(item).options == item.options and u.word in u.edit(item).question.lower() for u in units)


def test_a_word_the_item_already_holds_is_never_inserted() -> None:
    item = NLIItem("q", "A tired old man sleeps.", "The man is tired and old.", "entailment", ("x",))
    for seed in range(20):
        assert not {u.word for u in F.insertions(item, seed)} & {"tired", "old"}


def test_insertion_puts_the_word_before_the_slot() -> None:
    assert F.Insertion("premise", 3, "happily").apply(ITEM) == ("A man is happily playing a guitar.", ITEM.hypothesis)
    assert F.Insertion("hypothesis", 1, "tall").apply(ITEM) == (ITEM.premise, "The tall old man plays music.")
    assert F.Insertion("premise", 0, "tall").apply(ITEM) == ("Tall a man is playing a guitar.", ITEM.hypothesis)


def test_insertions_are_seeded_bounded_and_drawn_from_the_fixed_lists() -> None:
    attempts = F.insertions(ITEM, seed=0)
    assert attempts == F.insertions(ITEM, seed=0)
    assert 0 < len(attempts) <= F.INSERTIONS["positions"] * F.INSERTIONS["words_per_position"]
    for attempt in attempts:
        pool = dict(F.insertion_slots(getattr(ITEM, attempt.field)))[attempt.position]
        assert attempt.word in F.INSERTIONS[pool]
    per_slot: dict[tuple[str, int], list[str]] = {}
    for attempt in attempts:
        per_slot.setdefault((attempt.field, attempt.position), []).append(attempt.word)
    assert all(len(set(ws)) == len(ws) == F.INSERTIONS["words_per_position"] for ws in per_slot.values())
    items = load_esnli(30, 0)
    assert any(F.insertions(it, 0) != F.insertions(it, 1) for it in items)


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
    parts = F.segments(tiny_runtime, render)
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
    phi = F.word_attributions(tiny_runtime, ITEM, 0, "The man plays.", seed=0)
    assert phi is not None
    n_words = len(ITEM.premise.split()) + len(ITEM.hypothesis.split())
    answer_tail = tiny_runtime.encode([T.NLI_TEMPLATE["options"][0]], add_special_tokens=False)[0]
    assert phi.shape == (1 + len(tiny_runtime.encode([" The man plays."], add_special_tokens=False)[0]), n_words)
    parts = F.segments(tiny_runtime, lambda p, h: T.nli_prompt(tiny_runtime.tokenizer, p, h))
    mask = F.mask_token_id(tiny_runtime.tokenizer)

    def score(keep: bool) -> float:
        words = [tiny_runtime.encode([" " + w], add_special_tokens=False)[0] for w in ITEM.premise.split()], \
            [tiny_runtime.encode([" " + w], add_special_tokens=False)[0] for w in ITEM.hypothesis.split()]
        p, h = ([t if keep else mask for ids in group for t in ids] for group in words)
        seq = parts.around([p, h], answer_tail)
        return float(tiny_runtime.prefixed_tail_logprobs(parts.prefix, [seq], [len(answer_tail)])[0].sum())

    assert phi[0].sum() == pytest.approx(score(True) - score(False), abs=1e-3)


def test_empty_explanation_has_no_attribution(tiny_runtime: Any) -> None:  # noqa: F811
    assert F.word_attributions(tiny_runtime, ITEM, 0, "  ", seed=0) is None
    assert np.isnan(F.cc_shap_scores(tiny_runtime, [ITEM], np.array([0]), [""], seed=0)).all()  # scored -1 later


def test_suite_on_identical_models_gives_identical_values(tiny_runtime: Any, make_config: Any) -> None:  # noqa: F811
    pair = tiny_pair(tiny_runtime, make_config)
    result = F.run_nle_faithfulness(pair)
    label = [m.name for m in F.LABEL_METRICS.values()]
    assert set(result.reference) == {m.name for m in F.NLE_FAITHFULNESS_METRICS} - set(label)
    assert {k: v for k, v in result.skipped.items() if k.startswith("label_")} == dict.fromkeys(
        label, NO_CLASSIFICATION)
    assert len(result.item_ids) == 6 and result.item_ids[3].startswith("ecqa:")  # 3 e-SNLI, then 3 ECQA items
    for metric in result.reference:
        np.testing.assert_array_equal(result.reference[metric], result.quantized[metric])
    for prefix, part in (("", slice(0, 3)), ("ecqa_", slice(3, 6))):
        flip, unfaithful = result.reference[prefix + "flip"][part], result.reference[prefix + "unfaithful"][part]
        assert not np.isnan(flip).any() and not np.isnan(unfaithful).any()  # pinned: every item counts
        assert np.all(unfaithful <= flip)
    assert set(result.notes["precondition"]) == {"e-SNLI", "ECQA"}
    assert result.fingerprint["units_per_item"] == "8"


# --- real model (slow) ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_predictions_flip_under_insertions_and_the_test_is_defined(smollm: Any) -> None:  # noqa: F811
    """Insertions get their units, some but not all flip the prediction, and only a flip can be unfaithful.

    20 e-SNLI items (40 before: six CPU minutes of CI, for assertions on the units' structure and a flip rate).
    """
    items = load_esnli(20, 0)
    labels = T.predict_nli(smollm, [(item.premise, item.hypothesis) for item in items])
    result = F.counterfactual_test(smollm, items, labels, seed=0)
    units = np.array(result["units"])
    assert units.max() == 8 and (units == 8).mean() > 0.5  # up to 4 positions x 2 words, fewer on short items
    assert result["flipped"].size == units.sum()
    assert 0.05 < result["flipped"].mean() < 0.9
    assert np.all(result["unfaithful"] <= result["flipped"])
