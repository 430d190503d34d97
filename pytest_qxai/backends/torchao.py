"""torchao weight-only quantization: ``torchao-int8`` (CPU and CUDA) and ``torchao-int4`` (CUDA only).

``quantize_`` swaps the weight of every linear layer but ``lm_head`` for a torchao tensor subclass
in place, on a fresh float copy of the reference (``keep=``: its ``filter_fn`` skips the kept sublayers):
int8 symmetric per output row, or int4 in groups
of ``group_size`` with the tinygemm layout (``tile_packed_to_4d``), whose CUDA kernel needs
bfloat16 and has no derivative (``aten::_weight_int4pack_mm``), so on torchao-int4 the backward
probe reports failure (seen on an H100). Quantization takes seconds and needs no
calibration, so the disk cache is not used (transformers' ``save_pretrained`` also refuses these
tensor subclasses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..errors import QxaiUsageError
from ..specs import QuantSpec, keep_units
from .base import QuantBackend, QuantContext, finish, library_errors, load_float_copy, plain_weight
from .keep import is_kept, kept_modules

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class TorchAOBackend(QuantBackend):
    """torchao's ``quantize_`` with a weight-only config."""

    name: ClassVar[str] = "torchao"
    per_token: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ("torchao",)

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Quantize the linear weights of a fresh float copy in place."""
        import torch
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        if spec.scheme.bits == 4:
            if not ctx.device.startswith("cuda") or ctx.dtype != torch.bfloat16:
                raise QxaiUsageError(
                    f"--quant {spec.name} needs a CUDA device and bfloat16 (torchao's int4 kernel); "
                    f"got {ctx.device} and {str(ctx.dtype).replace('torch.', '')}"
                )
            config: object = Int4WeightOnlyConfig(
                group_size=int(spec.get("group_size")), int4_packing_format="tile_packed_to_4d"
            )
        else:
            config = Int8WeightOnlyConfig()
        model = load_float_copy(ctx)
        kept = kept_modules(model.config.model_type, keep_units(spec))
        with library_errors("torchao", f"quantize with {spec}"):
            quantize_(model, config, filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear)
                      and fqn != "lm_head" and not is_kept(fqn, kept))
        return finish(model)

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """The tensor subclass's ``dequantize()``; for layouts without one, the layer applied to the identity."""
        import torch
        from torchao.utils import TorchAOBaseTensor

        weight = getattr(module, "weight", None)
        if not isinstance(weight, TorchAOBaseTensor):
            return plain_weight(module)
        with torch.no_grad():
            if type(weight).dequantize is not torch.Tensor.dequantize:
                return weight.dequantize().float()
            # The int4 tinygemm layout has no dequantize(): x @ W.T at x = I is W.T, computed by the kernel itself.
            eye = torch.eye(module.in_features, dtype=module.weight.dtype, device=weight.device)
            return torch.nn.functional.linear(eye, weight).t().float()
