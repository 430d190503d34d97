"""Put full-precision sublayers into the quantized model for one measurement, and take them out again.

Both models are already loaded: the reference's attention or MLP module object is assigned into the
quantized model's decoder layer (no copy when both live on one device), and the quantized module is put back
when the block exits, even on error. The module paths come from :mod:`pytest_qxai.methods.arch`.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Iterator

from ..methods.arch import ARCHITECTURES, model_parts
from ..specs import KeepUnits

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def _device(module: "torch.nn.Module") -> "torch.device | None":
    return next((p.device for p in module.parameters()), None)


@contextlib.contextmanager
def restored(quantized: "PreTrainedModel", reference: "PreTrainedModel", units: KeepUnits) -> Iterator[None]:
    """Within the block, the ``(layer, 'attn'|'mlp')`` units of ``quantized`` are the reference's modules."""
    arch = ARCHITECTURES[str(quantized.config.model_type)]
    names = {"attn": arch.attn, "mlp": arch.mlp}
    quant_layers = [layer.block for layer in model_parts(quantized).layers]
    ref_layers = [layer.block for layer in model_parts(reference).layers]
    saved: list[tuple["torch.nn.Module", str, "torch.nn.Module"]] = []
    try:
        for layer, part in sorted(units):
            block, name = quant_layers[layer], names[part]
            original, replacement = getattr(block, name), getattr(ref_layers[layer], name)
            device = _device(original)
            if device is not None and _device(replacement) != device:
                replacement = copy.deepcopy(replacement).to(device)  # the models take turns on a GPU
            saved.append((block, name, original))
            setattr(block, name, replacement)
        yield
    finally:
        for block, name, original in reversed(saved):
            setattr(block, name, original)


def unit_parameters(model: "PreTrainedModel") -> dict[tuple[int, str], int]:
    """Parameters of each ``(layer, sublayer)`` of the full-precision ``model``: what keeping it costs."""
    arch = ARCHITECTURES[str(model.config.model_type)]
    return {(i, part): sum(p.numel() for p in getattr(layer.block, name).parameters())
            for i, layer in enumerate(model_parts(model).layers)
            for part, name in (("attn", arch.attn), ("mlp", arch.mlp))}
