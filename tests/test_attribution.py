"""Attribution suite: ERASER formulas by hand, agreement measures, word features, and captum plumbing."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai.datasets import NLIItem
from pytest_qxai.errors import QxaiError
from pytest_qxai.methods import attribution as A
from pytest_qxai.methods import task

ITEM = NLIItem("x", "A dog runs in the park.", "An animal moves.", "entailment", ("dogs are animals",))


# --- formulas by hand -------------------------------------------------------------------------------------

def test_aopc_is_the_mean_probability_drop_over_the_erasure_levels() -> None:
    # p(y|x) = 0.9; after erasing the top 1, 5, 10, 20, 50 %: 0.5, 0.3, 0.2, 0.1, 0.0
    # drops 0.4, 0.6, 0.7, 0.8, 0.9 -> mean 3.4 / 5 = 0.68
    got = A.aopc(np.array([0.9]), np.array([[0.5, 0.3, 0.2, 0.1, 0.0]]))
    assert got == pytest.approx([0.68])


def test_aopc_is_negative_when_erasing_raises_the_probability() -> None:
    # sufficiency can be negative: keeping only the top words makes the model more confident
    got = A.aopc(np.array([0.5, 0.2]), np.array([[0.7, 0.6, 0.5, 0.5, 0.2], [0.2] * 5]))
    assert got == pytest.approx([(-0.2 - 0.1 + 0 + 0 + 0.3) / 5, 0.0])


@pytest.mark.parametrize(("n", "expected"), [(20, [1, 1, 2, 4, 10]), (7, [1, 1, 1, 2, 4]), (1, [1, 1, 1, 1, 1]),
                                             (200, [2, 10, 20, 40, 100])])
def test_top_k_percent_is_rounded_up_to_at_least_one_word(n: int, expected: list[int]) -> None:
    assert A.k_counts(n) == expected


def test_topk_overlap_counts_shared_top_features() -> None:
    a = np.array([3.0, 2.0, 1.0, 0.0])  # top 2: {0, 1}
    b = np.array([0.0, 2.0, 3.0, 1.0])  # top 2: {2, 1}
    assert A.topk_overlap(a, b, 2) == 0.5
    assert A.topk_overlap(a, a, 3) == 1.0
    assert A.topk_overlap(a, -a, 2) == 0.0


def test_rank_correlation_on_tiny_vectors() -> None:
    assert A.rank_correlation(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert A.rank_correlation(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # one swapped pair of three: 1 - 6 * (0 + 1 + 1) / (3 * (9 - 1)) = 0.5
    assert A.rank_correlation(np.array([1, 2, 3]), np.array([1, 3, 2])) == pytest.approx(0.5)
    assert math.isnan(A.rank_correlation(np.array([1, 1, 1]), np.array([1, 2, 3])))


def test_agreement_uses_the_top_twenty_percent() -> None:
    ref = [np.arange(10.0)]  # top 2 of 10: {9, 8}
    quant = [np.array([0, 1, 2, 3, 4, 5, 6, 7, 10, -1.0])]  # top 2: {8, 7}
    rho, overlap = A.agreement(ref, quant)
    assert overlap == pytest.approx([(0.5 - 0.2) / (1 - 0.2)])  # half shared, beyond the 2/10 of chance
    assert -1 <= rho[0] <= 1


def test_overlap_of_random_rankings_is_about_zero_after_chance_correction() -> None:
    rng = np.random.default_rng(0)
    values = [A.chance_corrected_overlap(rng.random(15), rng.random(15), 3) for _ in range(4000)]
    assert abs(np.mean(values)) < 0.02
    assert A.chance_corrected_overlap(np.arange(5.0), np.arange(5.0), 5) != A.chance_corrected_overlap(
        np.arange(5.0), np.arange(5.0), 5)  # k = n: every word is in the top k, nothing to compare (NaN)


unique_ints = st.lists(st.integers(-1000, 1000), min_size=2, max_size=30, unique=True)


@settings(max_examples=100, deadline=None)
@given(unique_ints, st.data())
def test_topk_overlap_is_symmetric_and_in_unit_interval(a: list[int], data: st.DataObject) -> None:
    b = data.draw(st.permutations(a))
    k = data.draw(st.integers(1, len(a)))
    va, vb = np.array(a, dtype=float), np.array(b, dtype=float)
    value = A.topk_overlap(va, vb, k)
    assert 0.0 <= value <= 1.0
    assert value == A.topk_overlap(vb, va, k)


@settings(max_examples=100, deadline=None)
@given(unique_ints, st.data())
def test_rank_correlation_is_invariant_to_monotone_transforms(a: list[int], data: st.DataObject) -> None:
    b = np.array(data.draw(st.permutations(a)), dtype=float)
    va = np.array(a, dtype=float)
    rho = A.rank_correlation(va, b)
    assert A.rank_correlation(va ** 3, 2 * b + 7) == pytest.approx(rho)
    assert A.rank_correlation(np.exp(va / 100), b) == pytest.approx(rho)
    assert -1.0 - 1e-12 <= rho <= 1.0 + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.lists(st.floats(0, 1), min_size=5, max_size=5)), min_size=1,
                max_size=10))
def test_aopc_of_probabilities_is_bounded_and_zero_without_change(rows: list[tuple[float, list[float]]]) -> None:
    full = np.array([r[0] for r in rows])
    erased = np.array([r[1] for r in rows])
    got = A.aopc(full, erased)
    assert np.all((got >= -1.0) & (got <= 1.0))
    assert np.allclose(A.aopc(full, np.repeat(full[:, None], 5, axis=1)), 0.0)


# --- words, prompts, erasure ------------------------------------------------------------------------------

class _Plain:
    """A tokenizer stand-in without a chat template (the task prompt then ends in "\\nAnswer:")."""

    chat_template = None


PLAIN: Any = _Plain()


def test_layout_locates_every_word_in_the_rendered_prompt() -> None:
    premise, hypothesis = A.item_words(ITEM)
    lay = A.layout(PLAIN, premise, hypothesis)
    assert lay.prompt == task.nli_prompt(PLAIN, ITEM.premise, ITEM.hypothesis)
    assert [lay.prompt[lo:hi] for lo, hi in lay.spans] == premise + hypothesis


def test_layout_finds_the_item_after_a_repeated_word_in_the_template() -> None:
    lay = A.layout(PLAIN, ["Premise:"], ["Hypothesis:", "yes"])  # words that also occur in the template
    assert [lay.prompt[lo:hi] for lo, hi in lay.spans] == ["Premise:", "Hypothesis:", "yes"]
    assert lay.spans[0][0] > lay.prompt.index("Premise:")


def test_erasure_deletes_the_top_words_or_keeps_only_them() -> None:
    premise, hypothesis = ["A", "dog", "runs."], ["An", "animal."]
    scores = np.array([0.0, 0.9, 0.1, 0.2, 0.8])  # ranking: dog, animal., An, runs., A
    comp, suff = A.erasure_prompts(PLAIN, premise, hypothesis, scores)
    assert A.k_counts(5) == [1, 1, 1, 1, 3]
    assert comp[0] == task.nli_prompt(PLAIN, "A runs.", "An animal.")
    assert suff[0] == task.nli_prompt(PLAIN, "dog", "")
    assert comp[4] == task.nli_prompt(PLAIN, "A runs.", "")
    assert suff[4] == task.nli_prompt(PLAIN, "dog", "An animal.")


# --- captum plumbing on a tiny random model (evidence that code runs, not that a metric means anything) --

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_runtime(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pytest_qxai.models.loading import load_reference, load_tokenizer
    from pytest_qxai.runtime import Runtime
    from tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    tokenizer = load_tokenizer(folder, revision=None, trust_remote_code=False)
    tokenizer.chat_template = "<|user|>{{ messages[0]['content'] }}\n<|assistant|>"
    model = load_reference(folder, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    return Runtime(model, tokenizer, batch_size=2)


@pytest.fixture
def tiny_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Label options that are single tokens under the tiny tokenizer (' yes' is not)."""
    monkeypatch.setitem(task.NLI_TEMPLATE, "options", ("y", "m", "n"))
    monkeypatch.setattr(A, "IG_STEPS", 4)


def tiny_pair(runtime: Any, make_config: Any, quantized_backward: tuple[bool, str] = (True, "ok")) -> Any:
    """A pair of the tiny model and an independent copy of it, on 3 items (:func:`test_arch.tiny_pair`)."""
    from test_arch import tiny_pair as twin_pair

    return twin_pair(runtime, make_config(samples=3), quantized_backward=quantized_backward)


ITEMS = [ITEM, NLIItem("y", "The cat sat on the mat.", "A cat sits.", "entailment", ("same",)),
         NLIItem("z", "Two plus two equals four.", "Math is wrong.", "contradiction", ("no",))]


def test_layout_with_a_chat_template_maps_tokens_to_words(tiny_runtime: Any) -> None:
    lay = A.layout(tiny_runtime.tokenizer, *A.item_words(ITEM))
    assert lay.prompt.startswith("<|user|>Premise: ")
    word_of = _words_of(tiny_runtime, lay)
    enc = tiny_runtime.tokenizer([lay.prompt], return_offsets_mapping=True)
    for w, (lo, hi) in enumerate(lay.spans):
        pieces = [enc["offset_mapping"][0][t] for t in np.flatnonzero(word_of == w)]
        assert pieces and pieces[0][0] <= lo and pieces[-1][1] >= hi


def _label_prob(runtime: Any, label: int, embeds: Any) -> Any:
    logits = runtime.model(inputs_embeds=embeds).logits[0, -1]
    return torch.softmax(logits[A.option_token_ids(runtime)], -1)[label]


def _words_of(runtime: Any, lay: A.Layout) -> np.ndarray:
    enc = runtime.tokenizer([lay.prompt], return_offsets_mapping=True, return_tensors="pt")
    return A._token_words(enc["offset_mapping"], enc["attention_mask"], [lay.spans])[0]


def _embeds(runtime: Any, lay: A.Layout) -> Any:
    ids = torch.tensor([runtime.encode([lay.prompt])[0]])
    return runtime.model.get_input_embeddings()(ids).detach()


@pytest.mark.usefixtures("tiny_options")
def test_integrated_gradients_equal_a_quadrature_of_autograd_gradients(tiny_runtime: Any) -> None:
    layouts = [A.layout(tiny_runtime.tokenizer, *A.item_words(it)) for it in ITEMS]
    labels = np.array([0, 1, 2])
    got = A.word_attributions(tiny_runtime, layouts, labels, "integrated_gradients")  # batched, left-padded
    nodes, weights = np.polynomial.legendre.leggauss(A.IG_STEPS)  # captum's default: Gauss-Legendre on [0, 1]
    for lay, label, scores in zip(layouts, labels, got):
        x = _embeds(tiny_runtime, lay)
        word_of = _words_of(tiny_runtime, lay)
        baseline = x * torch.as_tensor(word_of < 0).unsqueeze(-1)
        total = torch.zeros_like(x)
        for alpha, weight in zip((nodes + 1) / 2, weights / 2):
            point = (baseline + float(alpha) * (x - baseline)).requires_grad_(True)
            _label_prob(tiny_runtime, int(label), point).backward()
            total += float(weight) * point.grad
        per_token = ((x - baseline) * total).sum(-1)[0].numpy()
        expected = [per_token[word_of == w].sum() for w in range(len(lay.spans))]
        assert np.allclose(scores, expected, atol=1e-5)


@pytest.mark.usefixtures("tiny_options")
def test_occlusion_is_the_probability_drop_when_a_word_is_zeroed(tiny_runtime: Any) -> None:
    lay = A.layout(tiny_runtime.tokenizer, *A.item_words(ITEMS[1]))
    got = A.word_attributions(tiny_runtime, [lay], np.array([2]), "occlusion")[0]
    word_of = _words_of(tiny_runtime, lay)
    with torch.no_grad():
        x = _embeds(tiny_runtime, lay)
        full = _label_prob(tiny_runtime, 2, x)
        for w in range(len(lay.spans)):
            blanked = x.clone()
            blanked[0, torch.as_tensor(word_of == w)] = 0.0
            assert got[w] == pytest.approx(float(full - _label_prob(tiny_runtime, 2, blanked)), abs=1e-5)


@pytest.mark.usefixtures("tiny_options")
def test_occlusion_is_batch_independent(tiny_runtime: Any) -> None:
    layouts = [A.layout(tiny_runtime.tokenizer, *A.item_words(it)) for it in ITEMS]
    together = A.word_attributions(tiny_runtime, layouts, np.array([0, 1, 2]), "occlusion")
    alone = A.word_attributions(tiny_runtime, layouts[2:], np.array([2]), "occlusion")
    assert [len(s) for s in together] == [len(lay.spans) for lay in layouts]
    assert np.allclose(together[2], alone[0], atol=1e-5)


@pytest.mark.usefixtures("tiny_options")
def test_erasure_scores_match_label_probabilities_by_hand(tiny_runtime: Any) -> None:
    tok = tiny_runtime.tokenizer
    labels = np.array([1, 0, 2])
    scores = [np.arange(len(sum(A.item_words(it), [])), dtype=float) for it in ITEMS]
    comp, suff = A.erasure_scores(tiny_runtime, ITEMS, labels, scores)
    c_prompts, s_prompts = A.erasure_prompts(tok, *A.item_words(ITEMS[0]), scores[0])
    with torch.no_grad():
        def prob(prompt: str) -> float:
            return float(_label_prob(tiny_runtime, 1, _embeds(tiny_runtime, A.Layout(prompt, ()))))

        full = prob(task.nli_prompt(tok, ITEMS[0].premise, ITEMS[0].hypothesis))
        assert comp[0] == pytest.approx(np.mean([full - prob(p) for p in c_prompts]), abs=1e-5)
        assert suff[0] == pytest.approx(np.mean([full - prob(p) for p in s_prompts]), abs=1e-5)


def test_multi_token_label_options_are_refused(tiny_runtime: Any) -> None:
    with pytest.raises(QxaiError, match="single-token label options"):
        A.option_token_ids(tiny_runtime)  # ' yes', ' maybe', ' no' are several tokens in the tiny vocabulary


@pytest.mark.usefixtures("tiny_options")
def test_identical_models_agree_perfectly_and_score_alike(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(A, "gradient_plan", lambda pair: None)
    result = A.run_attribution(tiny_pair(tiny_runtime, make_config))
    assert result.notes["attribution_method"]["quantized"] == ["occlusion", "integrated_gradients"]
    assert all(reason.startswith("not applicable: ") for reason in result.skipped.values())  # tiny is at chance
    assert set(result.reference) == {m.name for m in A.ATTRIBUTION_METRICS}
    for name in ("rank_correlation", "topk_overlap", "ig_rank_correlation", "ig_topk_overlap"):
        assert result.reference[name].tolist() == [1.0] * 3
        assert np.allclose(result.quantized[name], 1.0)
    for name in ("comprehensiveness", "ig_sufficiency"):
        assert np.allclose(result.reference[name], result.quantized[name])


@pytest.mark.usefixtures("tiny_options")
def test_without_backward_only_occlusion_runs_and_ig_metrics_say_why(tiny_runtime: Any, make_config: Any) -> None:
    pair = tiny_pair(tiny_runtime, make_config, (False, "backward failed: NotImplementedError"))
    result = A.run_attribution(pair)
    assert result.notes["attribution_method"] == {"reference": ["occlusion"], "quantized": ["occlusion"]}
    assert {m.name for m in A.IG_METRICS} <= set(result.skipped)
    assert all("quantized: backward failed" in result.skipped[m.name] for m in A.IG_METRICS)
    assert result.quantized["comprehensiveness"].shape == (3,)


@pytest.mark.usefixtures("tiny_options")
def test_both_sides_attribute_the_references_label(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = task.nli_predictions

    def other_label_on_the_quantized_side(pair: Any, side: Any, n: int) -> Any:
        predictions = real(pair, side, n)
        if side.role == "reference":
            return predictions
        return dataclasses.replace(predictions, logprobs=np.roll(predictions.logprobs, 1, axis=1))

    monkeypatch.setattr(task, "nli_predictions", other_label_on_the_quantized_side)
    result = A.run_attribution(tiny_pair(tiny_runtime, make_config, (False, "no backward")))
    assert result.notes["items_where_the_quantized_model_predicts_another_label"] == 3
    for name in ("comprehensiveness", "sufficiency", "rank_correlation", "topk_overlap"):  # same model, same label
        assert np.allclose(result.reference[name], result.quantized[name]), name


def test_integrated_gradients_are_skipped_on_a_cpu(tiny_runtime: Any, make_config: Any) -> None:
    assert "GPU" in str(A.gradient_plan(tiny_pair(tiny_runtime, make_config)))


# --- real model (slow) ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pytest_qxai.models.loading import load_reference, load_tokenizer, materialize
    from pytest_qxai.models.source import default_source
    from pytest_qxai.runtime import Runtime

    cache = Path.home() / ".cache" / "pytest-qxai"
    location, _ = materialize(default_source(), cache, tmp_path_factory.mktemp("scratch"))
    tokenizer = load_tokenizer(location, revision=None, trust_remote_code=False)
    model = load_reference(location, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    return Runtime(model, tokenizer)


@pytest.mark.slow
def test_occlusion_ranking_is_more_comprehensive_and_sufficient_than_a_random_ranking(smollm: Any) -> None:
    from pytest_qxai.datasets import load_esnli

    items = load_esnli(20, 0)
    labels = task.predict_nli(smollm, [(it.premise, it.hypothesis) for it in items])
    layouts = [A.layout(smollm.tokenizer, *A.item_words(it)) for it in items]
    scores = A.word_attributions(smollm, layouts, labels, "occlusion")
    rng = np.random.default_rng(0)
    random = [rng.permutation(len(s)).astype(float) for s in scores]
    comp, suff = A.erasure_scores(smollm, items, labels, scores)
    comp_random, suff_random = A.erasure_scores(smollm, items, labels, random)
    assert comp.mean() > comp_random.mean() + 0.02
    assert suff.mean() < suff_random.mean() - 0.02
