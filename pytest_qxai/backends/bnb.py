"""bitsandbytes: LLM.int8() (``bnb8``), 4-bit NF4 (``bnb4``) and 4-bit FP4 (``bnb4-fp4``).

Quantization happens while transformers loads the weights (``BitsAndBytesConfig``) and needs no
calibration, so the on-disk cache is not used: re-quantizing costs about what loading a saved copy
would. Runs on CPU (``device_map='cpu'``) and CUDA. ``lm_head`` stays full precision
(transformers' default for bitsandbytes); ``keep=`` extends ``llm_int8_skip_modules``. On CPU the 4-bit
layers keep the standard weight layout (see :func:`_keep_standard_4bit_layout`). LLM.int8() casts activations to float16 and quantizes them
row-wise to int8 inside every matmul (outlier columns above ``threshold`` stay in float16), so its
output differs from ``x @ W_deq.T`` by that activation rounding as well.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, ClassVar

from ..specs import QuantSpec, keep_units
from . import bnb_cpu
from .base import QuantBackend, QuantContext, finish, library_errors, plain_weight, quiet_quantized_load
from .keep import folder_model_type, kept_modules

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

_CAST_WARNING = "MatMul8bitLt: inputs will be cast from"


class _DropCastWarning(logging.Filter):
    """Drops LLM.int8()'s per-call "inputs will be cast to float16" warning (logged on every matmul)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_CAST_WARNING)


_CAST_FILTER = _DropCastWarning()


def _keep_standard_4bit_layout(model: "PreTrainedModel") -> None:
    """Stop ``Linear4bit`` from repacking its weight for the AVX512-BF16 CPU kernel on its first forward.

    That kernel has no autograd: once repacked, gradients silently bypass every 4-bit layer (they
    still reach the inputs through the residual stream, so a backward pass "works"), and the layer
    computes differently with and without gradients. The standard layout runs the same dequantize +
    matmul either way.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _skip_modules(spec: QuantSpec, ctx: QuantContext) -> list[str] | None:
    """``llm_int8_skip_modules`` for ``keep=``: ``lm_head`` (the default it replaces) and each kept sublayer.

    transformers matches these as regular expressions from the start of a module name, so each kept name is
    escaped and ends in an escaped dot, so ``model.layers.1.mlp`` never matches layer 11.
    """
    units = keep_units(spec)
    if not units:
        return None
    names = kept_modules(folder_model_type(ctx.reference_dir), units)
    return ["lm_head", *(re.escape(name) + r"\." for name in names)]


class BitsAndBytesBackend(QuantBackend):
    """bitsandbytes through transformers' ``BitsAndBytesConfig``."""

    name: ClassVar[str] = "bnb"
    distributions: ClassVar[tuple[str, ...]] = ("bitsandbytes",)

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Load the reference folder with bitsandbytes quantizing each linear layer on the way in."""
        from transformers import BitsAndBytesConfig

        skip = _skip_modules(spec, ctx)
        if spec.name == "bnb8":
            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(spec.get("threshold")),
                                        llm_int8_skip_modules=skip)
            ctx.notes["bnb"] = "LLM.int8(): activations cast to float16 and quantized to int8 per row in each matmul"
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="fp4" if spec.name == "bnb4-fp4" else "nf4",
                bnb_4bit_use_double_quant=bool(spec.get("double_quant")),
                bnb_4bit_compute_dtype=ctx.dtype,
                llm_int8_skip_modules=skip,
            )
        return self._load(str(ctx.reference_dir), ctx, config)

    def load_checkpoint(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Load a serialized bitsandbytes checkpoint (its ``quantization_config`` says 4- or 8-bit)."""
        return self._load(location, ctx, None)

    def _load(self, location: str, ctx: QuantContext, config: object | None) -> "PreTrainedModel":
        from transformers import AutoModelForCausalLM

        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_CAST_FILTER)
        extra = {} if config is None else {"quantization_config": config}
        with library_errors("bitsandbytes", f"load {location}"), quiet_quantized_load():
            model = AutoModelForCausalLM.from_pretrained(
                location,
                device_map="cpu" if ctx.device == "cpu" else {"": ctx.device},
                dtype=ctx.dtype,
                trust_remote_code=ctx.trust_remote_code,
                **extra,
            )
        finish(model)
        if ctx.device == "cpu":
            _keep_standard_4bit_layout(model)
            if bnb_cpu.install(model):
                ctx.notes["bnb_cpu"] = "LLM.int8 layers run bnb_cpu.int8_forward (bit-identical to bitsandbytes)"
        return model

    def mixes_tokens(self, model: "PreTrainedModel") -> bool:
        """LLM.int8 picks its outlier columns over all the tokens of a pass; the 4-bit kernels are weight-only."""
        import bitsandbytes as bnb

        return any(isinstance(module, bnb.nn.Linear8bitLt) for module in model.modules())

    def can_move(self, model: "PreTrainedModel") -> bool:
        """bitsandbytes moves its 4-bit and (from 0.48) 8-bit parameters with their quantization state."""
        from packaging.version import Version

        return not getattr(model, "is_loaded_in_8bit", False) or Version(self.versions()["bitsandbytes"]) >= Version("0.48")

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """Dequantize with bitsandbytes' own functions: ``dequantize_4bit`` or int8 codes times their row scales."""
        import bitsandbytes as bnb

        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
        if isinstance(module, bnb.nn.Linear8bitLt):
            if module.state.has_fp16_weights:
                return module.weight.detach().float()
            # The row scales move from the parameter to the layer's state on the first forward.
            scales = getattr(module.weight, "SCB", None)
            if scales is None:
                scales = module.state.SCB
            if scales is None:
                return None
            return bnb.functional.int8_vectorwise_dequant(module.weight.data, scales).float()
        return plain_weight(module)
