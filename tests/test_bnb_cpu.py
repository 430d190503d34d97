"""LLM.int8 on the CPU (``backends/bnb_cpu``): every output bit-identical to bitsandbytes' own forward."""

from __future__ import annotations

import types
from typing import Any

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_qxai.backends import bnb_cpu  # noqa: E402


def _layer(width: int, out: int, bias: bool, seed: int) -> Any:
    """A CPU ``Linear8bitLt`` quantized from a seeded float layer, as transformers builds one (threshold 6)."""
    torch.manual_seed(seed)
    plain = torch.nn.Linear(width, out, bias=bias)
    layer = bnb.nn.Linear8bitLt(width, out, bias=bias, has_fp16_weights=False, threshold=6.0)
    layer.load_state_dict(plain.state_dict())
    layer = layer.to("cpu")  # quantizes the weight to int8 codes and row scales
    assert layer.weight.dtype == torch.int8
    return layer.eval()


def _input(shape: tuple[int, ...], scale: float, loud: int, seed: int, dtype: Any = None) -> Any:
    """Normal activations with every ``loud``-th column 10 times larger (LLM.int8's outlier columns)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale
    if loud:
        x[..., ::loud] *= 10.0
    return x.to(dtype or torch.float32)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), width=st.integers(1, 40), scale=st.floats(0.01, 3.0), loud=st.integers(0, 5),
       threshold=st.sampled_from([0.5, 6.0, 100.0]), seed=st.integers(0, 2**16))
def test_row_quantization_matches_bitsandbytes(rows: int, width: int, scale: float, loud: int, threshold: float,
                                               seed: int) -> None:
    """Int8 rows, row absmax and outlier columns equal the library's, with and without outliers, one row or more."""
    A16 = _input((rows, width), scale, loud, seed).half()
    ours = bnb_cpu._quantize_rows(A16, threshold)
    theirs = torch.ops.bitsandbytes.int8_vectorwise_quant.default(A16.clone(), threshold)
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])
    assert torch.equal(ours[2], theirs[2] if theirs[2] is not None else torch.empty(0, dtype=torch.int64))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 7, 48), (1, 1, 48), (5, 48), (3, 0, 48)])
def test_forward_is_bit_identical_to_the_library(bias: bool, dtype: str, shape: tuple[int, ...]) -> None:
    """The whole layer, batched and single-token, 2-D and 3-D, with a bias and without, in float32 and bfloat16."""
    layer = _layer(48, 33, bias, seed=len(shape))
    x = _input(shape, 2.0, 7, seed=3, dtype=getattr(torch, dtype))
    fast = types.MethodType(bnb_cpu.int8_forward, layer)
    with torch.no_grad():
        expected = type(layer).forward(layer, x)
        assert torch.equal(fast(x), expected)
        assert torch.equal(fast(x), type(layer).forward(layer, x))  # and again, once the state holds the weights


def test_install_swaps_only_layers_it_reproduces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer gets the fast forward only where the probe outputs match bit for bit; a model whose library
    computes differently (here: a quantizer that rounds one step off) keeps the library's forward."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 48), _layer(48, 48, True, 0), _layer(48, 20, False, 1))
    assert bnb_cpu.install(model) == 2
    assert all("forward" in vars(model[i]) for i in (1, 2))

    other = torch.nn.Sequential(torch.nn.Embedding(10, 48), _layer(48, 48, True, 0))
    real = bnb_cpu._quantize_rows

    def off_by_one(A16: Any, threshold: float) -> tuple[Any, Any, Any]:
        rows, absmax, columns = real(A16, threshold)
        return rows.clamp(max=126), absmax, columns

    monkeypatch.setattr(bnb_cpu, "_quantize_rows", off_by_one)
    assert bnb_cpu.install(other) == 0
    assert "forward" not in vars(other[1])


def test_gradients_go_through_the_library() -> None:
    """An input that needs a gradient runs bitsandbytes' autograd function, so backward passes keep working."""
    layer = _layer(48, 16, True, 2)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 48), layer)
    bnb_cpu.install(model)
    x = _input((1, 3, 48), 1.0, 0, seed=4).requires_grad_(True)
    out = layer(x)
    assert out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
