"""GGUF block quantization (``gguf-q8_0``, ``gguf-q4_0``, ``gguf-q4_1``, ``gguf-q5_0``, ``gguf-q5_1``) and GGUF releases.

As a spec, every decoder linear weight of the reference is quantized to the GGML block type and
dequantized again by the ``gguf`` library itself (``gguf.quants.quantize`` / ``dequantize``, the numpy
ports of ggml's reference quantizers), then the model runs through the same transformers runtime as the
reference: ``x @ W_deq.T`` in the reference's dtype. Kept in full precision, like every other backend's
``lm_head``: the token embedding, the output projection and the norms. llama.cpp's ``llama-quantize``
differs there: it stores the token embedding in the base type and, for 4- and 5-bit types, the output
projection as Q6_K; and its CPU kernels also round each activation row to 8-bit blocks (Q8_0/Q8_1) before
the integer dot product, which this evaluation does not do (see docs/formats.md).

As ``--qxai-quantized``, a GGUF release (any type the ``gguf`` library dequantizes, K-quants included) is
dequantized once into an HF folder by transformers' GGUF reader, cached under its content hash, and loaded
as a plain float model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..specs import QuantSpec
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
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def gguf_round_trip(weight: "torch.Tensor", type_name: str) -> "torch.Tensor":
    """``weight`` quantized to GGML blocks of ``type_name`` and dequantized, both by the ``gguf`` library."""
    import gguf
    import numpy as np
    import torch

    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    rows = weight.detach().to("cpu", torch.float32).numpy()
    restored = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(rows), qtype), qtype)
    return torch.from_numpy(np.asarray(restored, dtype=np.float32).reshape(rows.shape))


class GGUFBackend(QuantBackend):
    """GGML block types through the ``gguf`` library: a spec on the reference, or a GGUF release as the quantized side."""

    name: ClassVar[str] = "gguf"
    per_token: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ("gguf",)

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """A float copy of the reference whose decoder linear weights went through a GGML block round trip."""
        import gguf
        import torch

        type_name = spec.name.removeprefix("gguf-").upper()
        block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
        model = load_float_copy(ctx)
        layers = decoder_linears(model)
        check_widths(layers, spec, block, f"the {type_name} block size {block}")
        for name, module in layers.items():
            with library_errors("gguf", f"quantize {name} to {type_name}"), torch.no_grad():
                module.weight.copy_(gguf_round_trip(module.weight, type_name).to(module.weight))
        ctx.notes["gguf"] = {"type": type_name, "quantized_layers": len(layers),
                             "kept_full_precision": "token embedding, output projection, norms",
                             "activations": "not quantized (llama.cpp's CPU kernels round them to 8-bit blocks)"}
        return finish(model)

    def load_checkpoint(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Dequantize a GGUF release into an HF folder (cached in ``ctx.cache_dir``) and load it as a float model."""
        from ..models.loading import convert_gguf, load_reference
        from ..models.source import ModelSource

        path = Path(location).resolve()
        source = ModelSource("gguf", str(path.parent), path.name, gguf_file=path.name)
        with checkpoint_slot(ctx) as slot:
            folder = slot.path / "model"
            if not slot.found:
                with library_errors("transformers' GGUF reader", f"dequantize {path.name}"):
                    convert_gguf(source, folder, tokenizer=False)
            ctx.notes["gguf_checkpoint"] = "cached" if slot.found else ("saved" if slot.persistent else "temporary")
            model = load_reference(folder, device=ctx.device, dtype=ctx.dtype, revision=None,
                                   trust_remote_code=ctx.trust_remote_code)
        return finish(model)

    def can_move(self, model: "PreTrainedModel") -> bool:
        """Dequantized weights are plain float parameters."""
        return True

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """The layer's weight, which already holds the dequantized values."""
        return plain_weight(module)
