"""HQQ (``hqq2``, ``hqq4``, ``hqq8``): calibration-free half-quadratic quantization through hqq itself.

transformers' ``HqqConfig`` is broken in transformers 5.17, so the reference is loaded in full
precision and hqq's ``AutoHQQHFModel.quantize_model`` replaces every linear layer of the decoder
blocks with an ``HQQLinear`` (``lm_head`` stays full precision, hqq's default). ``HQQLinear``
dequantizes its weight on every call and multiplies in ``ctx.dtype``, so gradients flow and
:meth:`HQQBackend.dequantized_weight` is exactly the weight the layer uses. Quantizing SmolLM2 on two
CPU cores took 35-150 s, so the quantized model is saved with hqq's own ``save_quantized`` into the
cache entry (works on CPU) and reloaded with ``from_quantized`` on later runs (seconds).

``keep=``: hqq's patcher (``patch_model``) is run with a per-module decision: a linear layer inside a kept
sublayer stays ``nn.Linear`` (hqq's own "no config" case), every other one becomes an ``HQQLinear``. hqq's
save/load stores and restores such mixed models (plain weights next to ``W_q``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..specs import QuantSpec, keep_units
from .base import QuantBackend, QuantContext, checkpoint_slot, finish, library_errors, load_float_copy, plain_weight
from .keep import is_kept, kept_modules

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def _quantize_keeping(model: "PreTrainedModel", config: dict, kept: list[str], ctx: QuantContext) -> None:
    """hqq's ``patch_model`` with a per-module choice: ``HQQLinear`` except inside the ``kept`` sublayers."""
    from hqq.core.quantize import HQQLinear
    from hqq.models.hf.base import AutoHQQHFModel

    def place(module: "torch.nn.Module") -> "torch.nn.Module":
        module.device = ctx.device
        return module.to(device=ctx.device, dtype=ctx.dtype)

    def linear(module: "torch.nn.Module", _config: object) -> "torch.nn.Module":
        if is_kept(module.name, kept):
            return place(module)
        out = HQQLinear(module, config, compute_dtype=ctx.dtype, device=ctx.device)
        out.device = ctx.device
        return out

    AutoHQQHFModel.setup_model(model)
    AutoHQQHFModel.patch_model(model, place, linear, {tag: config for tag in model.linear_tags})
    model.base_class = AutoHQQHFModel
    model.hqq_quantized = True


class HQQBackend(QuantBackend):
    """hqq's own model patcher, with its save/load as the cache."""

    name: ClassVar[str] = "hqq"
    distributions: ClassVar[tuple[str, ...]] = ("hqq",)

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Load the cached HQQ model, or quantize a fresh float copy (and cache it)."""
        from hqq.core.quantize import BaseQuantizeConfig
        from hqq.models.hf.base import AutoHQQHFModel

        with checkpoint_slot(ctx) as slot:
            if slot.found:
                with library_errors("hqq", f"load the cached model {slot.path} (delete it to re-quantize)"):
                    model = AutoHQQHFModel.from_quantized(str(slot.path), compute_dtype=ctx.dtype, device=ctx.device)
            else:
                model = load_float_copy(ctx)
                config = BaseQuantizeConfig(nbits=spec.scheme.bits, group_size=int(spec.get("group_size")))
                kept = kept_modules(model.config.model_type, keep_units(spec))
                with library_errors("hqq", f"quantize with {spec}"):
                    if kept:
                        _quantize_keeping(model, config, kept, ctx)
                    else:
                        AutoHQQHFModel.quantize_model(
                            model, quant_config=config, compute_dtype=ctx.dtype, device=ctx.device
                        )
                if slot.persistent:
                    with library_errors("hqq", f"save the quantized model into {slot.path}"):
                        AutoHQQHFModel.save_quantized(model, str(slot.path))
            ctx.notes["hqq_checkpoint"] = "cached" if slot.found else ("saved" if slot.persistent else "not cached")
        return finish(model)

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """``HQQLinear.dequantize()``: the ``[out, in]`` weight the layer multiplies with."""
        import torch
        from hqq.core.quantize import HQQLinear

        if isinstance(module, HQQLinear):
            with torch.no_grad():
                return module.dequantize().reshape(module.out_features, module.in_features).float()
        return plain_weight(module)
