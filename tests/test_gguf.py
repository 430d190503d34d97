"""GGUF: the ``gguf-*`` specs, GGUF releases as ``--qxai-quantized``, and the pair checks that refuse bad files.

Bad input (unknown or undequantizable tensor types, corrupt files, a release of another model) is a usage
error before any model loads: the files here are small headers written with GGUFWriter. The K-quant read
path is checked on blocks laid out by ``tests/gguf_files.py`` against values computed from the format's
formula. One slow test writes a Q8_0/Q4_0/Q4_K/Q6_K release of the embedded model and gates it end to end.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.models.gguf_file import check_gguf_pair, read_header
from pytest_qxai.models.source import ModelSource
from tests.gguf_files import gguf, header_only, pack_q4_k, pack_q6_k, requantize, set_tensor_type

TOKENS = ["<s>", "</s>", "a", "b", "c", "ab"]


def _reference(tmp_path: Path, **kwargs: Any) -> Path:
    return header_only(tmp_path / "ref-F16.gguf", tokens=TOKENS, **kwargs)


def _source(path: Path) -> ModelSource:
    return ModelSource("gguf", str(path.parent), path.name, gguf_file=path.name)


@pytest.mark.parametrize(("pack", "type_name"), [(pack_q4_k, "Q4_K"), (pack_q6_k, "Q6_K")])
def test_k_quant_blocks_dequantize_to_what_they_encode(pack: Any, type_name: str) -> None:
    """The gguf library reads K-quant blocks of known codes and scales back to exactly the values the format defines."""
    weights = np.random.default_rng(0).normal(size=(6, 512)).astype(np.float32)
    blocks, expected = pack(weights)
    restored = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[type_name])
    np.testing.assert_array_equal(restored, expected)
    assert 0 < float(np.linalg.norm(expected - weights) / np.linalg.norm(weights)) < 0.1  # a quantization, not noise


def test_header_names_the_release_by_its_file_type(tmp_path: Path) -> None:
    """A release is named as llama.cpp names it (``Q4_K_M``); without a file type, by its commonest weight type."""
    q4k, _ = pack_q4_k(np.ones((2, 256), np.float32))
    path = header_only(tmp_path / "k.gguf", tokens=TOKENS, tensors={"blk.0.ffn_down.weight": (q4k, gguf.GGMLQuantizationType.Q4_K)},
                       extra={"general.file_type": gguf.LlamaFileType.MOSTLY_Q4_K_M.value})
    header = read_header(path, "--qxai-quantized")
    assert header.quant_label == "Q4_K_M" and header.types == {"blk.0.ffn_down.weight": "Q4_K"}
    assert header.shapes == {"blk.0.ffn_down.weight": (2, 256)}
    plain = header_only(tmp_path / "plain.gguf", tokens=TOKENS,
                        tensors={"a.weight": (q4k, gguf.GGMLQuantizationType.Q4_K)})
    assert read_header(plain, "--qxai-quantized").quant_label == "Q4_K"


def _differs(tmp_path: Path, **quantized: Any) -> str:
    reference = _reference(tmp_path)
    with pytest.raises(QxaiUsageError) as info:
        check_gguf_pair(_source(reference), header_only(tmp_path / "q.gguf", **quantized))
    return str(info.value).split(": ", 1)[1]


def test_a_release_of_another_model_is_refused_naming_the_difference(tmp_path: Path) -> None:
    """Architecture, vocabulary (size, then tokens) and tensor shapes are compared, the first difference named."""
    assert _differs(tmp_path, arch="qwen2", tokens=TOKENS) == "architectures differ (reference llama, quantized qwen2)"
    assert _differs(tmp_path, tokens=TOKENS[:3]) == "vocabularies differ (6 tokens in the reference, 3 quantized)"
    assert _differs(tmp_path, tokens=[*TOKENS[:5], "ba"]) == (
        "vocabularies differ (token 5 is 'ab' in the reference, 'ba' quantized)")
    assert _differs(tmp_path, tokens=TOKENS, tensors={"token_embd.weight": (np.zeros((4, 32), np.float32), None)}) == (
        "shapes differ: token_embd.weight is [3, 32] in the reference, [4, 32] quantized")
    assert _differs(tmp_path, tokens=TOKENS, tensors={"output.weight": (np.zeros((3, 32), np.float32), None)}) == (
        "tensors differ (1 only in the reference, e.g. ['token_embd.weight']; 1 only in the quantized file, "
        "e.g. ['output.weight'])")
    reference = _reference(tmp_path)
    assert check_gguf_pair(_source(reference), reference).architecture == "llama"  # a file matches itself


def test_a_release_is_compared_with_an_hf_folder_reference(tmp_path: Path) -> None:
    """Against an HF folder: model_type, the config's sizes and tokenizer.json's vocabulary."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "vocab_size": 6}))
    vocab = {token: index for index, token in enumerate(TOKENS)}
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": []}))
    reference = ModelSource("local", str(folder), "hf")
    good = header_only(tmp_path / "good.gguf", tokens=TOKENS, extra={"llama.embedding_length": 64})
    assert check_gguf_pair(reference, good).quant_label == "F32"
    cases = {
        "arch.gguf": ({"arch": "gemma", "tokens": TOKENS}, "architectures differ (reference llama, quantized gemma)"),
        "wide.gguf": ({"tokens": TOKENS, "extra": {"llama.embedding_length": 128}},
                      "shapes differ: hidden_size is 64 in the reference, 128 quantized"),
        "vocab.gguf": ({"tokens": TOKENS[::-1]}, "vocabularies differ (token 0 is '<s>' in the reference, 'ab' quantized)"),
    }
    for name, (kwargs, message) in cases.items():
        with pytest.raises(QxaiUsageError) as info:
            check_gguf_pair(reference, header_only(tmp_path / name, **kwargs))
        assert str(info.value) == f"--qxai-quantized {tmp_path / name} does not match --qxai-model hf: {message}"


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each bad release and the message it must produce (after the ``--qxai-quantized PATH`` prefix)."""
    version = importlib.metadata.version("gguf")
    unknown = header_only(tmp_path / "unknown.gguf", tokens=TOKENS)
    set_tensor_type(unknown, "token_embd.weight", 250)
    unsupported = header_only(tmp_path / "q8_1.gguf", tokens=TOKENS, tensors={
        "token_embd.weight": (np.zeros((3, 40), np.uint8), gguf.GGMLQuantizationType.Q8_1)})
    valid = header_only(tmp_path / "valid.gguf", tokens=TOKENS).read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(valid[:200])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"PK\x03\x04" + bytes(300))
    other = header_only(tmp_path / "other-Q8_0.gguf", tokens=TOKENS[:4])
    return {
        "unknown type": (unknown, f": a tensor has type id 250, unknown to gguf {version}"),
        "unsupported type": (unsupported, f": tensor token_embd.weight has type Q8_1, which gguf {version} "
                             "cannot dequantize"),
        "truncated": (truncated, ": not a readable GGUF file ("),
        "not a GGUF": (garbage, ": not a readable GGUF file (GGUF magic invalid)"),
        "another model": (other, " does not match --qxai-model ref-F16.gguf: vocabularies differ (6 tokens in the "
                          "reference, 4 quantized)"),
    }


def test_bad_releases_are_one_usage_error_line_before_any_model_loads(pytester: pytest.Pytester) -> None:
    """Unknown or undequantizable types, corrupt files and a release of another model: exit 4, one ERROR line,
    no traceback, and no test (so no model) ran."""
    reference = _reference(pytester.path)
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError('a suite ran')\n")
    for case, (path, message) in _bad_files(pytester.path).items():
        result = pytester.runpytest(f"--qxai-model={reference}", f"--qxai-quantized={path}",
                                               "--qxai-device=cpu", "-p", "no:randomly")
        text = result.stdout.str() + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, f"{case}: {text}"
        errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
        assert len(errors) == 1 and f"--qxai-quantized {path}{message}" in errors[0], f"{case}: {errors}"
        assert "Traceback" not in text and "a suite ran" not in text, case


def test_a_release_is_recorded_under_its_own_name(pytester: pytest.Pytester) -> None:
    """The default baseline name of ``--qxai-quantized`` is the release's file stem, not the unused ``--quant``
    default; a matching pair passes validation without loading a model."""
    reference = _reference(pytester.path)
    release = header_only(pytester.path / "model-Q4_K_M.gguf", tokens=TOKENS)
    pytester.makepyfile(
        "def test_name(qxai_config):\n"
        "    assert qxai_config.baseline_name == 'model-Q4_K_M-smoke', qxai_config.baseline_name\n"
    )
    result = pytester.runpytest(f"--qxai-model={reference}", f"--qxai-quantized={release}", "--qxai-device=cpu",
                                "--qxai-profile=smoke", "-p", "no:randomly")
    result.assert_outcomes(passed=1)


def test_gguf_spec_rounds_decoder_linears_through_the_library(tmp_path: Path) -> None:
    """``gguf-q4_0`` holds exactly the gguf library's round trip in every decoder linear; embeddings, ``lm_head``
    and norms are untouched."""
    torch = pytest.importorskip("torch")
    from pytest_qxai.backends.base import QuantContext
    from pytest_qxai.models.loading import load_reference, load_tokenizer
    from tests.tiny import backend_or_skip, build_tiny_model

    folder = build_tiny_model(tmp_path)
    spec, backend = backend_or_skip("gguf-q4_0")
    ctx = QuantContext(reference_dir=folder, device="cpu", dtype=torch.float32,
                       tokenizer=load_tokenizer(folder, revision=None, trust_remote_code=False), calibration=[],
                       seed=0, trust_remote_code=False, cache_dir=None)
    model = backend.quantize(spec, ctx)
    reference = load_reference(folder, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    qtype = gguf.GGMLQuantizationType.Q4_0
    changed = set()
    for (name, param), (_, ref) in zip(model.named_parameters(), reference.named_parameters()):
        if name.endswith("proj.weight"):
            expected = gguf.quants.dequantize(gguf.quants.quantize(ref.numpy(), qtype), qtype)
            np.testing.assert_array_equal(param.numpy(), expected)
            changed.add(name)
        else:
            assert torch.equal(param, ref), name
    assert len(changed) == 14 and ctx.notes["gguf"]["quantized_layers"] == 14  # 7 linears x 2 layers


def _mixed_type(name: str, shape: tuple[int, ...]) -> str | None:
    """A Q4_K_M-like mix: K-quants where rows hold whole 256-blocks (ffn_down), 32-blocks elsewhere."""
    if len(shape) != 2 or name == "token_embd.weight":
        return None
    layer = int(name.split(".")[1])
    if "ffn_down" in name:
        return "Q6_K" if layer % 2 else "Q4_K"
    return "Q4_0" if layer % 2 else "Q8_0"


@pytest.mark.slow
def test_a_gguf_release_is_gated_against_its_reference(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """A Q8_0/Q4_0/Q4_K/Q6_K release of the embedded model, written here with GGUFWriter, runs the knowledge suite
    as ``--qxai-quantized``; its converted weights are exactly what each block type encodes."""
    pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from pytest_qxai.models.loading import materialize
    from pytest_qxai.models.source import default_source
    from pytest_qxai.options import default_cache_dir

    try:
        source = default_source()
    except QxaiUsageError as exc:
        pytest.skip(str(exc))
    cache = tmp_path / "cache"
    cache.mkdir()
    materialize(source, default_cache_dir(), tmp_path)  # the reference's conversion, shared with the other tests
    os.symlink(default_cache_dir() / "models", cache / "models")
    release = tmp_path / "SmolLM2-135M-Instruct-mixed-Q4_K_M.gguf"
    written = requantize(Path(source.location) / str(source.gguf_file), release, _mixed_type, "MOSTLY_Q4_K_M")
    suite = Path(__file__).resolve().parents[1] / "suites" / "test_knowledge.py"
    result = pytester.runpytest_subprocess(
        str(suite), f"--qxai-quantized={release}", f"--qxai-cache-dir={cache}", "--qxai-profile=smoke",
        "--qxai-device=cpu", f"--qxai-baseline-dir={tmp_path / 'baselines'}", "--qxai-update-baselines",
        f"--qxai-report-json={tmp_path / 'report.json'}", "-p", "no:randomly",
    )
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metadata"]["quant"] == "gguf-file:Q4_K_M"
    checks = [c for c in report["checks"] if c["kind"] == "vs_reference" and c["suite"] == "knowledge"
              and c["verdict"] != "skipped"]
    assert checks and all(c["n"] == 24 for c in checks), checks  # the smoke profile's 24 items, both sides
    (converted,) = cache.glob("quantized/checkpoint-*/checkpoint/model")
    weights: dict[str, np.ndarray] = {}
    for part in converted.glob("*.safetensors"):
        weights.update(load_file(part))
    for gguf_name, hf_name in [("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                               ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
                               ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
                               ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight")]:
        np.testing.assert_array_equal(weights[hf_name], written[gguf_name], err_msg=gguf_name)
