"""The null scheme: the "quantized" model is a second, independent load of the reference weights.

Comparing the reference with an identical copy is the plugin's null check: every gate must pass and
every paired difference must be zero. A separate load (not the same object) makes the pair two
models, so nothing one side does (hooks, caches) can leak into the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..specs import QuantSpec
from .base import QuantBackend, QuantContext, finish, load_float_copy, plain_weight

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class NoneBackend(QuantBackend):
    """No quantization: a fresh full-precision copy of the reference."""

    name: ClassVar[str] = "none"
    per_token: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ()

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Load the reference again (a separate copy of the weights); nothing to cache, nothing is computed."""
        return finish(load_float_copy(ctx))

    def can_move(self, model: "PreTrainedModel") -> bool:
        """A plain float model moves between devices like any module."""
        return True

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """The plain weight of an ``nn.Linear``."""
        return plain_weight(module)
