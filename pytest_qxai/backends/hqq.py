"""HQQ (``hqq2``, ``hqq4``, ``hqq8``): calibration-free half-quadratic quantization through hqq itself.

transformers' ``HqqConfig`` is broken in transformers 5.17, so the reference is loaded in full
precision and hqq's ``AutoHQQHFModel.quantize_model`` replaces every linear layer of the decoder
blocks with an ``HQQLinear`` (``lm_head`` stays full precision, hqq's default). ``HQQLinear``
dequantizes its weight on every call and multiplies in ``ctx.dtype``, so gradients flow and
:meth:`HQQBackend.dequantized_weight` is exactly the weight the layer uses. Quantizing SmolLM2 on two
CPU cores took 35-150 s, so the quantized model is saved with hqq's own ``save_quantized`` into the
cache entry (works on CPU) and reloaded with ``from_quantized`` on later runs (seconds). hqq itself writes
a pickle (``torch.save``) and decodes dtypes with ``eval``; :func:`_safetensors_hqq` writes safetensors with
the layers' plain settings as JSON instead, so the cached checkpoint is data only.

``keep=``: hqq's patcher (``patch_model``) is run with a per-module decision: a linear layer inside a kept
sublayer, or one without a config (``lm_head``, which is not one of hqq's linear tags), stays ``nn.Linear``
(hqq's own "no config" case), every other one becomes an ``HQQLinear``. hqq's save/load stores and restores such
mixed models (plain weights next to ``W_q``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from ..specs import QuantSpec, keep_units
from .base import QuantBackend, QuantContext, checkpoint_slot, finish, library_errors, load_float_copy, plain_weight
from .keep import is_kept, kept_modules

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


_WEIGHTS = "qmodel.safetensors"


def _safetensors_hqq() -> type:
    """``AutoHQQHFModel`` with its weight file in safetensors: tensors as tensors, other layer settings as JSON."""
    import torch
    from hqq.models.hf.base import AutoHQQHFModel
    from safetensors.torch import load_file, save_file

    class SafetensorsHQQ(AutoHQQHFModel):  # type: ignore[misc, valid-type]
        @classmethod
        def get_weight_file(cls, save_dir: str) -> str:
            return f"{save_dir}/{_WEIGHTS}"

        @classmethod
        def save_weights(cls, weights: dict[str, dict[str, Any]], save_dir: str) -> None:
            tensors, settings, seen = {}, {}, set()
            for layer, state in weights.items():
                for name, value in state.items():
                    key = f"{layer}|{name}"
                    if isinstance(value, torch.Tensor):
                        tied = value.untyped_storage().data_ptr() in seen  # safetensors refuses shared storage
                        seen.add(value.untyped_storage().data_ptr())
                        tensors[key] = value.detach().clone() if tied else value.detach().contiguous()
                    elif isinstance(value, torch.dtype):
                        settings[key] = {"dtype": str(value).removeprefix("torch.")}
                    elif isinstance(value, torch.Size):
                        settings[key] = {"size": list(value)}
                    else:
                        settings[key] = {"value": value}  # bool, int, float, str, None: json.dumps refuses the rest
            save_file(tensors, cls.get_weight_file(save_dir), metadata={"settings": json.dumps(settings)})

        @classmethod
        def load_weights(cls, save_dir: str, map_location: Any = None) -> dict[str, dict[str, Any]]:
            from safetensors import safe_open

            path = cls.get_weight_file(save_dir)
            with safe_open(path, framework="pt") as handle:
                settings = json.loads((handle.metadata() or {}).get("settings", "{}"))
            weights: dict[str, dict[str, Any]] = {}
            for key, tensor in load_file(path, device=str(map_location or "cpu")).items():
                layer, name = key.split("|", 1)
                weights.setdefault(layer, {})[name] = tensor
            for key, setting in settings.items():
                layer, name = key.split("|", 1)
                weights.setdefault(layer, {})[name] = _setting(torch, setting)
            return weights

    return SafetensorsHQQ


def _setting(torch: Any, setting: dict[str, Any]) -> Any:
    """A layer setting back from JSON: a dtype by name (only a real ``torch.dtype``), a size, or a plain value."""
    if "dtype" in setting:
        dtype = getattr(torch, str(setting["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"not a torch dtype: {setting['dtype']!r}")
        return dtype
    if "size" in setting:
        return torch.Size(int(n) for n in setting["size"])
    return setting["value"]


def _quantize_keeping(model: "PreTrainedModel", config: dict, kept: list[str], ctx: QuantContext) -> None:
    """hqq's ``patch_model`` with a per-module choice: ``HQQLinear`` except inside the ``kept`` sublayers."""
    from hqq.core.quantize import HQQLinear
    from hqq.models.hf.base import AutoHQQHFModel

    def place(module: "torch.nn.Module") -> "torch.nn.Module":
        module.device = ctx.device
        return module.to(device=ctx.device, dtype=ctx.dtype)

    def linear(module: "torch.nn.Module", tag_config: dict | None) -> "torch.nn.Module":
        if tag_config is None or is_kept(module.name, kept):  # None: not a linear tag (lm_head), as hqq's own
            return place(module)
        out = HQQLinear(module, tag_config, compute_dtype=ctx.dtype, device=ctx.device)
        out.device = ctx.device
        return out

    AutoHQQHFModel.setup_model(model)
    AutoHQQHFModel.patch_model(model, place, linear, {tag: config for tag in model.linear_tags})
    model.base_class = AutoHQQHFModel
    model.hqq_quantized = True


class HQQBackend(QuantBackend):
    """hqq's own model patcher, with its save/load as the cache."""

    name: ClassVar[str] = "hqq"
    per_token: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ("hqq",)

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Load the cached HQQ model, or quantize a fresh float copy (and cache it)."""
        from hqq.core.quantize import BaseQuantizeConfig

        hqq_model = _safetensors_hqq()
        with checkpoint_slot(ctx) as slot:
            if slot.found:
                with library_errors("hqq", f"load the cached model {slot.path} (delete it to re-quantize)"):
                    model = hqq_model.from_quantized(str(slot.path), compute_dtype=ctx.dtype, device=ctx.device)
            else:
                model = load_float_copy(ctx)
                config = BaseQuantizeConfig(nbits=spec.scheme.bits, group_size=int(spec.get("group_size")))
                kept = kept_modules(model.config.model_type, keep_units(spec))
                with library_errors("hqq", f"quantize with {spec}"):
                    if kept:
                        _quantize_keeping(model, config, kept, ctx)
                    else:
                        hqq_model.quantize_model(
                            model, quant_config=config, compute_dtype=ctx.dtype, device=ctx.device
                        )
                if slot.persistent:
                    with library_errors("hqq", f"save the quantized model into {slot.path}"):
                        hqq_model.save_quantized(model, str(slot.path))
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
