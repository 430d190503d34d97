"""Which of the pair's models sit on the GPU: both when they fit, otherwise they take turns (``--qxai-offload``).

Taking turns, the model about to run is moved to the GPU and the other one to the CPU first. A full-precision
model always moves; a quantized one only where its backend says its packed weights survive the round trip
(otherwise it stays on the GPU and only the reference moves). Swaps happen when a suite switches sides, a few
times per suite, so their cost (the weights over PCIe) is small next to the suite's own work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HEADROOM = 0.25
"""Share of the GPU's memory kept free for activations, KV caches and gradient passes when deciding whether
both models fit."""


def models_fit(reference_bytes: int, quantized_bytes: int, gpu_bytes: int) -> bool:
    """Whether both models and :data:`HEADROOM` fit in ``gpu_bytes`` of GPU memory."""
    return reference_bytes + quantized_bytes <= (1.0 - HEADROOM) * gpu_bytes


def estimated_quantized_bytes(reference_bytes: int, bits: int, dtype_bits: int) -> int:
    """A ``bits``-bit copy of a ``dtype_bits`` reference, before loading it (embeddings and scales make it larger:
    the estimate errs towards taking turns)."""
    return int(reference_bytes * min(1.0, (bits + 1) / dtype_bits))


@dataclass
class Residency:
    """Keeps the model that is about to run on the GPU; with ``turns`` off, both stay where they are."""

    device: str
    turns: bool
    models: "list[tuple[torch.nn.Module, bool]]" = field(default_factory=list)
    """The pair's models, each with whether it may move off the GPU."""
    current: int | None = None
    swaps: int = 0

    def add(self, model: "torch.nn.Module", movable: bool) -> None:
        """Register one of the pair's models."""
        self.models.append((model, movable))

    def movable(self, model: "torch.nn.Module") -> bool:
        """Whether ``model`` may move off the GPU (unregistered models may)."""
        return next((movable for known, movable in self.models if known is model), True)

    def ensure(self, model: "torch.nn.Module") -> None:
        """Put ``model`` on the GPU, first moving the other movable model off it, when the models take turns."""
        if not self.turns or self.current == id(model):
            return
        import torch

        for other, movable in self.models:
            if other is not model and movable:
                other.to("cpu")
        torch.cuda.empty_cache()
        if self.movable(model):
            model.to(self.device)  # one that cannot move never left
        self.current = id(model)
        self.swaps += 1

    def describe(self) -> str:
        """The report's line on where the models were."""
        if not self.turns:
            return "both models on the GPU" if self.device.startswith("cuda") else f"both models on {self.device}"
        if all(movable for _, movable in self.models):
            return "one model on the GPU at a time (the other waits on the CPU)"
        return ("reference moved to the CPU while the quantized model runs (the quantized model cannot move: "
                "it stays on the GPU)")
