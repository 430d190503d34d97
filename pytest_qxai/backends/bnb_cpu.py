"""LLM.int8 (bitsandbytes 8-bit) on the CPU: the library's own arithmetic, in fewer and cheaper tensor passes.

bitsandbytes' CPU path quantizes activations with float16 element-wise ops, rounds its int8 product through
int32 and dequantizes in three more passes; on two cores those ops took more time than the int8 product itself
(docs/measurements.md).
:func:`int8_forward` computes each of those steps in float32, in place, in the same order of operations, so its
output is bit-identical: an int8 row times int8 weights is an integer-valued float32 sum either way, and every
rounding (activation to float16, scale, ``round``) is the library's. :func:`install` checks that identity on
every layer before it swaps a forward, and keeps the library's forward where it does not hold (a future
bitsandbytes that quantizes differently), where gradients are needed, and off the CPU.
"""

from __future__ import annotations

import functools
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

DEQUANT = 6.200124e-05
"""bitsandbytes' constant for 1 / (127 * 127) in ``int8_mm_dequant``; the same literal keeps the same float."""


def _quantize_rows(A16: "torch.Tensor", threshold: float) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """``int8_vectorwise_quant`` on a 2-D float16 input, in float32: int8 rows, row absmax, outlier columns.

    float16 → float32 is exact and the library's ``A * (127 / absmax)`` already computes in float32, so every
    value, rounding and outlier decision is the library's.
    """
    import torch

    values = A16.float()
    magnitude = values.abs()
    outliers = magnitude >= threshold
    columns = outliers.any(dim=0)
    found = bool(columns.any())
    if found:
        magnitude.masked_fill_(outliers, 0)
        values.masked_fill_(outliers, 0)
    absmax = magnitude.amax(dim=1)
    rows = torch.round(values.mul_((127.0 / absmax).unsqueeze(-1))).to(torch.int8)
    if found and A16.shape[0] > 1:
        rows[:, columns] = 0
    return rows, absmax, torch.argwhere(columns).view(-1)


@functools.cache
def _int8_kernel() -> bool:
    """Whether bitsandbytes registered a CPU int8 matmul (``torch._int_mm``, with AVX-512) over its float32 one."""
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key("bitsandbytes::int8_linear_matmul", "CPU")


def _int8_product(rows: "torch.Tensor", weight: "torch.Tensor") -> "torch.Tensor":
    """``rows @ weight.T`` of int8 operands as float32: the library's float32 matmul (its integer result kept as
    float32, which the int32 round trip leaves unchanged), or its own int8 kernel where it registered one."""
    import torch

    if _int8_kernel():
        return torch.ops.bitsandbytes.int8_linear_matmul.default(rows, weight).float()
    return torch.mm(rows.float(), weight.float().t())


def int8_forward(self: "torch.nn.Module", x: "torch.Tensor") -> "torch.Tensor":
    """``Linear8bitLt.forward`` in inference on the CPU, bit-identical to the library; anything else goes to it."""
    import torch

    if x.device.type != "cpu" or self.training or (torch.is_grad_enabled() and x.requires_grad):
        return type(self).forward(self, x)
    self.state.is_training = False
    if self.weight.CB is not None:
        self.init_8bit_state()
    if self.bias is not None and self.bias.dtype != x.dtype:
        self.bias.data = self.bias.data.to(x.dtype)
    state = self.state
    A = x.reshape(-1, x.shape[-1])
    rows, absmax, columns = _quantize_rows(A.to(torch.float16), state.threshold)
    out = _int8_product(rows, state.CB)
    out.mul_(absmax.unsqueeze(-1) * state.SCB.reshape(-1).unsqueeze(0)).mul_(DEQUANT)
    if self.bias is not None:
        out += self.bias
    out = out.to(A.dtype)
    if columns.numel():
        held = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(state.CB[:, columns].contiguous(), state.SCB)
        out = out.addmm(A[:, columns].contiguous(), held.to(A.dtype).t())
    self.weight.data = state.CB
    return out.reshape(*x.shape[:-1], state.CB.shape[0])


def _probe(module: "torch.nn.Module", dtype: "torch.dtype") -> list["torch.Tensor"]:
    """Inputs that reach every branch: several rows with outlier columns, one row with them, rows without."""
    import torch

    generator = torch.Generator().manual_seed(0)
    width = module.in_features
    loud = torch.randn(2, 5, width, generator=generator) * 2.0
    loud[..., :: max(1, width // 7)] *= 8.0
    quiet = torch.randn(1, 3, width, generator=generator) * 0.5
    return [t.to(dtype) for t in (loud, loud[:1, :1], quiet)]


def install(model: "PreTrainedModel") -> int:
    """Give each CPU ``Linear8bitLt`` of ``model`` :func:`int8_forward` where it matches the library's output
    bit for bit on :func:`_probe`'s inputs; returns how many layers got it."""
    import bitsandbytes as bnb
    import torch

    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    installed = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, bnb.nn.Linear8bitLt) or module.weight.device.type != "cpu":
                continue
            fast = types.MethodType(int8_forward, module)
            if all(torch.equal(type(module).forward(module, probe), fast(probe)) for probe in _probe(module, dtype)):
                module.forward = fast
                installed += 1
    return installed
