"""GPTQ (``gptq4``, ``gptq8``) and AWQ (``awq4``) through gptqmodel, on CPU or CUDA.

auto-gptq is archived and does not import with transformers 5; gptqmodel is its maintained successor
and also loads checkpoints made by auto-gptq and autoawq.

The reference folder is quantized once on ``ctx.calibration`` (sorted longest first, batch size 1,
RNG seeded from the spec's ``seed`` and restored afterwards, so the checkpoint depends only on its
cache key), saved into the cache entry, and loaded back through transformers. Later runs load the
saved checkpoint and skip quantization. ``lm_head`` stays full precision (gptqmodel's default).

Checkpoints are loaded with gptqmodel's plain torch kernels (``gptq_torch``, ``torch_awq``): they
dequantize the packed weights and multiply in the activations' dtype, so gradients flow and
:meth:`GPTQModelBackend.dequantized_weight` is exactly what the layer uses (AWQ's kernel multiplies in
float16, hence a float16-rounding difference there). The faster 4-bit CPU kernel gptqmodel picks by
default (``TorchAtenLinear``) is not used: it repacks its weights on the first forward (they can no
longer be dequantized afterwards), multiplies in bfloat16, and runs that matmul without autograd, so
gradients would silently bypass every quantized layer. AWQ on CPU is slow (minutes per 100M parameters).
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from ..errors import QxaiError, QxaiUsageError
from ..specs import QuantSpec
from .base import (
    QuantBackend,
    QuantContext,
    checkpoint_slot,
    finish,
    library_errors,
    plain_weight,
    quiet_quantized_load,
)
from .checkpoint import quantization_config

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

GPTQ_KERNEL = "gptq_torch"
AWQ_KERNEL = "torch_awq"


def _import_gptqmodel() -> Any:
    """Import gptqmodel with two CPU workers unless the user chose otherwise (its default oversubscribes)."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    import gptqmodel

    return gptqmodel


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch for the block, then restore their states (the run's own RNG stays untouched)."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def _logs_in(folder: Path) -> Iterator[None]:
    """Make gptqmodel write its per-module quantization logs into ``folder`` instead of ``./logs`` in the cwd."""
    from gptqmodel.looper import loop_processor

    previous = loop_processor._PROJECT_LOG_DIR
    loop_processor._PROJECT_LOG_DIR = folder
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = previous


def _use_eager_dequantizer(model: "PreTrainedModel", keep_weights: bool) -> None:
    """Undo gptqmodel's per-layer ``torch.compile`` of the dequantizer, and on CPU keep each dequantized weight.

    With one compiled dequantizer per layer, dynamo recompiles for every layer until it hits its
    recompile limit (SmolLM2's 210 layers: minutes for the first forwards). Unpacking every weight on
    every call costs seconds per forward on CPU, so there each layer keeps its weight after the first
    forward (gptqmodel's own ``GPTQ_TORCH_CACHE_WEIGHTS`` behaviour; memory as a float copy).
    """
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    for module in model.modules():
        if isinstance(module, TorchLinear):
            module.__dict__.pop("dequantize_weight", None)  # the compiled wrapper is an instance attribute
            module._cache_enabled = keep_weights


class GPTQModelBackend(QuantBackend):
    """gptqmodel: calibrated GPTQ/AWQ quantization, a cached checkpoint, and loading of existing ones."""

    name: ClassVar[str] = "gptq"
    per_token: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ("gptqmodel", "optimum")

    def uses_calibration(self, spec: QuantSpec) -> bool:
        """GPTQ and AWQ both fit their quantization to calibration activations."""
        return True

    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Quantize into the cache entry once (or into a temporary folder without cache), then load that checkpoint."""
        if not ctx.calibration:
            raise QxaiUsageError(f"--quant {spec.name} needs calibration texts and none were given")
        with checkpoint_slot(ctx) as slot:
            if not slot.found:
                self._quantize_into(slot.path, spec, ctx)
            ctx.notes["gptq_checkpoint"] = "cached" if slot.found else ("saved" if slot.persistent else "temporary")
            model = self._load(str(slot.path), ctx)
        return model

    def load_checkpoint(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Load an existing GPTQ or AWQ checkpoint (gptqmodel's, auto-gptq's or autoawq's) with the torch kernels."""
        return self._load(location, ctx)

    def _quantize_into(self, folder: Path, spec: QuantSpec, ctx: QuantContext) -> None:
        """Run gptqmodel's quantization of the reference folder and save the checkpoint into ``folder``."""
        gptqmodel = _import_gptqmodel()
        awq = spec.name.startswith("awq")
        settings: dict[str, Any] = {"bits": spec.scheme.bits, "group_size": int(spec.get("group_size"))}
        if awq:
            # Zero points, as in the AWQ paper and autoawq's default (gptqmodel's own default is symmetric).
            settings.update(method="awq", sym=False)
        else:
            desc_act = bool(spec.get("desc_act"))
            # gptqmodel's group-aware reordering excludes desc_act; keep its default only when desc_act is off.
            settings.update(desc_act=desc_act, act_group_aware=not desc_act, damp_percent=float(spec.get("damp")))
        ctx.notes["gptq_settings"] = settings
        with (
            _seeded(int(spec.get("seed"))),
            _logs_in(folder / "quantization-logs"),
            library_errors("gptqmodel", f"quantize with {spec}"),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", category=FutureWarning, module="gptqmodel")
            config = gptqmodel.QuantizeConfig(**settings)
            model = gptqmodel.GPTQModel.load(
                str(ctx.reference_dir), config, device=ctx.device, trust_remote_code=ctx.trust_remote_code
            )
            model.quantize(
                list(ctx.calibration),
                tokenizer=ctx.tokenizer,
                batch_size=1,
                backend="awq_torch" if awq else GPTQ_KERNEL,
            )
            model.save(str(folder))

    def _load(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Load a GPTQ/AWQ checkpoint through transformers, forcing the torch kernels (see the module docstring)."""
        _import_gptqmodel()
        from transformers import AutoModelForCausalLM, AwqConfig, GPTQConfig

        quant = quantization_config(location)
        method, bits = str(quant.get("quant_method")).lower(), int(quant.get("bits", 4))
        if method not in ("gptq", "awq"):
            raise QxaiError(f"{location} is a {method} checkpoint, not GPTQ or AWQ")
        kernel = AWQ_KERNEL if method == "awq" else GPTQ_KERNEL
        override = AwqConfig(bits=bits, backend=kernel) if method == "awq" else GPTQConfig(bits=bits, backend=kernel)
        with library_errors("gptqmodel", f"load the checkpoint {location}"), quiet_quantized_load():
            model = AutoModelForCausalLM.from_pretrained(
                location,
                device_map="cpu" if ctx.device == "cpu" else {"": ctx.device},
                dtype=ctx.dtype,
                quantization_config=override,
                trust_remote_code=ctx.trust_remote_code,
            )
        ctx.notes["gptq_kernel"] = kernel
        _use_eager_dequantizer(model, keep_weights=ctx.device == "cpu")
        return finish(model)

    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """Unpack a gptqmodel torch-kernel layer with gptqmodel's own dequantizer."""
        import torch
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
        from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear
        from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

        with torch.no_grad():
            if isinstance(module, TorchLinear):
                weight = module.dequantize_weight()  # [in, out]
            elif isinstance(module, AwqTorchLinear):
                weight = dequantize_gemm(module.qweight, module.qzeros, module.scales, module.bits, module.group_size)
            elif isinstance(module, BaseQuantLinear):
                return None  # another kernel's packed layout (not produced by this adapter)
            else:
                return plain_weight(module)
        expected = (module.in_features, module.out_features)
        if tuple(weight.shape) != expected:
            raise QxaiError(f"{type(module).__name__}: dequantized weight {tuple(weight.shape)}, expected {expected}")
        return weight.t().float()
