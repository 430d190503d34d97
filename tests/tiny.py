"""A tiny random Llama model with a locally trained tokenizer, for fast tests that need a real HF folder.

The model is Llama-shaped (so every quantization backend and probe treats it like SmolLM2) but
small enough to build, save and quantize in seconds on two CPU cores. Its dimensions are multiples
of 64 so that group-wise kernels (GPTQ, HQQ, AWQ) accept them. It is evidence that code runs, not
that a metric means anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

TINY_TEXTS = [
    "The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "A cat sat on the mat because the mat was warm.",
    "Berlin is the capital of Germany, and Rome is the capital of Italy.",
    "If it rains, the ground gets wet; the ground is wet, so maybe it rained.",
    "Two plus two equals four, and three times three equals nine.",
    "The doctor asked the patient how she was feeling today.",
]
"""Sentences the tokenizer is trained on; tests can reuse them as inputs or calibration text."""

HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
VOCAB = 320


def build_tiny_model(tmp_path: Path, seed: int = 0) -> Path:
    """Write a random tiny Llama model and its tokenizer into ``tmp_path/tiny-llama`` and return the folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(tmp_path) / "tiny-llama"
    if (folder / "config.json").is_file():
        return folder
    special = ["<unk>", "<s>", "</s>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(TINY_TEXTS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def family_config(family: str, vocab: int, hidden: int, inter: int, layers: int, **ids: int) -> Any:
    """A small transformers config of one decoder family people quantize now (``FAMILIES``), random-weight ready.

    ``ids`` are the special token ids (``bos_token_id``, ``eos_token_id``, ``pad_token_id``) of the tokenizer used.
    """
    import transformers as T

    heads = {"num_attention_heads": 4, "num_key_value_heads": 2}
    common = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "max_position_embeddings": 1024, **heads, **ids}
    head_dim = {"head_dim": hidden // 4}
    builders = {
        "gemma": lambda: T.GemmaConfig(**common, **head_dim),
        "gemma2": lambda: T.Gemma2Config(**common, **head_dim),
        "gemma3_text": lambda: T.Gemma3TextConfig(**common, **head_dim),
        "gpt2": lambda: T.GPT2Config(vocab_size=vocab, n_embd=hidden, n_inner=inter, n_layer=layers, n_head=4,
                                     n_positions=1024, **ids),  # the runtime keeps up to 1024 prompt tokens
        "llama3": lambda: T.LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
        "smollm2": lambda: T.LlamaConfig(**common, tie_word_embeddings=True),
        "mistral": lambda: T.MistralConfig(**common),
        "olmo2": lambda: T.Olmo2Config(**common),
        "phi3": lambda: T.Phi3Config(**common),
        "qwen2": lambda: T.Qwen2Config(**common),
        "qwen3": lambda: T.Qwen3Config(**common, **head_dim),
        "smollm3": lambda: T.SmolLM3Config(**common),
    }
    return builders[family]()


FAMILIES = ("gemma", "gemma2", "gemma3_text", "gpt2", "llama3", "mistral", "olmo2", "phi3", "qwen2", "qwen3",
            "smollm2", "smollm3")
"""Gemma 1-3, GPT-2, Llama 3.x, Mistral, OLMo 2, Phi-3, Qwen 2/2.5 (one architecture) and 3, SmolLM 1-2 (Llama
with tied embeddings) and SmolLM3."""


NO_CLASSIFICATION = ("not applicable: no classification dataset in this run (esnli, ecqa, lre); give one with "
                     "--qxai-data NAME=FILE")
"""Why the ``label_`` metrics are skipped in a run on the bundled datasets."""


def shorten_suites(monkeypatch: Any) -> None:
    """Cut generation lengths and sampling budgets of the suites: plumbing tests on tiny models stay fast."""
    from pytest_qxai.methods import counterfactual, faithfulness, nle

    monkeypatch.setitem(nle.NLE_TEMPLATE, "max_new_tokens", 4)
    monkeypatch.setattr(counterfactual, "MAX_EDIT_TOKENS", 4)
    monkeypatch.setattr(counterfactual, "MAX_WORDS_TOKENS", 3)
    monkeypatch.setitem(faithfulness.CC_SHAP, "permutations", 1)
    monkeypatch.setitem(faithfulness.INSERTIONS, "positions", 1)


def assert_sides_match(result: Any, metrics: Sequence[Any], n_items: int, atol: float = 1e-6) -> None:
    """A suite run on two identical models: ``n_items`` items, none of ``metrics`` skipped, equal per-item values."""
    import numpy as np

    assert len(result.item_ids) == n_items and not set(result.skipped) & {m.name for m in metrics}
    for metric in metrics:
        reference, quantized = result.values(metric.name)
        assert reference.shape == (n_items,)
        np.testing.assert_allclose(reference, quantized, rtol=0, atol=atol)


def backend_or_skip(text: str) -> tuple[Any, Any]:
    """The parsed ``--quant`` spec and its backend adapter; skips the test when the backend's library is missing."""
    import pytest

    from pytest_qxai.backends.base import get_backend, require_library
    from pytest_qxai.errors import BackendMissingError
    from pytest_qxai.specs import parse_spec

    spec = parse_spec(text)
    try:
        require_library(spec.scheme)
    except BackendMissingError as exc:
        pytest.skip(str(exc))
    return spec, get_backend(spec.scheme.backend)
