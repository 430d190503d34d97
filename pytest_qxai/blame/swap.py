"""Put full-precision sublayers into the quantized model for one measurement, and take them out again.

Both models are already loaded: the reference's attention or MLP module object is assigned into the
quantized model's decoder layer (no copy when both live on one device), and the quantized module is put back
when the block exits, even on error. The module paths come from :mod:`pytest_qxai.models.families`.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Iterator

from ..methods.arch import model_parts
from ..models.families import ARCHITECTURES
from ..specs import KeepUnits

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ..backends.base import QuantBackend

EXACT_DEQUANTIZERS = ("hqq", "quanto", "torchao")
"""Backends whose layers compute exactly ``x @ dequantized_weight.T`` in the compute dtype (measured: relative
error 0 in ``tests/test_backends.py``), so blame may run them as plain linear layers (no unpacking per call)."""


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


@contextlib.contextmanager
def unpacked(model: "PreTrainedModel", backend: "QuantBackend") -> Iterator[None]:
    """Within the block, every quantized linear layer of the decoder is a plain ``nn.Linear`` with its dequantized
    weight, where that is exactly what the layer computes (:data:`EXACT_DEQUANTIZERS`); otherwise no change.

    Blame measures dozens of restorations; a 2-bit layer that unpacks its weight on every call made that slow.
    """
    import torch

    swapped: list[tuple["torch.nn.Module", str, "torch.nn.Module"]] = []
    if backend.name in EXACT_DEQUANTIZERS:
        for layer in model_parts(model).layers:
            for name, module in list(layer.block.named_modules()):
                if type(module) is torch.nn.Linear or not name or not hasattr(module, "in_features"):
                    continue
                weight = backend.dequantized_weight(module)
                if weight is None:
                    continue
                bias = getattr(module, "bias", None)
                plain = torch.nn.Linear(module.in_features, module.out_features, bias=bias is not None,
                                        device=weight.device, dtype=model.dtype)
                with torch.no_grad():
                    plain.weight.copy_(weight)
                    if bias is not None:
                        plain.bias.copy_(bias)
                plain.requires_grad_(False)
                parent_name, _, child = name.rpartition(".")
                parent = layer.block.get_submodule(parent_name) if parent_name else layer.block
                swapped.append((parent, child, module))
                setattr(parent, child, plain)
    try:
        yield
    finally:
        for parent, child, module in reversed(swapped):
            setattr(parent, child, module)
