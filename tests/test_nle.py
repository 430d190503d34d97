"""NLE suite: explanation and judge templates, the expected-rating judge score, quality metrics, agreement."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.datasets import NLIItem, load_esnli
from pytest_qxai.methods import nle as N
from pytest_qxai.methods import task as T
from test_attribution import smollm, tiny_pair, tiny_runtime  # noqa: F401 - shared model fixtures
from tiny import NO_CLASSIFICATION

ITEM = NLIItem("x", "A dog runs in the park.", "An animal moves.", "entailment", ("A dog is an animal.",))


def test_explanation_prompt_shows_the_label_to_explain_after_three_dev_demonstrations() -> None:
    prompt = N.explanation_prompt(ITEM.premise, ITEM.hypothesis, "contradiction")
    assert prompt.endswith(
        "\n\nPremise: A dog runs in the park.\nHypothesis: An animal moves.\nRelationship: contradiction\nExplanation:"
    )
    assert prompt.count("Explanation:") == 4
    assert {label for _, _, label, _ in N.NLE_TEMPLATE["demos"]} == {"entailment", "neutral", "contradiction"}
    evaluated = {(item.premise, item.hypothesis) for item in load_esnli(None, 0)}
    assert not evaluated & {(p, h) for p, h, _, _ in N.NLE_TEMPLATE["demos"]}


def test_judge_prompt_shows_item_label_explanation_and_the_question() -> None:
    [prompt] = N.judge_prompts([ITEM], [2], ["Dogs are animals."], "trust")
    assert prompt == ("Premise: A dog runs in the park.\nHypothesis: An animal moves.\nRelationship: contradiction\n"
                      "Explanation: Dogs are animals.\n" + N.JUDGE_TEMPLATE["trust"])
    assert prompt.endswith("\nRating:")


def test_expected_rating_by_hand() -> None:
    assert N.expected_rating(np.log([[1e-12, 1e-12, 1e-12, 1e-12, 1.0]]))[0] == pytest.approx(5.0)
    assert N.expected_rating(np.zeros((1, 5)))[0] == pytest.approx(3.0)
    assert N.expected_rating(np.array([[0.0, 0.0, -np.inf, -np.inf, -np.inf]]))[0] == pytest.approx(1.5)


@given(st.lists(st.floats(-30, 0), min_size=5, max_size=5), st.floats(-50, 50))
def test_expected_rating_lies_in_the_scale_and_ignores_a_shared_offset(logprobs: list[float], shift: float) -> None:
    rating = N.expected_rating(np.array([logprobs]))[0]
    assert 1.0 - 1e-9 <= rating <= 5.0 + 1e-9
    assert N.expected_rating(np.array([logprobs]) + shift)[0] == pytest.approx(rating, abs=1e-9)


def test_log_perplexity_is_the_mean_token_nll_and_nan_when_empty() -> None:
    scorer = SimpleNamespace(tokenizer=SimpleNamespace(bos_token="<s>"),
                             token_nll=lambda texts: [np.array([1.0, 2.0, 3.0]) for _ in texts])
    out = N.log_perplexity(scorer, ["some text", "  "])  # type: ignore[arg-type]
    assert out[0] == pytest.approx(2.0) and np.isnan(out[1])


def test_gold_similarity_takes_the_closest_reference_and_zero_for_empty() -> None:
    refs = [("A dog is an animal.", "The weather is cold today."), ("Cats sleep a lot.",)]
    sims = N.gold_similarity(["The weather is cold today.", ""], refs)
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] == 0.0


def test_identical_explanations_agree_exactly_and_different_ones_less() -> None:
    agree = N.explanation_agreement(["Dogs are animals.", "Dogs are animals."],
                                    ["Dogs are animals. ", "The stock market fell sharply."])
    assert agree[0] == 1.0 and agree[1] < 0.5


def test_an_empty_quantized_explanation_agrees_worst_and_agreement_stays_within_its_bounds() -> None:
    """An empty text is no explanation: -1, not the chance-corrected cosine of an empty string's embedding (about 0)."""
    reference = ["A dog is an animal.", "The man is sleeping outside.", "Two people play chess.", "It is raining."]
    agree = N.explanation_agreement(reference, ["", "The man sleeps outdoors.", " ", "Stocks fell sharply today."])
    assert agree[0] == agree[2] == -1.0 and agree[1] > 0
    assert ((agree >= -1.0) & (agree <= 1.0)).all()
    assert N.explanation_agreement(["", "x y"], ["", "z"])[0] == 1.0  # both empty: identical texts


def test_default_judge_is_the_reference_model_identified_by_its_weights_not_the_machine() -> None:
    """The judge is in the baseline's fingerprint: another CPU or torch version (another cache identity of the
    reference) must not make a stored baseline stale."""
    identities = set()
    for machine_identity in ("abc123", "def456"):
        reference = SimpleNamespace(runtime="ref-runtime", identity=machine_identity)
        pair = SimpleNamespace(config=SimpleNamespace(judge=None), reference=reference,
                               metadata={"model": "M", "model_hash": "c0ffee"})
        runtime, identity = N.judge(pair)  # type: ignore[arg-type]
        assert runtime == "ref-runtime" and "c0ffee" in identity and machine_identity not in identity
        identities.add(identity)
    assert len(identities) == 1


def test_a_configured_judge_is_loaded_once_and_identified_by_its_content(
    tiny_runtime: Any, make_config: Any, tmp_path: Any  # noqa: F811
) -> None:
    from tiny import build_tiny_model

    folder = build_tiny_model(tmp_path, seed=1)
    pair = tiny_pair(tiny_runtime, make_config)
    pair.config = make_config(judge=str(folder), cache_dir=tmp_path / "cache")
    runtime, identity = N.judge(pair)
    assert runtime is not tiny_runtime and runtime.model is not tiny_runtime.model
    assert identity.startswith("tiny-llama (sha256:")
    assert N.judge(pair)[0] is runtime


def test_suite_on_identical_models_gives_identical_values_and_full_agreement(
    tiny_runtime: Any, make_config: Any  # noqa: F811
) -> None:
    pair = tiny_pair(tiny_runtime, make_config)
    result = N.run_nle(pair)
    assert set(result.reference) == {m.name for m in [*N.ESNLI_METRICS, *N.ECQA_METRICS.values()]}
    assert {k: v for k, v in result.skipped.items() if k.startswith("label_")} == dict.fromkeys(
        [m.name for m in N.LABEL_METRICS.values()], NO_CLASSIFICATION)
    assert result.item_ids[3:] == [f"ecqa:{it.id}" for it in T.ecqa_items(pair, 3)]  # 3 e-SNLI, then 3 ECQA items
    agreement = result.quantized["fp_agreement"][:3], result.quantized["ecqa_fp_agreement"][3:]
    assert [a.tolist() for a in agreement] == [[1.0] * 3] * 2
    for metric, values in result.reference.items():
        np.testing.assert_array_equal(values, result.quantized[metric])
        part = slice(3, 6) if metric.startswith("ecqa_") else slice(0, 3)
        assert not np.isnan(values[part]).any() and np.isnan(np.delete(values, np.arange(6)[part])).all(), metric
    assert all(1.0 <= r <= 5.0 for r in result.reference["judge_coherence"][:3])
    assert set(result.notes["precondition"]) == {"e-SNLI", "ECQA"}
    assert result.notes["judge"].startswith("reference model")


# --- real model (slow) ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_explanations_are_closer_to_their_own_items_gold_than_to_other_items(
    smollm: Any,  # noqa: F811
) -> None:
    items = load_esnli(24, 0)
    pairs = [(item.premise, item.hypothesis) for item in items]
    explanations = N.explain(smollm, pairs, T.predict_nli(smollm, pairs))
    golds = [item.explanations for item in items]
    own = N.gold_similarity(explanations, golds)
    other = N.gold_similarity(explanations, golds[1:] + golds[:1])
    assert np.mean(own > other) > 0.75
    assert own.mean() > other.mean() + 0.15


@pytest.mark.slow
def test_smollm2_judge_rates_an_items_gold_explanation_above_another_items(smollm: Any) -> None:  # noqa: F811
    items = load_esnli(40, 0)
    labels = [["entailment", "neutral", "contradiction"].index(item.label) for item in items]
    gold = [item.explanations[0] for item in items]
    own = N.judge_ratings(smollm, items, labels, gold, "coherence")
    other = N.judge_ratings(smollm, items, labels, gold[1:] + gold[:1], "coherence")
    assert np.mean(own > other) > 0.65
