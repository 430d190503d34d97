"""Quantization adapters on a tiny random Llama: what the probes and the gate rely on from every backend.

Every scheme that runs on CPU is quantized once per module. For each: the quantized weights differ
from the reference, ``dequantized_weight`` reproduces the layer's own output, the model comes back
frozen in eval mode, and gradients reach the inputs through the quantized layers themselves. The
GPTQ and HQQ disk caches, checkpoint detection and the error paths are covered too. Real-model
behaviour (next-token agreement on SmolLM2) is in ``test_backends_real.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pytest_qxai.backends.base import (  # noqa: E402
    QuantBackend,
    QuantContext,
    checkpoint_slot,
    get_backend,
    library_errors,
    require_library,
)
from pytest_qxai.backends.checkpoint import detect_checkpoint  # noqa: E402
from pytest_qxai.errors import BackendMissingError, QxaiError, QxaiUsageError  # noqa: E402
from pytest_qxai.models.loading import load_reference, load_tokenizer  # noqa: E402
from pytest_qxai.runtime import probe_backward  # noqa: E402
from pytest_qxai.specs import parse_spec  # noqa: E402
from tests.tiny import TINY_TEXTS, backend_or_skip, build_tiny_model  # noqa: E402

SPECS = [
    "none", "bnb8", "bnb4", "bnb4-fp4", "gptq4:group_size=64", "gptq8:group_size=64", "awq4:group_size=64",
    "hqq4", "hqq8", "hqq2", "quanto-int8", "torchao-int8", "gguf-q8_0", "gguf-q4_0", "gguf-q4_1", "gguf-q5_0",
    "gguf-q5_1", "ct-w4a16", "ct-w8a16", "ct-w8a8",
    # quanto's int4/int2 kernels compile a C++ extension on their first forward (30-100 s once per machine).
    pytest.param("quanto-int4", marks=pytest.mark.slow),
    pytest.param("quanto-int2", marks=pytest.mark.slow),
]
LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.up_proj"]
# Relative error of x @ W_deq.T against the layer's own output. Measured: 0 for the layers that dequantize
# and multiply in float32 (GPTQ, HQQ, quanto, torchao); ~1e-3 for AWQ (float16 matmul) and bnb4; ~1e-2 for
# LLM.int8(), which also rounds the activations to int8 (~8e-3 for compressed-tensors W8A8, which does too); 0 for
# the GGUF specs and W4A16/W8A16 (dense layers holding the dequantized weight).
LAYER_TOLERANCE = {16: 1e-6, 8: 0.03, 5: 1e-6, 4: 0.01, 2: 0.01}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model folder, built once for this module."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    """The tiny model's tokenizer, as the plugin loads it."""
    return load_tokenizer(tiny_dir, revision=None, trust_remote_code=False)


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> Any:
    """The full-precision tiny model."""
    return load_reference(tiny_dir, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)


@pytest.fixture(scope="module")
def make_ctx(tiny_dir: Path, tokenizer: Any) -> Callable[..., QuantContext]:
    """A :class:`QuantContext` for the tiny model on CPU (no disk cache unless given)."""

    def make(cache_dir: Path | None = None) -> QuantContext:
        return QuantContext(
            reference_dir=tiny_dir, device="cpu", dtype=torch.float32, tokenizer=tokenizer,
            calibration=list(TINY_TEXTS), seed=0, trust_remote_code=False, cache_dir=cache_dir,
        )

    return make


@pytest.fixture(scope="module")
def quantized(make_ctx: Callable[..., QuantContext]) -> Callable[[str], tuple[QuantBackend, Any, QuantContext]]:
    """Quantize a spec once per module: ``(backend, model, ctx)``; skips when the library is not installed."""
    done: dict[str, tuple[QuantBackend, Any, QuantContext]] = {}

    def get(text: str) -> tuple[QuantBackend, Any, QuantContext]:
        if text not in done:
            spec, backend = backend_or_skip(text)
            ctx = make_ctx()
            done[text] = (backend, backend.quantize(spec, ctx), ctx)
        return done[text]

    return get


@pytest.mark.parametrize("text", SPECS)
def test_quantized_model_is_frozen_in_eval_mode_on_cpu(quantized: Callable, text: str) -> None:
    """Every adapter hands back an inference-ready model: eval mode, no trainable parameter, on the device."""
    _, model, _ = quantized(text)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("text", SPECS)
def test_quantized_weights_differ_from_reference(quantized: Callable, reference: Any, text: str) -> None:
    """Quantization changes the decoder's linear weights (``none`` changes nothing); shapes are preserved."""
    backend, model, _ = quantized(text)
    modules, ref_modules = dict(model.named_modules()), dict(reference.named_modules())
    for name in LAYERS:
        weight, ref = backend.dequantized_weight(modules[name]), ref_modules[name].weight
        assert weight is not None, f"{text}: no dequantized weight for {name}"
        assert weight.dtype == torch.float32 and weight.shape == ref.shape
        rel = float((weight - ref).norm() / ref.norm())
        if text == "none":
            assert rel == 0.0
        else:
            assert rel > 1e-4, f"{text}: {name} looks unquantized (relative change {rel:.2e})"


def test_none_is_a_separate_copy_of_the_reference(quantized: Callable, reference: Any) -> None:
    """The null scheme returns a second model: equal weights, separate storage."""
    _, model, _ = quantized("none")
    assert model is not reference
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
        assert p.data_ptr() != q.data_ptr(), name


@pytest.mark.parametrize("text", SPECS)
def test_dequantized_weight_reproduces_the_layer(quantized: Callable, text: str) -> None:
    """``F.linear(x, dequantized_weight(m))`` matches ``m(x)`` within the backend's own arithmetic error."""
    backend, model, _ = quantized(text)
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(0)
    tolerance = LAYER_TOLERANCE[parse_spec(text).scheme.bits]
    for name in LAYERS:
        module = modules[name]
        x = torch.randn(6, module.in_features, generator=gen)
        with torch.no_grad():
            y = module(x).float()  # forward first: some kernels repack their weights on the first call
            weight = backend.dequantized_weight(module)
            bias = getattr(module, "bias", None)
            y_hat = torch.nn.functional.linear(x, weight, None if bias is None else bias.float())
        rel = float((y - y_hat).norm() / y.norm())
        assert rel <= tolerance, f"{text}: {name} relative error {rel:.2e} > {tolerance}"


@pytest.mark.parametrize("text", SPECS)
def test_a_backend_that_keeps_tokens_apart_gives_a_row_the_same_output_in_any_batch(
    quantized: Callable, text: str
) -> None:
    """``mixes_tokens`` is what lets the quantized side run a shared prefix apart, so it must be true.

    Two rows give the same output alone and beside rows of outliers (50 times the scale), unless the backend says
    its kernels mix a pass's tokens; LLM.int8 does (it takes the outliers' columns apart in float16), and shows it.
    """
    backend, model, _ = quantized(text)
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(1)
    mixes = backend.mixes_tokens(model)
    assert mixes == text.startswith("bnb8")
    for name in LAYERS:
        module = modules[name]
        rows = torch.randn(1, 2, module.in_features, generator=gen)  # [batch, tokens, width], as a model calls it
        loud = 50 * torch.randn(1, 4, module.in_features, generator=gen)
        with torch.no_grad():
            alone = module(rows).float()
            beside = module(torch.cat([rows, loud], dim=1))[:, :2].float()
        rel = float((alone - beside).norm() / alone.norm())
        if mixes:
            assert rel > 1e-3, f"{text}: {name} gave the same rows beside outliers (relative change {rel:.2e})"
        else:
            assert rel <= 1e-5, f"{text}: {name} changed a row beside outliers by {rel:.2e}"


def test_dequantized_weight_of_an_unquantized_layer_is_its_weight(quantized: Callable) -> None:
    """``lm_head`` stays full precision in every adapter; its weight comes back as is."""
    backend, model, _ = quantized("hqq4")
    assert torch.equal(backend.dequantized_weight(model.lm_head), model.lm_head.weight.float())
    assert backend.dequantized_weight(model.model.norm) is None


@pytest.mark.parametrize("text", SPECS)
def test_backward_probe_works(
    quantized: Callable, tokenizer: Any, text: str, record_property: Callable[[str, object], None]
) -> None:
    """Gradients reach the input embeddings of every CPU backend (what the gradient-based methods need)."""
    _, model, _ = quantized(text)
    ok, reason = probe_backward(model, tokenizer)
    record_property("backward", f"{ok}: {reason}")
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert ok, f"{text}: {reason}"


@pytest.mark.parametrize("text", SPECS)
def test_layer_gradient_is_the_dequantized_weight(quantized: Callable, text: str) -> None:
    """Each quantized layer's input gradient is right, even after inference forwards.

    The probe alone cannot catch a kernel without autograd: gradients would still reach the inputs
    through the residual stream. For ``y = x @ W.T``, ``d(sum y)/dx`` is the column sum of ``W``.
    """
    backend, model, _ = quantized(text)
    modules = dict(model.named_modules())
    tolerance = LAYER_TOLERANCE[parse_spec(text).scheme.bits]
    for name in LAYERS:
        module = modules[name]
        with torch.no_grad():
            module(torch.randn(3, module.in_features))  # inference first: some kernels repack here
        weight = backend.dequantized_weight(module)
        x = torch.randn(4, module.in_features, requires_grad=True)
        with torch.enable_grad():
            module(x).float().sum().backward()
        expected = weight.sum(0).expand(4, -1)
        rel = float((x.grad - expected).norm() / expected.norm())
        assert rel <= tolerance, f"{text}: {name} input gradient off by {rel:.2e}"


def test_only_gptq_uses_calibration() -> None:
    """Only calibration-based schemes put the calibration hash into the cache key."""
    for text in ["none", "bnb4", "hqq4", "quanto-int8", "torchao-int8", "gptq4", "awq4"]:
        spec = parse_spec(text)
        try:
            require_library(spec.scheme)
        except BackendMissingError:
            continue
        assert get_backend(spec.scheme.backend).uses_calibration(spec) is (spec.scheme.backend == "gptq")


@pytest.mark.parametrize("text", ["gptq4:group_size=64", "hqq4"])
def test_checkpoint_is_cached_and_reused(
    make_ctx: Callable[..., QuantContext], tokenizer: Any, tmp_path: Path, text: str
) -> None:
    """The first run saves the quantized model into the cache entry; the second loads it, with equal outputs."""
    spec, backend = backend_or_skip(text)
    entry = tmp_path / "entry"
    first_ctx, second_ctx = make_ctx(entry), make_ctx(entry)
    first = backend.quantize(spec, first_ctx)
    assert (entry / "checkpoint" / "config.json").is_file()
    second = backend.quantize(spec, second_ctx)
    notes = [v for k, v in sorted(first_ctx.notes.items()) if k.endswith("_checkpoint")]
    notes += [v for k, v in sorted(second_ctx.notes.items()) if k.endswith("_checkpoint")]
    assert notes == ["saved", "cached"]
    assert [p.name for p in entry.iterdir() if p.is_dir()] == ["checkpoint"]  # no staging folder left behind
    ids = tokenizer(TINY_TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_checkpoint_slot_publishes_only_complete_folders(make_ctx: Callable[..., QuantContext], tmp_path: Path) -> None:
    """A failure while writing leaves no checkpoint; a clean exit publishes it, and the next entry finds it."""
    ctx = make_ctx(tmp_path / "entry")
    with pytest.raises(RuntimeError), checkpoint_slot(ctx) as slot:
        assert not slot.found and slot.persistent
        (slot.path / "config.json").write_text("{}")
        raise RuntimeError("interrupted")
    assert [p for p in (tmp_path / "entry").iterdir() if p.is_dir()] == []  # neither checkpoint nor staging
    with checkpoint_slot(ctx) as slot:
        (slot.path / "config.json").write_text("{}")
    with checkpoint_slot(ctx) as slot:
        assert slot.found and slot.path == tmp_path / "entry" / "checkpoint"
    with checkpoint_slot(make_ctx(None)) as slot:
        assert not slot.found and not slot.persistent and slot.path.is_dir()
        temporary = slot.path
    assert not temporary.exists()


def test_gptq_checkpoint_is_detected_and_loads(
    make_ctx: Callable[..., QuantContext], tokenizer: Any, tmp_path: Path
) -> None:
    """A checkpoint the adapter saved is recognised as GPTQ and loads through ``load_checkpoint``."""
    spec, backend = backend_or_skip("gptq4:group_size=64")
    made = backend.quantize(spec, make_ctx(tmp_path))
    folder = tmp_path / "checkpoint"
    assert detect_checkpoint(folder) == ("gptq", "gptq4")
    loaded = backend.load_checkpoint(str(folder), make_ctx())
    ids = tokenizer(TINY_TEXTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(made(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("text", ["bnb8", "bnb4", "bnb4-fp4"])
def test_bitsandbytes_checkpoint_round_trip(quantized: Callable, tokenizer: Any, tmp_path: Path, text: str) -> None:
    """A saved bitsandbytes model is detected with its scheme and loads back with the same outputs."""
    backend, model, ctx = quantized(text)
    model.save_pretrained(tmp_path / "saved")
    assert detect_checkpoint(tmp_path / "saved") == ("bnb", text)
    loaded = backend.load_checkpoint(str(tmp_path / "saved"), ctx)
    ids = tokenizer(TINY_TEXTS[2], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-5)


def _write_config(folder: Path, quantization_config: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"model_type": "llama"}
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        ({"quant_method": "gptq", "bits": 8}, ("gptq", "gptq8")),
        ({"quant_method": "awq", "bits": 4}, ("gptq", "awq4")),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, ("bnb", "bnb8")),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, ("bnb", "bnb4")),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, ("bnb", "bnb4-fp4")),
    ],
)
def test_detect_checkpoint_reads_the_quant_method(tmp_path: Path, quant: dict[str, Any], expected: tuple) -> None:
    """``quantization_config.quant_method`` (and bits) name the backend and scheme."""
    assert detect_checkpoint(_write_config(tmp_path / "ckpt", quant)) == expected


def test_detect_checkpoint_errors_are_one_line(tmp_path: Path, tiny_dir: Path) -> None:
    """Missing folders, unquantized models and unknown formats are usage errors that say what is wrong."""
    with pytest.raises(QxaiUsageError, match=r"^--qxai-quantized .*missing: no such file or folder$"):
        detect_checkpoint(tmp_path / "missing")
    with pytest.raises(QxaiUsageError) as plain:
        detect_checkpoint(tiny_dir)
    assert str(plain.value) == (
        f"--qxai-quantized {tiny_dir}: not a quantized checkpoint (config.json has no quantization_config)"
    )
    with pytest.raises(QxaiUsageError, match="unsupported quant_method 'hqq'.*gptq, awq, bitsandbytes"):
        detect_checkpoint(_write_config(tmp_path / "hqq", {"quant_method": "hqq"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(QxaiUsageError, match="no config.json"):
        detect_checkpoint(tmp_path / "empty")


CT_W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0": {
    "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}}}


def test_compressed_tensors_checkpoint_needs_its_package(tmp_path: Path) -> None:
    """compressed-tensors checkpoints are their own scheme (read from the config groups), or fail naming the package."""
    folder = _write_config(tmp_path / "ct", CT_W4A16)
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        with pytest.raises(QxaiUsageError, match="pip install compressed-tensors"):
            detect_checkpoint(folder)
    else:
        assert detect_checkpoint(folder) == ("ctensors", "ct-w4a16")


@pytest.mark.parametrize(("groups", "message"), [
    ({}, "compressed-tensors config has no config_groups"),
    ({"g": {"weights": {"num_bits": 8, "type": "float"}, "input_activations": {"num_bits": 8, "type": "float"}}},
     "compressed-tensors scheme float/float W8A8 is not supported (supported: ct-w4a16, ct-w8a16, ct-w8a8)"),
    ({"a": {"weights": {"num_bits": 4}}, "b": {"weights": {"num_bits": 8}}},
     "compressed-tensors groups mix schemes (ct-w4a16, ct-w8a16)"),
])
def test_compressed_tensors_schemes_outside_the_table_are_refused(tmp_path: Path, groups: dict, message: str) -> None:
    """A compressed-tensors config the adapter does not run is a usage error naming what it found."""
    pytest.importorskip("compressed_tensors")
    folder = _write_config(tmp_path / "ct", {"quant_method": "compressed-tensors", "config_groups": groups})
    with pytest.raises(QxaiUsageError) as info:
        detect_checkpoint(folder)
    assert str(info.value) == f"--qxai-quantized {folder}: {message}"


@pytest.mark.parametrize("text", ["ct-w4a16", "ct-w8a8"])
def test_compressed_tensors_checkpoint_the_project_writes_loads_back(
    text: str, tiny_dir: Path, reference: Any, make_ctx: Callable[..., QuantContext], tmp_path: Path
) -> None:
    """A ``ct-*`` spec writes a compressed-tensors checkpoint; as ``--qxai-quantized`` it is detected as that scheme
    and loads back with the same weights and outputs as the spec's own model."""
    spec, backend = backend_or_skip(text)
    ctx = make_ctx(cache_dir=tmp_path / "entry")
    model = backend.quantize(spec, ctx)
    checkpoint = tmp_path / "entry" / "checkpoint"
    assert ctx.notes["ct_checkpoint"] == "saved"
    assert detect_checkpoint(checkpoint) == ("ctensors", text)
    config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    assert config["ignore"] == ["lm_head"] and config["format"] in ("pack-quantized", "int-quantized")
    loaded = backend.load_checkpoint(str(checkpoint), make_ctx())
    ids = torch.tensor([[1, 5, 9, 30, 77, 120]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    layer, ref = loaded.model.layers[0].mlp.down_proj, reference.model.layers[0].mlp.down_proj.weight
    bound = {"ct-w4a16": 0.2, "ct-w8a8": 0.02}[text]  # RTN on random weights: ~0.11 at 4 bits, ~0.007 at 8 bits
    assert 1e-4 < float((backend.dequantized_weight(layer) - ref).norm() / ref.norm()) < bound


def test_torchao_int4_refuses_cpu(make_ctx: Callable[..., QuantContext]) -> None:
    """torchao's int4 kernel is CUDA-only: asking for it on CPU is a usage error, not a crash."""
    spec = parse_spec("torchao-int4")
    try:
        require_library(spec.scheme)
    except BackendMissingError as exc:
        pytest.skip(str(exc))
    with pytest.raises(QxaiUsageError, match="needs a CUDA device and bfloat16"):
        get_backend("torchao").quantize(spec, make_ctx())


def test_gptq_without_calibration_is_a_usage_error(make_ctx: Callable[..., QuantContext]) -> None:
    """GPTQ cannot run without calibration text; the error says so before any work."""
    ctx = make_ctx()
    ctx.calibration = []
    with pytest.raises(QxaiUsageError, match="needs calibration texts"):
        get_backend("gptq").quantize(parse_spec("gptq4"), ctx)


def test_library_failures_become_one_line_errors() -> None:
    """A library exception turns into a one-line QxaiError naming the library and the action, cause kept."""
    with pytest.raises(QxaiError) as caught, library_errors("somelib", "quantize with x"):
        raise ValueError("bad group size\nlong traceback detail")
    assert str(caught.value) == "somelib could not quantize with x: ValueError: bad group size"
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(MemoryError), library_errors("somelib", "load"):
        raise MemoryError


def test_a_group_size_that_does_not_divide_a_layer_names_one_that_does() -> None:
    """SmolLM2-135M's 576-wide layers refuse the default 128-groups, and the message says 64 fits."""
    from pytest_qxai.backends.base import check_widths
    from pytest_qxai.errors import QxaiError
    from pytest_qxai.specs import parse_spec

    layers = {"q_proj": torch.nn.Linear(576, 576), "down_proj": torch.nn.Linear(1536, 576)}
    with pytest.raises(QxaiError, match=r"576 input features, not a multiple of group_size=128 "
                                        r"\(group_size=64 divides every layer: --quant ct-w4a16:group_size=64\)"):
        check_widths(layers, parse_spec("ct-w4a16"), 128, "group_size=128")
    check_widths(layers, parse_spec("ct-w4a16:group_size=64"), 64, "group_size=64")
