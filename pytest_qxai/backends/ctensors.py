"""compressed-tensors (llm-compressor's checkpoint format): ``ct-w4a16``, ``ct-w8a16`` and ``ct-w8a8``.

A checkpoint (``--qxai-quantized``) is loaded through transformers with its weights decompressed to
dense layers at load (``dequantize=True``). A W8A8 layer rounds its input to int8 per token (dynamic,
symmetric, compressed-tensors' own ``forward_quantize``) in each forward, as vLLM's int8 kernels do;
W4A16/W8A16 layers multiply float activations by the dequantized weight. compressed-tensors rounds
without autograd, so gradients would silently skip every W8A8 layer (reaching the inputs through the
residual stream only); here the rounding is a straight-through estimator instead (the gradient of
``x @ W_deq.T``, as LLM.int8()'s backward does).

As a ``--quant`` spec the reference is quantized with the library's preset scheme and round-to-nearest
min-max parameters (compressed-tensors' own ``calculate_qparams``: what llm-compressor's
``QuantizationModifier`` computes with its default observer, without GPTQ), compressed, saved as a
checkpoint into the cache entry, and loaded back by the same path as any checkpoint. ``lm_head`` stays
full precision (the presets' usual ``ignore``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..specs import CT_SCHEMES, QuantSpec
from .base import (
    QuantBackend,
    QuantContext,
    check_widths,
    checkpoint_slot,
    decoder_linears,
    finish,
    library_errors,
    load_float_copy,
    plain_weight,
    quiet_quantized_load,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class CompressedTensorsBackend(QuantBackend):
    """compressed-tensors: write a checkpoint for a ``ct-*`` spec, or load an existing one."""

    name: ClassVar[str] = "ctensors"
    per_token: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ("compressed-tensors",)

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Write the spec's checkpoint once into the cache entry (or a temporary folder), then load it."""
        with checkpoint_slot(ctx) as slot:
            if not slot.found:
                with library_errors("compressed-tensors", f"quantize with {spec}"):
                    write_checkpoint(load_float_copy(ctx), spec, slot.path)
                ctx.tokenizer.save_pretrained(slot.path)
            ctx.notes["ct_checkpoint"] = "cached" if slot.found else ("saved" if slot.persistent else "temporary")
            return self.load_checkpoint(str(slot.path), ctx)

    def load_checkpoint(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Load a compressed-tensors checkpoint with its weights decompressed into dense layers."""
        from transformers import AutoModelForCausalLM, CompressedTensorsConfig

        with library_errors("compressed-tensors", f"load the checkpoint {location}"), quiet_quantized_load():
            model = AutoModelForCausalLM.from_pretrained(
                location,
                dtype=ctx.dtype,
                quantization_config=CompressedTensorsConfig(dequantize=True),
                trust_remote_code=ctx.trust_remote_code,
            )
        rounded = _straight_through_inputs(model)
        ctx.notes["ct_activations"] = f"int8 per token in {rounded} layers" if rounded else "float (weights only)"
        return finish(model.to(ctx.device))

    def can_move(self, model: "PreTrainedModel") -> bool:
        """Decompressed layers hold plain float weights; their scales move with them."""
        return True

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """The decompressed weight (what the layer multiplies by, after rounding a W8A8 layer's input)."""
        return plain_weight(module)


def _straight_through_inputs(model: "PreTrainedModel") -> int:
    """Give every layer that quantizes its input a forward whose rounding passes gradients through; count them."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    def forward(module: torch.nn.Linear, args: object, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rounded = forward_quantize(module, x.detach(), "input", args)
        return torch.nn.functional.linear(x + (rounded - x).detach(), module.weight, module.bias)

    count = 0
    for module in model.modules():
        args = getattr(getattr(module, "quantization_scheme", None), "input_activations", None)
        if args is not None and isinstance(module, torch.nn.Linear):
            module.forward = functools.partial(forward, module, args)
            count += 1
    return count


def write_checkpoint(model: "PreTrainedModel", spec: QuantSpec, folder: Path) -> None:
    """Quantize ``model``'s linear layers (not ``lm_head``) with the spec's preset and save a checkpoint in ``folder``."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        QuantizationStrategy,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams, compute_dynamic_scales_and_zp

    preset = CT_SCHEMES[spec.name][0]
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if scheme.weights is not None and scheme.weights.strategy == QuantizationStrategy.GROUP:
        scheme.weights.group_size = int(spec.get("group_size"))
        check_widths(decoder_linears(model), spec, scheme.weights.group_size, f"group_size={scheme.weights.group_size}")
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    with torch.no_grad():
        for module in model.modules():
            args = getattr(getattr(module, "quantization_scheme", None), "weights", None)
            if args is None:
                continue
            weight = module.weight.float()
            if args.strategy == QuantizationStrategy.CHANNEL:
                scale, zero = calculate_qparams(weight.amin(-1, keepdim=True), weight.amax(-1, keepdim=True), args)
            else:
                scale, zero = compute_dynamic_scales_and_zp(weight, args, module)
            module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero.reshape(module.weight_zero_point.shape))
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)
