"""The runtime's batched calls return exactly what unbatched, full-logit computations return."""

from __future__ import annotations

import contextlib
import os
import sys
import unittest.mock
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from pytest_qxai.models.loading import load_reference, load_tokenizer  # noqa: E402
from pytest_qxai.runtime import Runtime, deferred_stop_check, final_norm, probe_backward, shared_prefix  # noqa: E402
from tiny import build_tiny_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recorder import CacheShape, CallRecorder  # noqa: E402

PROMPTS = ["The capital of France is", "A cat sat", "Two plus two equals four, and three times three"]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    tokenizer = load_tokenizer(folder, revision=None, trust_remote_code=False)
    model = load_reference(folder, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    return Runtime(model, tokenizer, batch_size=2, share_prefix=True)


def _full_logprobs(rt: Runtime, ids: list[int]) -> Any:
    with torch.no_grad():
        logits = rt.model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), -1)


def test_scores_equal_unbatched_full_vocabulary_computation(runtime: Runtime) -> None:
    continuations = [" Paris", " on the mat", " equals nine"]
    scores = runtime.score(PROMPTS, continuations)
    for prompt, cont, got in zip(PROMPTS, continuations, scores):
        p_ids = runtime.encode([prompt])[0]
        c_ids = runtime.encode([cont], add_special_tokens=False)[0]
        full = _full_logprobs(runtime, p_ids + c_ids)
        expected = sum(float(full[len(p_ids) + j - 1, tok]) for j, tok in enumerate(c_ids))
        assert got == pytest.approx(expected, abs=1e-4)


def test_padding_and_batch_composition_do_not_change_scores(runtime: Runtime) -> None:
    alone = runtime.score([PROMPTS[1]], [" on the mat"])
    padded = runtime.score(PROMPTS, [" x", " on the mat", " y"])
    assert padded[1] == pytest.approx(alone[0], abs=1e-4)


def test_option_logprobs_keep_each_prompts_options_in_order(runtime: Runtime) -> None:
    out = runtime.option_logprobs(PROMPTS[:2], [[" Paris", " Rome", " Berlin"], [" on", " under"]])
    assert [len(o) for o in out] == [3, 2]
    assert out[0][1] == pytest.approx(runtime.score([PROMPTS[0]], [" Rome"])[0], abs=1e-4)


def test_greedy_generation_equals_a_manual_argmax_loop(runtime: Runtime) -> None:
    generated = runtime.generate(PROMPTS, max_new_tokens=6, stop=None)
    for prompt, text in zip(PROMPTS, generated):
        ids = runtime.encode([prompt])[0]
        new: list[int] = []
        for _ in range(6):
            token = int(_full_logprobs(runtime, ids + new)[-1].argmax())
            new.append(token)
            if token == runtime.tokenizer.eos_token_id:
                break
        assert text == runtime.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_static_cache_generation_equals_the_dynamic_cache(runtime: Runtime) -> None:
    """The GPU default (static KV cache, prompts padded to a bucket) generates what the dynamic cache does."""
    static = Runtime(runtime.model, runtime.tokenizer, batch_size=2, static_cache=True)
    assert not runtime.static_cache and static.static_cache  # the default follows the device: CPU here
    assert static.generate(PROMPTS, max_new_tokens=6, stop=None) == runtime.generate(PROMPTS, max_new_tokens=6, stop=None)
    texts, first = static.generate_scored(PROMPTS, max_new_tokens=4)
    dyn_texts, dyn_first = runtime.generate_scored(PROMPTS, max_new_tokens=4)
    assert texts == dyn_texts
    np.testing.assert_allclose(first, dyn_first, atol=1e-4)


def test_next_token_logprobs_are_normalised_and_match_full_forward(runtime: Runtime) -> None:
    lp = runtime.next_token_logprobs(PROMPTS)
    assert lp.shape[0] == 3 and np.allclose(np.exp(lp).sum(-1), 1.0, atol=1e-4)
    full = _full_logprobs(runtime, runtime.encode([PROMPTS[2]])[0])[-1].numpy()
    assert np.allclose(lp[2], full, atol=1e-4)


def test_hidden_states_are_pre_norm_and_the_lens_at_the_last_layer_is_the_output(runtime: Runtime) -> None:
    hs = runtime.hidden_states(PROMPTS)
    layers = runtime.model.config.num_hidden_layers
    assert hs.shape == (3, layers + 1, runtime.model.config.hidden_size)
    lens = torch.log_softmax(runtime.model.lm_head(final_norm(runtime.model)(torch.tensor(hs[:, -1]))), -1)
    assert np.allclose(lens.detach().numpy(), runtime.next_token_logprobs(PROMPTS), atol=1e-4)


def test_hidden_states_at_chosen_positions(runtime: Runtime) -> None:
    ids = runtime.encode([PROMPTS[0]])[0]
    first = runtime.hidden_states([PROMPTS[0]], positions=[0])[0, 0]
    embedding = runtime.model.get_input_embeddings()(torch.tensor([ids[0]]))[0].detach().numpy()
    assert np.allclose(first, embedding, atol=1e-5)
    assert np.allclose(runtime.hidden_states([PROMPTS[0]], positions=[len(ids) - 1]),
                       runtime.hidden_states([PROMPTS[0]]), atol=1e-5)


def test_out_of_memory_halves_the_batch_and_keeps_order(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    real_forward = runtime.model.forward
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        size = kwargs["input_ids"].shape[0]
        calls.append(size)
        if size > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*args, **kwargs)

    expected = runtime.score(PROMPTS, [" a", " b", " c"])
    monkeypatch.setattr(runtime.model, "forward", flaky)
    before = runtime.stats.oom_backoffs
    got = runtime.score(PROMPTS, [" a", " b", " c"])
    assert np.allclose(got, expected, atol=1e-5)
    assert runtime.stats.oom_backoffs > before and 1 in calls


def test_backward_probe_reports_gradients_on_a_float_model(runtime: Runtime) -> None:
    ok, reason = probe_backward(runtime.model, runtime.tokenizer)
    assert ok and reason == "ok"


def test_backward_probe_reports_a_kernel_without_backward(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_grad_forward(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")

    monkeypatch.setattr(runtime.model, "forward", no_grad_forward)
    ok, reason = probe_backward(runtime.model, runtime.tokenizer)
    assert not ok and reason.startswith("backward failed: RuntimeError")


def test_folder_hash_changes_with_weights(tmp_path: Path) -> None:
    from pytest_qxai.models.loading import folder_content_hash

    folder = build_tiny_model(tmp_path)
    first = folder_content_hash(folder, tmp_path / "cache")
    assert folder_content_hash(folder, tmp_path / "cache") == first
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert folder_content_hash(folder, tmp_path / "cache") != first


def test_recorded_calls_name_gradient_passes_so_the_bare_loop_replays_their_backward(runtime: Runtime) -> None:
    """The benchmark replays what its recorder observes: captum's gradient passes must be told from forwards."""
    ids = torch.tensor([runtime.encode(["A cat sat"])[0]])
    embeds = runtime.model.get_input_embeddings()(ids).detach()
    recorder = CallRecorder()
    runtime.observers.append(recorder)
    try:
        with torch.no_grad():
            runtime.forward(inputs_embeds=embeds, logits_to_keep=1)
        with torch.enable_grad():
            runtime.forward(inputs_embeds=embeds.clone().requires_grad_(True), logits_to_keep=1)
        runtime.score(["A cat"], [" sat"])
        kinds = [kind for kind, _ in recorder.calls]
        assert kinds == ["forward", "gradient", "forward"]
        assert not recorder.calls[1][1]["inputs_embeds"].requires_grad  # stored detached, on the CPU
    finally:
        runtime.observers.remove(recorder)


def test_recorded_prefix_caches_are_kept_as_their_shapes_at_call_time(runtime: Runtime) -> None:
    """The replay must redo the same work without the recorder holding every batch's key/value tensors."""
    prefix = runtime.encode(["The capital of France is"])[0]
    seqs = [runtime.encode([" Paris today"], add_special_tokens=False)[0],
            runtime.encode([" a large city"], add_special_tokens=False)[0]]
    recorder = CallRecorder()
    runtime.observers.append(recorder)
    try:
        runtime.prefixed_tail_logprobs(prefix, seqs, [1, 1])
        caches = [kwargs["past_key_values"] for _, kwargs in recorder.calls]
    finally:
        runtime.observers.remove(recorder)
    assert all(isinstance(cache, CacheShape) for cache in caches)
    assert caches[0].shapes == ()  # the prefix pass starts from an empty cache
    layers = runtime.model.config.num_hidden_layers
    batches = caches[1:]  # one or more batches of the two sequences, each after the prefix
    assert sum(cache.shapes[0][0] for cache in batches) == 2
    assert all([shape[2] for shape in cache.shapes] == [len(prefix)] * layers for cache in batches)
    assert batches[0].build(runtime.device).get_seq_length() == len(prefix)


SHARED = ["The capital of France is Paris and", "The capital of France is", "The capital of Germany"]
"""Prompts with a token prefix in common: the runtime runs it once and reuses its key/value cache."""


def test_next_token_logprobs_after_a_shared_prefix_match_full_forward(runtime: Runtime) -> None:
    ids = runtime.encode(SHARED)
    assert len(os.path.commonprefix(ids)) >= 2  # the prefix cache is really used
    lp = runtime.next_token_logprobs(SHARED)
    for row, seq in zip(lp, ids):
        np.testing.assert_allclose(row, _full_logprobs(runtime, seq)[-1].numpy(), atol=1e-4)


def test_grouped_logprobs_score_each_continuation_as_a_full_forward_does(runtime: Runtime) -> None:
    """Stems of different lengths, groups of different sizes, continuations of one to several tokens."""
    ids = runtime.encode(SHARED)
    shared = shared_prefix(ids)
    options = [[" Paris", " on the mat", " x"], [" Rome"], [" two plus two equals four", " Berlin"]]
    conts = [runtime.encode(group, add_special_tokens=False) for group in options]
    out = runtime.grouped_logprobs(ids[0][:shared], [seq[shared:] for seq in ids], conts)
    assert [len(group) for group in out] == [3, 1, 2]
    for seq, group, values in zip(ids, conts, out):
        for cont, got in zip(group, values):
            full = _full_logprobs(runtime, seq + cont)
            expected = [float(full[len(seq) + j - 1, tok]) for j, tok in enumerate(cont)]
            np.testing.assert_allclose(got, expected, atol=1e-4)


def test_grouped_logprobs_refuse_empty_stems(runtime: Runtime) -> None:
    with pytest.raises(ValueError, match="non-empty stem"):
        runtime.grouped_logprobs([], [[]], [[[1]]])


def test_option_logprobs_equal_pairwise_scores_with_a_shared_prefix(runtime: Runtime) -> None:
    options = [[" Paris", " on the mat"], [" Rome", " a b c"], [" Berlin"]]
    out = runtime.option_logprobs(SHARED, options)
    flat = runtime.score([p for p, opts in zip(SHARED, options) for _ in opts], [o for opts in options for o in opts])
    np.testing.assert_allclose(np.concatenate(out), flat, atol=1e-4)


def test_generation_after_a_shared_prefix_equals_a_manual_argmax_loop(runtime: Runtime) -> None:
    """The prefix all prompts share is prefilled once; each continuation is still the model's greedy one."""
    generated, first = runtime.generate_scored(SHARED, max_new_tokens=6, stop=None)
    for prompt, text, row in zip(SHARED, generated, first):
        ids = runtime.encode([prompt])[0]
        np.testing.assert_allclose(row, _full_logprobs(runtime, ids)[-1].numpy(), atol=1e-4)
        new: list[int] = []
        for _ in range(6):
            token = int(_full_logprobs(runtime, ids + new)[-1].argmax())
            new.append(token)
            if token == runtime.tokenizer.eos_token_id:
                break
        assert text == runtime.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_generation_stops_at_the_stop_string(runtime: Runtime) -> None:
    """Text after the stop string is cut, whatever the model would have said next."""
    free = runtime.generate(SHARED, max_new_tokens=8, stop=None)
    stop = next(ch for ch in free[0] if ch.strip())  # a character the greedy text is known to contain
    cut = runtime.generate(SHARED, max_new_tokens=8, stop=stop)
    assert cut[0] == free[0].split(stop)[0].strip()


@given(st.lists(st.lists(st.integers(0, 3), max_size=6), max_size=5))
def test_shared_prefix_is_common_and_leaves_each_sequence_a_token(seqs: list[list[int]]) -> None:
    n = shared_prefix(seqs)
    assert n >= 0 and all(s[:n] == seqs[0][:n] for s in seqs)
    assert all(len(s) > n for s in seqs if s) and (n == 0 or all(seqs))
    if seqs and all(len(s) > n + 1 for s in seqs):  # the longest such prefix: one more token is not shared
        assert len({s[n] for s in seqs}) > 1


def test_without_prefix_sharing_each_prompt_runs_whole_and_scores_agree(runtime: Runtime) -> None:
    """The quantized side's mode: no forward pass starts from a cache of the prompts' shared prefix."""
    whole = Runtime(runtime.model, runtime.tokenizer, batch_size=2, share_prefix=False)
    recorder = CallRecorder()
    whole.observers.append(recorder)
    ids = whole.encode(SHARED)
    conts = [whole.encode(group, add_special_tokens=False) for group in ([" Paris", " on the mat"], [" Rome"], [" x"])]
    np.testing.assert_allclose(whole.next_token_logprobs(SHARED), runtime.next_token_logprobs(SHARED), atol=1e-4)
    assert whole.generate(SHARED, max_new_tokens=4, stop=None) == runtime.generate(SHARED, max_new_tokens=4, stop=None)
    grouped = whole.grouped_logprobs([], ids, conts)
    for got, expected in zip(grouped, runtime.grouped_logprobs([], ids, conts)):
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, atol=1e-4)
    assert all(kwargs.get("past_key_values") is None for _, kwargs in recorder.calls)



def test_deferred_stop_check_applies_to_its_device_only_and_is_undone() -> None:
    """Inside the context transformers defers the stop check on the named device only; its rule is back after."""
    from transformers.generation.utils import DeferredStopCheck

    rule = DeferredStopCheck.__dict__["is_supported"]
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not DeferredStopCheck.is_supported(cuda, None, False, is_assistant=False)
    with deferred_stop_check("cuda"):
        assert DeferredStopCheck.is_supported(cuda, None, False, is_assistant=False)
        assert not DeferredStopCheck.is_supported(cuda, None, False, is_assistant=True)
        assert not DeferredStopCheck.is_supported(cpu, None, False, is_assistant=False)  # CPU has no events
    with deferred_stop_check(None):
        assert DeferredStopCheck.__dict__["is_supported"] is rule
    assert DeferredStopCheck.__dict__["is_supported"] is rule


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the deferred stop check runs on CUDA (events)")
def test_deferred_stop_check_generates_the_same_tokens_on_the_gpu(runtime: Runtime) -> None:
    """Reading the stop flag a step late (the GPU default with a static cache) changes no token: stop strings, EOS,
    scored generation."""
    gpu = Runtime(runtime.model.to("cuda"), runtime.tokenizer, batch_size=2, static_cache=True)
    deferred = gpu.generate(PROMPTS, max_new_tokens=8, stop=" "), gpu.generate_scored(PROMPTS, max_new_tokens=5)
    with unittest.mock.patch("pytest_qxai.runtime.deferred_stop_check", lambda _device: contextlib.nullcontext()):
        plain = gpu.generate(PROMPTS, max_new_tokens=8, stop=" "), gpu.generate_scored(PROMPTS, max_new_tokens=5)
    runtime.model.to("cpu")
    assert deferred[0] == plain[0] and deferred[1][0] == plain[1][0]
    np.testing.assert_allclose(deferred[1][1], plain[1][1], atol=1e-5)


def _greedy_ids(rt: Runtime, prompt: str, steps: int) -> list[int]:
    """The model's own argmax continuation of ``prompt``, ``steps`` tokens, no stop of any kind."""
    ids, new = rt.encode([prompt])[0], []
    for _ in range(steps):
        new.append(int(_full_logprobs(rt, ids + new)[-1].argmax()))
    return new


def _with_specials(runtime: Runtime, folder: Path, single: str, chat_template: str | None = None) -> Runtime:
    """The tiny model with its tokenizer saved to add special tokens as ``single`` says (``<s> $A </s>``)."""
    import copy

    from tokenizers import processors

    tokenizer = copy.deepcopy(runtime.tokenizer)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("<s>", tokenizer.bos_token_id), ("</s>", tokenizer.eos_token_id)])
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return Runtime(runtime.model, load_tokenizer(folder, revision=None, trust_remote_code=False), batch_size=2)


def _assert_offsets_follow_encode(rt: Runtime, texts: list[str]) -> None:
    """``encode_with_offsets`` (attribution's token-to-word map) keeps ``encode``'s ids, and each token spans a
    piece of its text (only an added special token spans nothing)."""
    found = rt.encode_with_offsets(texts)
    assert [ids for ids, _ in found] == rt.encode(texts)
    specials = set(rt.tokenizer.all_special_ids)
    for text, (ids, spans) in zip(texts, found):
        assert len(spans) == len(ids)
        assert all(0 <= lo <= hi <= len(text) and (hi > lo or token in specials) for token, (lo, hi) in zip(ids, spans))


BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
"""A chat template that writes the BOS itself, as Llama 3, Gemma and Mistral instruct templates do."""


def test_a_chat_prompt_that_writes_its_bos_gets_no_second_one(runtime: Runtime, tmp_path: Path) -> None:
    """A tokenizer that adds BOS and a template that writes it: one BOS, as ``apply_chat_template(tokenize=True)``
    gives; the fluency prefix is one BOS too, and plain text still gets its BOS."""
    from pytest_qxai.methods.task import nli_prompt

    rt = _with_specials(runtime, tmp_path, "<s> $A", BOS_TEMPLATE)
    bos, tokenizer = rt.tokenizer.bos_token_id, rt.tokenizer
    prompt = nli_prompt(tokenizer, "A man sleeps.", "A man rests.")
    assert prompt.startswith("<s>") and tokenizer([prompt])["input_ids"][0][:2] == [bos, bos]
    assert rt.encode([prompt])[0] == tokenizer([prompt], add_special_tokens=False)["input_ids"][0]
    assert rt.encode(["A cat sat"])[0] == [bos] + tokenizer(["A cat sat"], add_special_tokens=False)["input_ids"][0]
    _assert_offsets_follow_encode(rt, [prompt, "A cat sat"])
    text_ids = rt.encode([PROMPTS[0]], add_special_tokens=False)[0]
    full = _full_logprobs(rt, [bos] + text_ids)
    expected = [-float(full[j, token]) for j, token in enumerate(text_ids)]
    np.testing.assert_allclose(rt.token_nll([PROMPTS[0]])[0], expected, atol=1e-4)


def test_a_tokenizer_that_appends_eos_leaves_prompts_without_it(runtime: Runtime, tmp_path: Path) -> None:
    """Only the EOS the tokenizer appends goes; one the text itself ends with stays; scores follow the prompt."""
    rt = _with_specials(runtime, tmp_path, "<s> $A </s>")
    bos, eos = rt.tokenizer.bos_token_id, rt.tokenizer.eos_token_id
    bare = rt.encode(PROMPTS, add_special_tokens=False)
    assert rt.encode(PROMPTS) == [[bos] + ids for ids in bare]
    assert rt.encode(["A cat sat</s>"])[0] == [bos] + rt.encode(["A cat sat</s>"], add_special_tokens=False)[0]
    assert rt.encode(["A cat sat</s>"])[0][-1] == eos
    _assert_offsets_follow_encode(rt, [*PROMPTS, "A cat sat</s>"])
    expected = np.stack([_full_logprobs(rt, [bos] + ids)[-1].numpy() for ids in bare])
    np.testing.assert_allclose(rt.next_token_logprobs(PROMPTS), expected, atol=1e-4)


def test_generation_is_argmax_whatever_the_models_generation_config_says(runtime: Runtime) -> None:
    """Repetition penalties, banned, suppressed or forced tokens and a minimum length in generation_config.json
    (Qwen2.5-Instruct ships a repetition penalty) do not touch the greedy tokens."""
    import copy

    from transformers import GenerationConfig

    model = copy.deepcopy(runtime.model)
    rt = Runtime(model, runtime.tokenizer, batch_size=2)
    greedy = [_greedy_ids(rt, prompt, 6) for prompt in PROMPTS]
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=2, repetition_penalty=1.5, no_repeat_ngram_size=2,
        bad_words_ids=[[greedy[0][0]]], suppress_tokens=[greedy[1][0]], begin_suppress_tokens=[greedy[2][0]],
        min_new_tokens=6, forced_eos_token_id=2, sequence_bias={(greedy[0][1],): -10.0}, temperature=0.7, top_p=0.9)
    texts, first = rt.generate_scored(PROMPTS, max_new_tokens=6, stop=None)
    assert texts == [rt.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in greedy]
    np.testing.assert_allclose(first, runtime.next_token_logprobs(PROMPTS), atol=1e-4)


def test_generation_stops_at_each_eos_the_generation_config_lists(runtime: Runtime) -> None:
    """A config listing several EOS ids (Llama 3's <|end_of_text|> and <|eot_id|>) stops generation at any of them;
    the runtime's stop strings still cut the text."""
    import copy

    from transformers import GenerationConfig

    model = copy.deepcopy(runtime.model)
    rt = Runtime(model, runtime.tokenizer, batch_size=2)
    greedy = _greedy_ids(rt, PROMPTS[0], 8)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, greedy[2]], pad_token_id=2)
    stops = greedy.index(greedy[2]) + 1
    assert rt.generate([PROMPTS[0]], max_new_tokens=8, stop=None) == [
        rt.tokenizer.decode(greedy[:stops], skip_special_tokens=True).strip()]
    text = rt.tokenizer.decode(greedy[:stops], skip_special_tokens=True).strip()
    stop = next(ch for ch in text if ch.strip())
    assert rt.generate([PROMPTS[0]], max_new_tokens=8, stop=stop) == [text.split(stop)[0].strip()]
