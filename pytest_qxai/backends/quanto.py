"""optimum-quanto weight-only quantization: ``quanto-int8``, ``quanto-int4`` and ``quanto-int2``.

A fresh float copy of the reference gets ``quantize(model, weights=qintN)`` then ``freeze(model)``,
which replaces the weights of every linear layer but ``lm_head`` by quantized tensors (int8
symmetric per output row; int4/int2 with a zero point, in groups of 128 or the largest multiple of 32
that divides the row, e.g. 96 for SmolLM2's 576). Quantization takes seconds and needs no
calibration, so the disk cache is not used. ``keep=`` adds the kept sublayers to quanto's ``exclude``
patterns. The first int4/int2 forward on CPU compiles quanto's C++
extension once (30–100 s; cached by torch afterwards).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..specs import QuantSpec, keep_units
from .base import QuantBackend, QuantContext, finish, library_errors, load_float_copy, plain_weight
from .keep import kept_modules

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class QuantoBackend(QuantBackend):
    """optimum-quanto's ``quantize`` + ``freeze`` on a float copy of the reference."""

    name: ClassVar[str] = "quanto"
    per_token: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ("optimum-quanto",)

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Quantize the linear weights of a fresh float copy in place and freeze them."""
        from optimum.quanto import freeze, qint2, qint4, qint8, quantize

        weights = {8: qint8, 4: qint4, 2: qint2}[spec.scheme.bits]
        model = load_float_copy(ctx)
        # quanto's own exclusion list (shell-style patterns): lm_head, and every linear inside a kept sublayer.
        kept = [f"{name}.*" for name in kept_modules(model.config.model_type, keep_units(spec))]
        with library_errors("optimum-quanto", f"quantize with {spec}"):
            quantize(model, weights=weights, exclude=["lm_head", *kept])
            freeze(model)
        return finish(model)

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """The frozen ``QLinear`` weight dequantized by quanto (``qweight.dequantize()``)."""
        import torch
        from optimum.quanto import QLinear

        if isinstance(module, QLinear):
            with torch.no_grad():
                return module.qweight.dequantize().float()
        return plain_weight(module)
