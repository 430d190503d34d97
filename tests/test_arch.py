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
from pytest_qxai.methods.arch import model_parts  # noqa: E402
from pytest_qxai.models.families import ARCHITECTURES, TESTED_FAMILIES  # noqa: E402

VOCAB, HIDDEN, INTER, LAYERS = 97, 32, 48, 2

def tiny(family: str) -> Any:
    """A random tiny causal LM of one family, float32, in eval mode."""
    from tiny import family_config

    torch.manual_seed(0)
    config = family_config(family, VOCAB, HIDDEN, INTER, LAYERS, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


def test_every_tested_model_type_has_a_tiny_model_here() -> None:
    from tiny import FAMILIES

    assert sorted({tiny(family).config.model_type for family in FAMILIES}) == sorted(TESTED_FAMILIES)
    assert sorted(ARCHITECTURES) == sorted(TESTED_FAMILIES)


def test_the_name_table_agrees_with_the_structure(model: Any) -> None:
    """``keep=`` and blame name modules from the table: the names must be the modules the structure finds."""
    spec = ARCHITECTURES[model.config.model_type]
    blocks = [layer.block for layer in model_parts(model).layers]
    assert list(model.get_submodule(spec.layers)) == blocks
    assert all(type(getattr(b, spec.attn)).__name__.endswith("Attention") for b in blocks)
    assert all(type(getattr(b, spec.mlp)).__name__.endswith("MLP") for b in blocks)


@pytest.fixture(params=__import__("tiny").FAMILIES)
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
    """Output = input + attention contribution + MLP contribution, at every position (post-norm blocks too)."""
    seen, _ = run_with_taps(model, torch.tensor([[3, 14, 15, 92, 65]]))
    for index in range(LAYERS):
        rebuilt = seen[f"in{index}"] + seen[f"attn{index}"] + seen[f"mlp{index}"]
        torch.testing.assert_close(rebuilt, seen[f"out{index}"], atol=1e-5, rtol=1e-5)


def test_mlp_output_is_the_sum_of_its_value_neurons(model: Any) -> None:
    """m · W_down (+ bias) reproduces the MLP contribution: the columns of W_down are the value neurons."""
    seen, _ = run_with_taps(model, torch.tensor([[3, 14, 15, 92, 65]]))
    parts = model_parts(model)
    if parts.neuron_caveat:
        assert model.config.model_type in ("gemma2", "gemma3_text", "olmo2")  # post-norm blocks, said so
        return
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
    logits = model.lm_head(parts.final_norm(leaf))
    if parts.softcap:
        logits = torch.tanh(logits / parts.softcap) * parts.softcap
    direct = torch.log_softmax(logits, -1)[torch.arange(7), tokens]
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
    assert str(caught.value) == ("the probes cannot find decoder layers (blocks holding an attention module and an "
                                 "MLP) in architecture OPTForCausalLM (model_type=opt)")


def test_a_family_with_a_missing_module_is_a_clear_error() -> None:
    model = tiny("llama3")
    del model.model.norm
    with pytest.raises(ArchitectureError) as caught:
        model_parts(model)
    assert str(caught.value) == ("the probes cannot find the final norm (base model or language_model attribute "
                                 "norm / ln_f / final_layernorm / final_layer_norm) in architecture LlamaForCausalLM "
                                 "(model_type=llama)")


def test_post_norm_and_soft_capped_families_say_why_value_neurons_are_not_additive() -> None:
    assert model_parts(tiny("llama3")).neuron_caveat is None
    assert model_parts(tiny("olmo2")).neuron_caveat == (
        "olmo2 normalises the MLP output before adding it to the residual stream")
    assert model_parts(tiny("gemma2")).neuron_caveat == (
        "gemma2 normalises the MLP output before adding it to the residual stream and gemma2 soft-caps its final "
        "logits (c = 30.0)")


def _other_config(family: str) -> Any:
    """A tiny config of a family outside ``tiny.FAMILIES`` whose final norm, logits or residual adds differ."""
    common = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
              "num_attention_heads": 4, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    builders = {
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**common),
        "gemma3": lambda: transformers.Gemma3Config(
            text_config={**common, "num_key_value_heads": 2, "head_dim": HIDDEN // 4},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
            mm_tokens_per_image=4, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        "cohere": lambda: transformers.CohereConfig(**common),
        "granite": lambda: transformers.GraniteConfig(**common, logits_scaling=8.0),
        "granite_residual": lambda: transformers.GraniteConfig(**common, logits_scaling=8.0, residual_multiplier=0.22),
        "bloom": lambda: transformers.BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=4),
    }
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(builders[family]()).float().eval()


@pytest.mark.parametrize("family", ["gpt_neox", "gemma3", "cohere", "granite", "granite_residual", "bloom"])
def test_the_lens_is_the_models_own_distribution_in_other_families(family: str) -> None:
    """The final norm is found (GPT-NeoX's ``final_layer_norm``, Gemma 3's ``language_model.norm``) and the lens
    scales logits as the model does (Cohere's ``logit_scale``, Granite's ``logits_scaling``)."""
    model = _other_config(family)
    parts = model_parts(model)
    seen: list[Any] = []
    handle = parts.final_norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[3, 14, 15, 92, 65]])).logits
    handle.remove()
    torch.testing.assert_close(parts.log_probs(seen[-1]), torch.log_softmax(logits.float(), -1), atol=1e-5, rtol=1e-5)
    vectors = torch.randn(2, VOCAB)
    expected = parts.logit_scale * vectors @ model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(parts.unembed_transpose(vectors), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt_neox", "gemma3", "cohere", "granite"])
def test_other_families_decompose_into_attention_and_mlp_outputs(family: str) -> None:
    model = _other_config(family)
    seen, _ = run_with_taps(model, torch.tensor([[3, 14, 15, 92, 65]]))
    for index in range(LAYERS):
        rebuilt = seen[f"in{index}"] + seen[f"attn{index}"] + seen[f"mlp{index}"]
        torch.testing.assert_close(rebuilt, seen[f"out{index}"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("family", "why"), [
    ("bloom", "its attention and MLP modules add the residual to their output"),
    ("granite_residual", "it scales them by residual_multiplier = 0.22 before adding them")])
def test_a_block_whose_sublayer_outputs_are_not_its_contributions_refuses_the_split(family: str, why: str) -> None:
    """Bloom's modules return output + residual and Granite scales both sublayers: no module's output is what the
    block adds, so the probes that need it stop with one line instead of computing wrong values."""
    layer = model_parts(_other_config(family)).layers[0]
    for part in ("attn", "mlp"):
        with pytest.raises(ArchitectureError) as caught:
            getattr(layer, part)
        assert str(caught.value) == (f"the probes cannot split {family.split('_')[0]}'s residual stream into "
                                     f"attention and MLP contributions ({why})")


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

    model = tiny("llama3")
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
