"""``keep=``: the spec grammar round-trips, and each library leaves exactly the kept sublayers unquantized."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.specs import COMPONENTS, KEEP_BACKENDS, SCHEMES, canonical_keep, format_keep, keep_units, parse_keep, \
    parse_spec

UNITS = st.frozensets(st.tuples(st.integers(0, 120), st.sampled_from(COMPONENTS)), min_size=1, max_size=40)


@given(UNITS)
def test_keep_sets_round_trip_through_their_canonical_text(units: frozenset[tuple[int, str]]) -> None:
    text = format_keep(units)
    assert parse_keep(text) == units
    assert canonical_keep(text) == text


@given(UNITS, st.sampled_from(["bnb4", "hqq2", "quanto-int2", "torchao-int8"]))
def test_specs_with_keep_round_trip(units: frozenset[tuple[int, str]], scheme: str) -> None:
    spec = parse_spec(f"{scheme}:keep={format_keep(units)}")
    assert keep_units(spec) == units
    assert parse_spec(str(spec)) == spec


def test_keep_grammar_examples() -> None:
    spec = parse_spec("bnb4:keep=mlp.17,mlp.18,3-4,double_quant=true")
    assert str(spec) == "bnb4:double_quant=true,keep=3-4,mlp.17-18"
    assert keep_units(spec) == {(3, "attn"), (3, "mlp"), (4, "attn"), (4, "mlp"), (17, "mlp"), (18, "mlp")}
    assert canonical_keep("attn.2, mlp.2 ,5") == "2,5"


def test_keep_is_not_part_of_resolved_parameters_until_given() -> None:
    assert "keep" not in parse_spec("hqq4").resolved
    assert parse_spec("hqq4:keep=1").resolved["keep"] == "1"


def test_only_backends_that_can_skip_modules_accept_keep() -> None:
    assert {s.backend for s in SCHEMES.values() if "keep" in s.params} == set(KEEP_BACKENDS)
    with pytest.raises(QxaiUsageError, match="unknown parameter 'keep'"):
        parse_spec("gptq4:keep=1")


@pytest.mark.parametrize(("text", "message"), [
    ("hqq4:keep=abc", "--quant hqq4: keep=abc: 'abc' is not LAYER, FIRST-LAST, attn.LAYER or mlp.FIRST-LAST"),
    ("hqq4:keep=5-3", "'5-3' is an empty range"),
    ("hqq4:keep=ffn.3", "'ffn.3' is not LAYER"),
    ("hqq4:keep=1,,2", "malformed parameter ''"),
])
def test_bad_keep_values_are_one_line(text: str, message: str) -> None:
    with pytest.raises(QxaiUsageError) as info:
        parse_spec(text)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["bnb4:keep=1", "bnb8:keep=mlp.0", "hqq4:keep=attn.1,mlp.0", "quanto-int8:keep=0",
                                  "torchao-int8:keep=mlp.1"])
def test_kept_sublayers_stay_full_precision(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    torch = pytest.importorskip("torch")
    from pytest_qxai.backends.base import QuantContext
    from pytest_qxai.backends.keep import is_kept, kept_modules
    from pytest_qxai.models.loading import load_tokenizer
    from tests.tiny import backend_or_skip, build_tiny_model

    folder = build_tiny_model(tmp_path_factory.getbasetemp() / "keep-tiny")
    spec, backend = backend_or_skip(text)
    ctx = QuantContext(reference_dir=folder, device="cpu", dtype=torch.float32,
                       tokenizer=load_tokenizer(folder, revision=None, trust_remote_code=False), calibration=[],
                       seed=0, trust_remote_code=False, cache_dir=None)
    model = backend.quantize(spec, ctx)
    kept = kept_modules("llama", keep_units(spec))
    linears = {name: module for name, module in model.named_modules()
               if name.startswith("model.layers.") and name.rsplit(".", 1)[-1].endswith("proj")}
    plain = {name for name, module in linears.items() if _is_plain(module, torch)}
    assert plain == {name for name in linears if is_kept(name, kept)}
    assert plain  # the kept sublayers exist


def _is_plain(module: Any, torch: Any) -> bool:
    """An unquantized linear layer: a plain ``nn.Linear`` whose weight is an ordinary float tensor."""
    return type(module) is torch.nn.Linear and type(module.weight.data) is torch.Tensor \
        and module.weight.dtype == torch.float32


def test_keep_naming_a_missing_layer_is_a_usage_error() -> None:
    from pytest_qxai.backends.keep import check_keep_layers

    check_keep_layers(parse_spec("hqq4:keep=29"), 30)
    with pytest.raises(QxaiUsageError, match=r"keep names layer 30, but the model has 30 decoder layers \(0-29\)"):
        check_keep_layers(parse_spec("hqq4:keep=17-19,30-31"), 30)



@pytest.mark.parametrize("text", ["bnb4:keep=0-1", "bnb8:keep=0-1", "hqq2:keep=0-1", "quanto-int2:keep=0-1",
                                  "torchao-int8:keep=0-1"])
def test_keeping_every_layer_gives_the_reference_logits(text: str, tmp_path: Path) -> None:
    """All decoder layers kept: nothing else may change, so the logits are the reference's bit for bit, also after
    the checkpoint's save and reload (hqq's patcher once quantized ``lm_head``, the tied unembedding, at 2 bits)."""
    torch = pytest.importorskip("torch")
    from pytest_qxai.backends.base import QuantContext
    from pytest_qxai.models.loading import load_reference, load_tokenizer
    from tests.tiny import TINY_TEXTS, backend_or_skip, build_tiny_model

    folder = build_tiny_model(tmp_path)
    spec, backend = backend_or_skip(text)
    tokenizer = load_tokenizer(folder, revision=None, trust_remote_code=False)
    inputs = tokenizer(TINY_TEXTS[:3], return_tensors="pt", padding=True)
    reference = load_reference(folder, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    with torch.no_grad():
        expected = reference(**inputs).logits
        for attempt in ("quantized", "reloaded"):  # the second call loads the checkpoint the first one cached
            ctx = QuantContext(reference_dir=folder, device="cpu", dtype=torch.float32, tokenizer=tokenizer,
                               calibration=[], seed=0, trust_remote_code=False,
                               cache_dir=tmp_path / "cache" / "quantized" / "entry")
            model = backend.quantize(spec, ctx)
            if spec.scheme.backend == "hqq":  # the one keep= backend with a disk cache of its own
                assert ctx.notes["hqq_checkpoint"] == {"quantized": "saved", "reloaded": "cached"}[attempt]
            assert model.get_output_embeddings().weight.dtype == torch.float32, attempt
            assert torch.equal(model(**inputs).logits, expected), attempt


def test_a_keep_checkpoint_is_keyed_by_the_patcher_code(make_config: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A keep= checkpoint is made by this plugin's own patcher, so a change of that code quantizes again (a
    checkpoint cached before a fix of the patcher is not reused); a spec without keep= keeps its entry."""
    pytest.importorskip("hqq")
    from pytest_qxai.models import pair as pair_module
    from tests.tiny import build_tiny_model

    tiny, cache = build_tiny_model(tmp_path), tmp_path / "cache"

    def entries(text: str) -> set[str]:
        cfg = make_config(model=str(tiny), quant=parse_spec(text), cache_dir=cache, skip_sanity=True)
        pair_module.get_pair(cfg)
        pair_module.release_pair(cfg)
        return {p.name for p in (cache / "quantized").iterdir() if p.is_dir()}

    before = entries("hqq4:keep=0") | entries("hqq4")
    monkeypatch.setattr(pair_module, "code_hash", lambda module: "the patcher changed")
    after = entries("hqq4:keep=0") | entries("hqq4")
    added = after - before
    assert len(before) == 2 and len(added) == 1 and next(iter(added)).startswith("hqq4_keep_0-")
