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

from pytest_qxai.datasets import MCQItem, NLIItem
from pytest_qxai.methods import attribution as A
from pytest_qxai.methods import task

ITEM = NLIItem("x", "A dog runs in the park.", "An animal moves.", "entailment", ("dogs are animals",))
NLI = task.LabelTask("esnli", "nli", task.NLI_LABELS)
ECQA = task.MCQ_TASK


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
    premise, hypothesis = A.item_words(NLI, ITEM)
    lay = A.layout(PLAIN, NLI, [premise, hypothesis])
    assert lay.prompt == task.nli_prompt(PLAIN, ITEM.premise, ITEM.hypothesis)
    assert [lay.prompt[lo:hi] for lo, hi in lay.spans] == premise + hypothesis


def test_layout_finds_the_item_after_a_repeated_word_in_the_template() -> None:
    lay = A.layout(PLAIN, NLI, [["Premise:"], ["Hypothesis:", "yes"]])  # words that also occur in the template
    assert [lay.prompt[lo:hi] for lo, hi in lay.spans] == ["Premise:", "Hypothesis:", "yes"]
    assert lay.spans[0][0] > lay.prompt.index("Premise:")


def test_erasure_deletes_the_top_words_or_keeps_only_them() -> None:
    premise, hypothesis = ["A", "dog", "runs."], ["An", "animal."]
    scores = np.array([0.0, 0.9, 0.1, 0.2, 0.8])  # ranking: dog, animal., An, runs., A
    comp, suff = A.erasure_prompts(PLAIN, NLI, [premise, hypothesis], scores)
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
    lay = A.layout(tiny_runtime.tokenizer, NLI, A.item_words(NLI, ITEM))
    assert lay.prompt.startswith("<|user|>Premise: ")
    word_of = _words_of(tiny_runtime, lay)
    ((_, offsets),) = tiny_runtime.encode_with_offsets([lay.prompt])
    for w, (lo, hi) in enumerate(lay.spans):
        pieces = [offsets[t] for t in np.flatnonzero(word_of == w)]
        assert pieces and pieces[0][0] <= lo and pieces[-1][1] >= hi


def _label_prob(runtime: Any, label: int, embeds: Any) -> Any:
    logits = runtime.model(inputs_embeds=embeds).logits[0, -1]
    options = [ids[0] for ids in runtime.encode(list(NLI.options), add_special_tokens=False)]
    return torch.softmax(logits[options], -1)[label]


def _words_of(runtime: Any, lay: A.Layout) -> np.ndarray:
    ((_, offsets),) = runtime.encode_with_offsets([lay.prompt])
    return A._token_words([offsets], len(offsets), [lay.spans])[0]


def _embeds(runtime: Any, lay: A.Layout) -> Any:
    ids = torch.tensor([runtime.encode([lay.prompt])[0]])
    return runtime.model.get_input_embeddings()(ids).detach()


@pytest.mark.usefixtures("tiny_options")
def test_integrated_gradients_equal_a_quadrature_of_autograd_gradients(tiny_runtime: Any) -> None:
    layouts = [A.layout(tiny_runtime.tokenizer, NLI, A.item_words(NLI, it)) for it in ITEMS]
    labels = np.array([0, 1, 2])
    got = A.word_attributions(tiny_runtime, NLI.options, layouts, labels, "integrated_gradients")  # batched, left-padded
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
@pytest.mark.parametrize("bos_template", [False, True], ids=["plain", "template_writes_bos"])
def test_occlusion_is_the_probability_drop_when_a_word_is_zeroed(
    tiny_runtime: Any, tmp_path: Path, bos_template: bool
) -> None:
    """By hand on the runtime's own encoding: with a tokenizer that adds BOS and a chat template that writes it
    (Llama 3, Gemma), attribution's passes get one BOS, as every other pass does."""
    from test_runtime import BOS_TEMPLATE, _with_specials

    runtime = _with_specials(tiny_runtime, tmp_path, "<s> $A", BOS_TEMPLATE) if bos_template else tiny_runtime
    lay = A.layout(runtime.tokenizer, NLI, A.item_words(NLI, ITEMS[1]))
    got = A.word_attributions(runtime, NLI.options, [lay], np.array([2]), "occlusion")[0]
    word_of = _words_of(runtime, lay)
    with torch.no_grad():
        x = _embeds(runtime, lay)
        full = _label_prob(runtime, 2, x)
        for w in range(len(lay.spans)):
            blanked = x.clone()
            blanked[0, torch.as_tensor(word_of == w)] = 0.0
            assert got[w] == pytest.approx(float(full - _label_prob(runtime, 2, blanked)), abs=1e-5)


@pytest.mark.usefixtures("tiny_options")
def test_occlusion_is_batch_independent(tiny_runtime: Any) -> None:
    layouts = [A.layout(tiny_runtime.tokenizer, NLI, A.item_words(NLI, it)) for it in ITEMS]
    together = A.word_attributions(tiny_runtime, NLI.options, layouts, np.array([0, 1, 2]), "occlusion")
    alone = A.word_attributions(tiny_runtime, NLI.options, layouts[2:], np.array([2]), "occlusion")
    assert [len(s) for s in together] == [len(lay.spans) for lay in layouts]
    assert np.allclose(together[2], alone[0], atol=1e-5)


@pytest.mark.usefixtures("tiny_options")
def test_erasure_scores_match_label_probabilities_by_hand(tiny_runtime: Any) -> None:
    tok = tiny_runtime.tokenizer
    labels = np.array([1, 0, 2])
    scores = [np.arange(len(sum(A.item_words(NLI, it), [])), dtype=float) for it in ITEMS]
    comp, suff = A.erasure_scores(tiny_runtime, NLI, ITEMS, labels, scores)
    c_prompts, s_prompts = A.erasure_prompts(tok, NLI, A.item_words(NLI, ITEMS[0]), scores[0])
    with torch.no_grad():
        def prob(prompt: str) -> float:
            return float(_label_prob(tiny_runtime, 1, _embeds(tiny_runtime, A.Layout(prompt, ()))))

        full = prob(task.nli_prompt(tok, ITEMS[0].premise, ITEMS[0].hypothesis))
        assert comp[0] == pytest.approx(np.mean([full - prob(p) for p in c_prompts]), abs=1e-5)
        assert suff[0] == pytest.approx(np.mean([full - prob(p) for p in s_prompts]), abs=1e-5)


def test_multi_token_labels_are_scored_as_whole_continuations(tiny_runtime: Any) -> None:
    """' yes', ' maybe', ' no' are several tokens in the tiny vocabulary: p(label) = softmax of summed log-probs."""
    assert any(len(ids) > 1 for ids in tiny_runtime.encode(list(NLI.options), add_special_tokens=False))
    prompts = [NLI.prompt(tiny_runtime.tokenizer, NLI.fields(it)) for it in ITEMS]
    ids, mask = tiny_runtime.pad(tiny_runtime.encode(prompts))
    forward = A.label_distribution(tiny_runtime, tiny_runtime.encode(list(NLI.options), add_special_tokens=False))
    with torch.no_grad():
        got = forward(tiny_runtime.model.get_input_embeddings()(ids), mask, (mask.cumsum(-1) - 1).clamp(min=0))
    forced = np.stack(tiny_runtime.option_logprobs(prompts, [NLI.options] * len(prompts)))
    expected = np.exp(forced) / np.exp(forced).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    labels = np.array([0, 1, 2])
    np.testing.assert_allclose(A.label_probs(tiny_runtime, NLI, prompts, labels), expected[[0, 1, 2], labels],
                               atol=1e-5)


@pytest.mark.usefixtures("tiny_options")
def test_identical_models_agree_perfectly_and_score_alike(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(A, "gradient_plan", lambda pair: None)
    result = A.run_attribution(tiny_pair(tiny_runtime, make_config))
    assert result.notes["attribution_method"]["quantized"] == ["occlusion", "integrated_gradients"]
    assert all(reason.startswith("not applicable: ") for reason in result.skipped.values())  # tiny is at chance
    assert set(result.reference) == {m.name for m in (*A.ATTRIBUTION_METRICS, *A.ECQA_METRICS.values())}
    ecqa = np.array([i.startswith("ecqa:") for i in result.item_ids])
    assert ecqa.sum() == 3 and len(ecqa) == 6
    for name in ("rank_correlation", "topk_overlap", "ig_rank_correlation", "ig_topk_overlap", "ecqa_rank_correlation",
                 "ecqa_topk_overlap"):
        rows = ecqa if name.startswith("ecqa_") else ~ecqa
        degenerate = name.replace("rank_correlation", "degenerate_rate").replace("topk_overlap", "degenerate_rate")
        assert result.reference[name][rows].tolist() == [1.0] * 3
        np.testing.assert_array_equal(result.reference[degenerate], result.quantized[degenerate])
        constant = result.quantized[degenerate][rows] == 1  # a saturated tiny model can rank no word
        assert np.allclose(result.quantized[name][rows][~constant], 1.0) and (~constant).any()
        assert np.isnan(result.quantized[name][~rows]).all()  # not a unit of the other part's metrics
    for name in ("comprehensiveness", "ig_sufficiency", "ecqa_comprehensiveness", "ecqa_sufficiency"):
        np.testing.assert_allclose(result.reference[name], result.quantized[name], rtol=1e-5, atol=1e-8)


@pytest.mark.usefixtures("tiny_options")
def test_without_backward_only_occlusion_runs_and_ig_metrics_say_why(tiny_runtime: Any, make_config: Any) -> None:
    from test_arch import tiny_pair as twin_pair

    config = make_config(samples=3, data={"esnli": None})  # a run without ECQA: its metrics say so
    pair = twin_pair(tiny_runtime, config, quantized_backward=(False, "backward failed: NotImplementedError"))
    result = A.run_attribution(pair)
    assert all(result.skipped[m.name] == task.absent(pair, "ecqa") for m in A.ECQA_METRICS.values())
    assert result.notes["attribution_method"] == {"reference": ["occlusion"], "quantized": ["occlusion"]}
    assert {m.name for m in A.IG_METRICS} <= set(result.skipped)
    assert all("quantized: backward failed" in result.skipped[m.name] for m in A.IG_METRICS)
    assert result.quantized["comprehensiveness"].shape == (3,)


@pytest.mark.usefixtures("tiny_options")
def test_both_sides_attribute_the_references_label(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def other_label_on_the_quantized_side(real: Any) -> Any:
        def predictions(pair: Any, side: Any, n: int) -> Any:
            found = real(pair, side, n)
            return found if side.role == "reference" else dataclasses.replace(
                found, logprobs=np.roll(found.logprobs, 1, axis=1))

        return predictions

    for name in ("nli_predictions", "mcq_predictions"):
        monkeypatch.setattr(task, name, other_label_on_the_quantized_side(getattr(task, name)))
    result = A.run_attribution(tiny_pair(tiny_runtime, make_config, (False, "no backward")))
    assert result.notes["items_where_the_quantized_model_predicts_another_label"] == 3
    assert result.notes["ecqa_items_where_the_quantized_model_predicts_another_answer"] == 3
    for prefix in ("", "ecqa_"):
        ranked = result.reference[prefix + "degenerate_rate"] == 0  # a saturated tiny model can rank no word
        assert ranked.sum() >= 2
        for name in ("comprehensiveness", "sufficiency", "rank_correlation", "topk_overlap"):  # same model and label
            assert np.allclose(result.reference[prefix + name][ranked], result.quantized[prefix + name][ranked]), name


def test_integrated_gradients_are_skipped_on_a_cpu(tiny_runtime: Any, make_config: Any) -> None:
    assert "GPU" in str(A.gradient_plan(tiny_pair(tiny_runtime, make_config)))


# --- ECQA: the cloze prompt, each item's own options ------------------------------------------------------

QUESTIONS = [MCQItem("q1", "Where would you put a plate after washing it?", ("cupboard", "floor", "oven", "car", "bed"),
                     "cupboard", ""),
             MCQItem("q2", "What do you use to cut paper?", ("scissors", "spoon", "pillow", "cup", "shoe"),
                     "scissors", "")]


def test_ecqa_erasure_deletes_question_words_and_keeps_the_cloze_well_formed() -> None:
    words = A.item_words(ECQA, QUESTIONS[1])
    assert words == [QUESTIONS[1].question.split()]  # the options are the explained classes, not features
    scores = np.arange(len(words[0]), dtype=float)  # "paper?" ranks first, then "cut", ...
    comp, suff = A.erasure_prompts(PLAIN, ECQA, words, scores)
    assert comp[0] == task.mcq_prompt("What do you use to cut")
    assert suff[0] == task.mcq_prompt("paper?")
    assert all(p.endswith("\nAnswer:") and p.startswith(task.mcq_prompt("").split("Question:")[0]) for p in comp + suff)


def _cloze_prob(runtime: Any, item: MCQItem, label: int, prompt_embeds: Any) -> float:
    """p(label) over the item's options by hand: each option's tokens appended, summed log-probabilities."""
    scores = []
    for ids in runtime.encode(list(ECQA.item_options(item)), add_special_tokens=False):
        tail = runtime.model.get_input_embeddings()(torch.tensor([ids]))
        logits = runtime.model(inputs_embeds=torch.cat([prompt_embeds, tail], dim=1)).logits[0, -len(ids) - 1 : -1]
        scores.append(float(torch.log_softmax(logits, -1)[torch.arange(len(ids)), ids].sum()))
    return float(torch.softmax(torch.tensor(scores), 0)[label])


def test_ecqa_occlusion_is_the_drop_of_the_task_suites_answer_probability(tiny_runtime: Any) -> None:
    layouts = [A.layout(tiny_runtime.tokenizer, ECQA, A.item_words(ECQA, it)) for it in QUESTIONS]
    labels = np.array([3, 0])
    got = A.cloze_occlusion(tiny_runtime, [ECQA.item_options(it) for it in QUESTIONS], layouts, labels)
    full = np.exp(task.mcq_logprobs(tiny_runtime, QUESTIONS))
    full /= full.sum(axis=1, keepdims=True)  # the task suite's scoring of the intact prompt
    with torch.no_grad():
        for item, lay, label, scores, p_full in zip(QUESTIONS, layouts, labels, got, full):
            x = _embeds(tiny_runtime, lay)
            word_of = _words_of(tiny_runtime, lay)
            assert _cloze_prob(tiny_runtime, item, int(label), x) == pytest.approx(p_full[label], abs=1e-5)
            assert len(scores) == len(item.question.split())
            for w in range(len(lay.spans)):
                blanked = x.clone()
                blanked[0, torch.as_tensor(word_of == w)] = 0.0
                assert scores[w] == pytest.approx(p_full[label] - _cloze_prob(tiny_runtime, item, int(label), blanked),
                                                  abs=1e-5)


def test_ecqa_label_probabilities_use_each_prompts_own_options(tiny_runtime: Any) -> None:
    """Two items whose erased questions coincide are still scored over their own options."""
    prompts = [task.mcq_prompt("What"), task.mcq_prompt("What")]
    options = [ECQA.item_options(it) for it in QUESTIONS]
    got = A.label_probs(tiny_runtime, ECQA, prompts, np.array([0, 0]), options)
    for row, item in enumerate(QUESTIONS):
        logp = task.mcq_logprobs(tiny_runtime, [dataclasses.replace(item, question="What")])[0]
        assert got[row] == pytest.approx(np.exp(logp[0]) / np.exp(logp).sum(), abs=1e-6)
    with pytest.raises(ValueError, match="own options"):
        A.label_probs(tiny_runtime, ECQA, prompts, np.array([0, 0]))


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
    """Erasing occlusion's top words moves p(y|x) more, and keeping them alone less, than a random ranking.

    10 e-SNLI items (20 before: 12 CPU minutes of CI); on the first 5 the margins were 0.11 and 0.13 against 0.02.
    """
    from pytest_qxai.datasets import load_esnli

    items = load_esnli(10, 0)
    labels = task.predict_nli(smollm, [(it.premise, it.hypothesis) for it in items])
    layouts = [A.layout(smollm.tokenizer, NLI, A.item_words(NLI, it)) for it in items]
    scores = A.word_attributions(smollm, NLI.options, layouts, labels, "occlusion")
    rng = np.random.default_rng(0)
    random = [rng.permutation(len(s)).astype(float) for s in scores]
    comp, suff = A.erasure_scores(smollm, NLI, items, labels, scores)
    comp_random, suff_random = A.erasure_scores(smollm, NLI, items, labels, random)
    assert comp.mean() > comp_random.mean() + 0.02
    assert suff.mean() < suff_random.mean() - 0.02


@pytest.mark.usefixtures("tiny_options")
def test_a_quantized_model_that_outputs_nan_scores_the_worst_values_and_counts_as_degenerate(
    tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN attributions and erasure scores are no output: the worst value on that side, never a left-out item."""
    monkeypatch.setattr(A, "gradient_plan", lambda pair: None)
    pair = tiny_pair(tiny_runtime, make_config)

    def broken(module: Any, args: Any, kwargs: Any, out: Any) -> Any:
        out.logits[:] = float("nan")
        return out

    pair.quantized.runtime.model.register_forward_hook(broken, with_kwargs=True)
    result = A.run_attribution(pair)
    for name in ("comprehensiveness", "sufficiency", "rank_correlation", "topk_overlap", "degenerate_rate"):
        metric = next(m for m in A.ATTRIBUTION_METRICS if m.name == name)
        values = result.quantized[name][~np.isnan(result.reference[name])]
        assert values.size and (values == A.worst_value(metric)).all(), (name, values)
