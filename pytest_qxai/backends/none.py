"""The null scheme: the "quantized" model is a second, independent load of the reference weights.

Comparing the reference with an identical copy is the plugin's null check: every gate must pass and
every paired difference must be zero. A separate load (not the same object) makes the pair two
models, so nothing one side does (hooks, caches) can leak into the other.

It also loads the checkpoints transformers runs by itself: compressed-tensors ones, with their
weights decompressed to dense layers at load (``dequantize=True``), so every linear layer is a plain
``nn.Linear`` holding the dequantized weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..specs import QuantSpec
from .base import (
    QuantBackend,
    QuantContext,
    finish,
    library_errors,
    load_float_copy,
    plain_weight,
    quiet_quantized_load,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class NoneBackend(QuantBackend):
    """No quantization: a fresh full-precision copy of the reference."""

    name: ClassVar[str] = "none"
    distributions: ClassVar[tuple[str, ...]] = ()

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Load the reference again (a separate copy of the weights); nothing to cache, nothing is computed."""
        return finish(load_float_copy(ctx))

    def can_move(self, model: "PreTrainedModel") -> bool:
        """A plain float model moves between devices like any module."""
        return True

    def load_checkpoint(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Load a compressed-tensors checkpoint through transformers, decompressing its weights at load."""
        from transformers import AutoModelForCausalLM, CompressedTensorsConfig

        with library_errors("compressed-tensors", f"load the checkpoint {location}"), quiet_quantized_load():
            model = AutoModelForCausalLM.from_pretrained(
                location,
                dtype=ctx.dtype,
                quantization_config=CompressedTensorsConfig(dequantize=True),
                trust_remote_code=ctx.trust_remote_code,
            )
        return finish(model.to(ctx.device))

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """The plain weight of an ``nn.Linear``."""
        return plain_weight(module)
