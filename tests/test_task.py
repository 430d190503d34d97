"""Task accuracy suite: prompts, option scoring, accuracy and agreement definitions, cached predictions."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from pytest_qxai.datasets import NLI_LABELS, MCQItem, load_ecqa, load_esnli
from pytest_qxai.methods import task as T
from test_attribution import smollm, tiny_pair, tiny_runtime  # noqa: F401 - shared model fixtures
from tiny import TINY_TEXTS


def test_agreement_is_one_on_the_reference_side_and_kappa_shares_on_the_quantized_side() -> None:
    """Chance agreement 5/16 from the label shares (1/4, 1/2, 1/4) and (1/4, 1/4, 1/2): a miss scores -5/11."""
    reference, quantized = T.agreement(np.array([0, 1, 2, 1]), np.array([0, 2, 2, 1]))
    assert reference.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert quantized == pytest.approx([1.0, -5 / 11, 1.0, 1.0])


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=2, max_size=50))
def test_agreement_averages_to_cohens_kappa_and_is_complete_for_identical_predictions(
        pairs: list[tuple[int, int]]) -> None:
    from sklearn.metrics import cohen_kappa_score

    ref, quant = (np.array(side) for side in zip(*pairs))
    reference, quantized = T.agreement(ref, quant)
    assert np.all(reference == 1.0)
    assert np.all(T.agreement(ref, ref)[1] == 1.0)  # one label throughout included (kappa 0/0 reads as 1)
    if len(set(ref.tolist()) | set(quant.tolist())) > 1:
        assert quantized.mean() == pytest.approx(cohen_kappa_score(ref, quant), abs=1e-9)


def test_labels_at_random_agree_at_about_zero_not_at_their_chance_rate() -> None:
    rng = np.random.default_rng(0)
    _, quantized = T.agreement(rng.integers(0, 3, 3000), rng.integers(0, 3, 3000))
    assert abs(quantized.mean()) < 0.03


def test_predictions_pick_the_best_option_and_score_it_against_gold() -> None:
    logprobs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]]))
    predictions = T.Predictions(("a", "b", "c"), logprobs, np.array([0, 1, 1]))
    assert predictions.predicted.tolist() == [0, 2, 1]
    assert predictions.correct.tolist() == [1.0, 0.0, 1.0]
    assert predictions.head(2).item_ids == ("a", "b") and predictions.head(2).correct.tolist() == [1.0, 0.0]


def test_nli_prompt_uses_the_chat_template_when_the_tokenizer_has_one() -> None:
    chat = SimpleNamespace(chat_template="x",
                           apply_chat_template=lambda messages, **_: f"<u>{messages[0]['content']}<a>")
    plain = SimpleNamespace(chat_template=None)
    question = ("Premise: A dog runs.\nHypothesis: An animal moves.\n"
                "Does the premise imply the hypothesis? Answer yes, maybe or no.")
    assert T.nli_prompt(chat, "A dog runs.", "An animal moves.") == f"<u>{question}<a>"
    assert T.nli_prompt(plain, "A dog runs.", "An animal moves.") == question + "\nAnswer:"
    assert len(T.NLI_TEMPLATE["options"]) == len(NLI_LABELS)


def test_mcq_prompt_is_three_shot_cloze_with_validation_demos_never_evaluated() -> None:
    prompt = T.mcq_prompt("Where is the cat?")
    assert prompt.endswith("\n\nQuestion: Where is the cat?\nAnswer:")
    assert prompt.startswith("Question: What does someone typically feel when applying for a job?\nAnswer: anxiety")
    assert prompt.count("Question:") == 4
    evaluated = {item.question for item in load_ecqa(None, 0)}
    assert not evaluated & {question for question, _ in T.MCQ_TEMPLATE["demos"]}


def test_single_token_options_score_like_teacher_forcing(tiny_runtime: Any) -> None:  # noqa: F811
    candidates = sorted({w for text in TINY_TEXTS for w in text.replace(".", " ").replace(",", " ").split()})
    single = [f" {w}" for w in candidates if len(tiny_runtime.encode([f" {w}"], add_special_tokens=False)[0]) == 1]
    options = single[:3]
    assert len(options) == 3
    prompts = TINY_TEXTS[:4]
    fast = T.option_scores(tiny_runtime, prompts, options)
    slow = np.stack(tiny_runtime.option_logprobs(prompts, [options] * len(prompts)))
    np.testing.assert_allclose(fast, slow, atol=1e-4)


def test_options_differing_in_their_last_token_score_like_teacher_forcing_up_to_a_shared_term(
    tiny_runtime: Any,  # noqa: F811
) -> None:
    options = (" 1", " 2", " 3", " 4", " 5")  # a space token, then a digit (as in SmolLM2's tokenizer)
    ids = tiny_runtime.encode(list(options), add_special_tokens=False)
    assert all(len(i) == 2 and i[0] == ids[0][0] for i in ids)
    prompts = ["The cat sat on the mat.", "Two plus two equals four."]
    fast = T.option_scores(tiny_runtime, prompts, options)
    forced = np.stack(tiny_runtime.option_logprobs(prompts, [options] * 2))
    shared = forced - fast
    np.testing.assert_allclose(shared, shared[:, :1].repeat(5, axis=1), atol=1e-4)
    assert (shared < 0).all()  # the left-out term is the shared token's log-probability


def test_multi_token_options_fall_back_to_teacher_forcing(tiny_runtime: Any) -> None:  # noqa: F811
    options = (" quick brown fox", " lazy dog")
    prompts = TINY_TEXTS[:2]
    scores = T.option_scores(tiny_runtime, prompts, options)
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores, np.stack(tiny_runtime.option_logprobs(prompts, [options] * 2)), atol=1e-6)


def test_mcq_scores_share_the_prompt_and_equal_teacher_forcing(tiny_runtime: Any) -> None:  # noqa: F811
    items = [MCQItem("a", "Where is the cat?", ("on the mat", "in Paris", "at sea level"), "on the mat", "e"),
             MCQItem("b", "What boils?", ("water", "the quick brown fox"), "water", "e")]
    scores = T.mcq_logprobs(tiny_runtime, items)
    assert scores.shape == (2, 3) and scores[1, 2] == -np.inf
    for row, item in enumerate(items):
        options = [f" {o}" for o in item.options]
        forced = tiny_runtime.option_logprobs([T.mcq_prompt(item.question)], [options])[0]
        np.testing.assert_allclose(scores[row, : len(options)], forced, atol=1e-4)


def test_suite_on_identical_models_agrees_everywhere_and_keeps_datasets_apart(
    tiny_runtime: Any, make_config: Any  # noqa: F811
) -> None:
    pair = tiny_pair(tiny_runtime, make_config)
    result = T.run_task_accuracy(pair)
    n = 3
    assert result.item_ids[:n] == [f"esnli:{item.id}" for item in load_esnli(n, 0)]
    assert result.item_ids[n:] == [f"ecqa:{item.id}" for item in load_ecqa(n, 0)]
    for side in (result.reference, result.quantized):
        assert np.isnan(side["esnli_accuracy"][n:]).all() and not np.isnan(side["esnli_accuracy"][:n]).any()
        assert np.isnan(side["ecqa_accuracy"][:n]).all() and not np.isnan(side["ecqa_accuracy"][n:]).any()
    assert np.nansum(result.quantized["esnli_agreement"]) == n and np.nansum(result.quantized["ecqa_agreement"]) == n
    assert {m.name for m in T.TASK_METRICS} == set(result.reference)


def test_shared_predictions_are_a_prefix_of_the_task_suites_items(
    tiny_runtime: Any, make_config: Any  # noqa: F811
) -> None:
    pair = tiny_pair(tiny_runtime, make_config)
    pair.config = make_config(samples=4)
    full = T.nli_predictions(pair, pair.reference, 4)
    head = T.nli_predictions(pair, pair.reference, 2)
    assert head.item_ids == full.item_ids[:2]
    np.testing.assert_array_equal(head.logprobs, full.logprobs[:2])


# --- real model (slow) ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_esnli_accuracy_is_significantly_above_chance(smollm: Any) -> None:  # noqa: F811
    items = load_esnli(300, 0)
    predicted = T.predict_nli(smollm, [(item.premise, item.hypothesis) for item in items])
    correct = int(sum(NLI_LABELS[p] == item.label for p, item in zip(predicted, items)))
    assert binomtest(correct, len(items), 1 / 3, alternative="greater").pvalue < 0.05


@pytest.mark.slow
def test_smollm2_ecqa_accuracy_is_well_above_chance(smollm: Any) -> None:  # noqa: F811
    items = load_ecqa(60, 0)
    predicted = np.argmax(T.mcq_logprobs(smollm, items), axis=1)
    correct = int(sum(item.options[p] == item.answer for p, item in zip(predicted, items)))
    assert correct / len(items) > 0.3
    assert binomtest(correct, len(items), 1 / 5, alternative="greater").pvalue < 0.01
