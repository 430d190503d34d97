"""The probes' architecture map finds every module they need in each supported family, and refuses the rest.

Also the scaffolding the probe suites' tests share (import it: ``from test_arch import tiny_pair``): a
tiny-model runtime and pair for plumbing tests, and the real SmolLM2 runtime loaded once per process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_qxai.errors import ArchitectureError  # noqa: E402
from pytest_qxai.methods.arch import ARCHITECTURES, model_parts  # noqa: E402

VOCAB, HIDDEN, INTER, LAYERS = 97, 32, 48, 2

CONFIGS: dict[str, Any] = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2),
    "gemma": lambda: transformers.GemmaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTER, n_layer=LAYERS, n_head=4),
}


def tiny(model_type: str) -> Any:
    """A random tiny causal LM of one family, float32, in eval mode."""
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[model_type]()).float().eval()


def test_every_supported_family_has_a_tiny_model_here() -> None:
    assert sorted(CONFIGS) == sorted(ARCHITECTURES)


@pytest.fixture(params=sorted(CONFIGS))
def model(request: pytest.FixtureRequest) -> Any:
    return tiny(request.param)


def run_with_taps(model: Any, ids: Any) -> tuple[dict[str, Any], Any]:
    """One forward pass recording each layer's input, attention/MLP outputs and down-projection input."""
    parts = model_parts(model)
    seen: dict[str, Any] = {}
    handles = []
    for index, layer in enumerate(parts.layers):
        handles += [
            layer.block.register_forward_pre_hook(
                lambda _m, args, kwargs, i=index: seen.__setitem__(
                    f"in{i}", args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True),
            layer.block.register_forward_hook(lambda _m, _a, out, i=index: seen.__setitem__(
                f"out{i}", out[0] if isinstance(out, tuple) else out)),
            layer.attn.register_forward_hook(lambda _m, _a, out, i=index: seen.__setitem__(f"attn{i}", out[0])),
            layer.mlp.register_forward_hook(lambda _m, _a, out, i=index: seen.__setitem__(f"mlp{i}", out)),
            layer.down.register_forward_pre_hook(lambda _m, args, i=index: seen.__setitem__(f"m{i}", args[0])),
        ]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for handle in handles:
        handle.remove()
    return seen, logits


def test_the_map_finds_every_part(model: Any) -> None:
    parts = model_parts(model)
    assert len(parts.layers) == LAYERS
    assert parts.model_type == model.config.model_type
    for index in range(LAYERS):
        assert parts.down_weight(index).shape == (HIDDEN, INTER)
    assert parts.log_probs(torch.zeros(3, HIDDEN)).shape == (3, VOCAB)


def test_residual_stream_decomposes_into_attention_and_mlp_outputs(model: Any) -> None:
    """Pre-norm layers: output = input + attention output + MLP output, at every position."""
    seen, _ = run_with_taps(model, torch.tensor([[3, 14, 15, 92, 65]]))
    for index in range(LAYERS):
        rebuilt = seen[f"in{index}"] + seen[f"attn{index}"] + seen[f"mlp{index}"]
        torch.testing.assert_close(rebuilt, seen[f"out{index}"], atol=1e-5, rtol=1e-5)


def test_mlp_output_is_the_sum_of_its_value_neurons(model: Any) -> None:
    """m · W_down (+ bias) reproduces the MLP output: the columns of W_down are the value neurons."""
    seen, _ = run_with_taps(model, torch.tensor([[3, 14, 15, 92, 65]]))
    parts = model_parts(model)
    for index in range(LAYERS):
        bias = getattr(parts.layers[index].down, "bias", None)
        rebuilt = seen[f"m{index}"] @ parts.down_weight(index).t() + (0 if bias is None else bias)
        torch.testing.assert_close(rebuilt, seen[f"mlp{index}"], atol=1e-5, rtol=1e-5)


def test_logit_lens_at_the_last_layer_is_the_models_own_distribution(model: Any) -> None:
    seen, logits = run_with_taps(model, torch.tensor([[3, 14, 15, 92, 65]]))
    lens = model_parts(model).log_probs(seen[f"out{LAYERS - 1}"])
    torch.testing.assert_close(lens, torch.log_softmax(logits.float(), -1), atol=1e-5, rtol=1e-5)


def test_token_log_probs_and_their_gradients_match_plain_autograd(model: Any) -> None:
    parts = model_parts(model)
    hidden = torch.randn(7, HIDDEN)
    tokens = torch.tensor([0, 5, 9, 13, 50, 96, 1])
    leaf = hidden.clone().requires_grad_(True)
    direct = torch.log_softmax(model.lm_head(parts.final_norm(leaf)), -1)[torch.arange(7), tokens]
    direct.sum().backward()
    torch.testing.assert_close(parts.token_log_probs(hidden, tokens, chunk=3), direct.detach())
    values, grads = parts.token_log_probs_and_grads(hidden, tokens, chunk=3)
    torch.testing.assert_close(values, direct.detach())
    torch.testing.assert_close(grads, leaf.grad)


def test_unembed_transpose_is_the_transposed_unembedding(model: Any) -> None:
    vectors = torch.randn(2, VOCAB)
    expected = vectors @ model.lm_head.weight.detach()
    torch.testing.assert_close(model_parts(model).unembed_transpose(vectors), expected, atol=1e-5, rtol=1e-5)


class _DequantizingBackend:
    """Hands back a fixed [out, in] weight, as a quantization adapter's ``dequantized_weight`` does."""

    name = "fake"

    def __init__(self, weight: Any) -> None:
        self.weight = weight

    def dequantized_weight(self, module: Any) -> Any:
        return self.weight


def test_down_weight_goes_through_the_backend_and_keeps_the_neuron_layout() -> None:
    parts = model_parts(tiny("gpt2"))
    wanted = torch.randn(HIDDEN, INTER)  # the backend contract: [out, in]
    assert torch.equal(parts.down_weight(0, _DequantizingBackend(wanted)), wanted)  # type: ignore[arg-type]
    conv_layout = wanted.t().contiguous()  # an adapter that returns Conv1D's own [in, out] weight
    assert torch.equal(parts.down_weight(0, _DequantizingBackend(conv_layout)), wanted)  # type: ignore[arg-type]
    assert parts.down_weight(0, _DequantizingBackend(None)) is None  # type: ignore[arg-type]


def test_an_unknown_architecture_is_a_clear_error() -> None:
    config = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=INTER, num_hidden_layers=1,
                                    num_attention_heads=4, word_embed_proj_dim=HIDDEN)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ArchitectureError) as caught:
        model_parts(model)
    assert str(caught.value) == (
        "the probes do not know architecture OPTForCausalLM (model_type=opt); "
        "supported: gemma, gpt2, llama, mistral, qwen2"
    )


def test_a_known_family_with_a_missing_module_is_a_clear_error() -> None:
    model = tiny("llama")
    del model.model.norm
    with pytest.raises(ArchitectureError, match="expected module 'model.norm' in this llama model"):
        model_parts(model)


# --- scaffolding shared by the probe suites' tests ------------------------------------------------------------


def tiny_runtime_at(folder: Path) -> Any:
    """A runtime on the tiny random Llama of ``tests/tiny.py`` built under ``folder``."""
    from pytest_qxai.models.loading import load_reference, load_tokenizer
    from pytest_qxai.runtime import Runtime
    from tiny import build_tiny_model

    location = build_tiny_model(folder)
    tokenizer = load_tokenizer(location, revision=None, trust_remote_code=False)
    model = load_reference(location, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    return Runtime(model, tokenizer, batch_size=4)


def tiny_pair(
    runtime: Any, config: Any, backend: Any = None, quantized_backward: tuple[bool, str] = (True, "ok"),
) -> Any:
    """A pair of a tiny model and an independent copy of it: two models, as ``--quant=none`` gives (no result cache)."""
    import copy

    from pytest_qxai.models.pair import ModelPair, ModelSide
    from pytest_qxai.runtime import Runtime
    from pytest_qxai.storage import DiskCache

    twin = Runtime(copy.deepcopy(runtime.model), runtime.tokenizer, batch_size=runtime.batch_size)
    reference = ModelSide("reference", runtime.model, runtime, "tiny", backward=(True, "ok"))
    quantized = ModelSide("quantized", twin.model, twin, "tiny-copy", backward=quantized_backward)
    return ModelPair(reference, quantized, runtime.tokenizer, config, source=None,  # type: ignore[arg-type]
                     backend=backend or _DequantizingBackend(None), cache=DiskCache(None))


def test_a_pair_refuses_one_model_on_both_sides(make_config: Any) -> None:
    """A suite compares two models; one object on both sides would let either side's hooks reach the other."""
    from pytest_qxai.models.pair import ModelPair, ModelSide

    model = tiny("llama")
    sides = [ModelSide(role, model, None, role) for role in ("reference", "quantized")]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be two model objects"):
        ModelPair(*sides, None, make_config(), source=None, backend=None, cache=None)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def smollm2() -> Any:
    """A runtime on the embedded SmolLM2-135M-Instruct (fp32, CPU), loaded once per process."""
    from pytest_qxai.errors import QxaiUsageError
    from pytest_qxai.models.loading import load_reference, load_tokenizer, materialize
    from pytest_qxai.models.source import default_source
    from pytest_qxai.options import default_cache_dir
    from pytest_qxai.runtime import Runtime

    try:
        source = default_source()
    except QxaiUsageError as exc:
        pytest.skip(str(exc))
    import tempfile

    location, _ = materialize(source, default_cache_dir(), Path(tempfile.mkdtemp(prefix="qxai-test-")))
    tokenizer = load_tokenizer(location, revision=None, trust_remote_code=False)
    model = load_reference(location, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    return Runtime(model, tokenizer, batch_size=16)


@pytest.fixture
def smollm2_runtime() -> Any:
    """The SmolLM2 runtime (import this fixture into a test module to use it there)."""
    return smollm2()
