"""The small interface every quantization library adapter implements, and the adapter registry.

An adapter turns the reference model folder into a quantized model for one scheme, says whether it
runs on CPU and how to dequantize one of its linear layers (the neuron-attribution probe needs
``W_down``), and names the pip extra that installs it. Whether backward passes work is probed on the
loaded model (:func:`pytest_qxai.runtime.probe_backward`), never assumed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BackendMissingError, QxaiError
from ..specs import SCHEMES, QuantSpec, Scheme

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class QuantContext:
    """Everything an adapter may need to quantize: where, in what dtype, with which calibration text."""

    reference_dir: Path
    device: str
    dtype: "torch.dtype"
    tokenizer: "PreTrainedTokenizerBase"
    calibration: list[str]
    seed: int
    trust_remote_code: bool
    cache_dir: Path | None
    """A folder reserved for this exact (model, spec, calibration, versions) key, or None without cache."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Facts the adapter wants recorded in the run metadata (e.g. which kernel ran)."""


class QuantBackend(ABC):
    """One quantization library behind the plugin's interface."""

    name: ClassVar[str]
    distributions: ClassVar[tuple[str, ...]] = ()
    """pip distribution names whose versions enter the cache key and the baseline metadata."""

    def versions(self) -> dict[str, str]:
        """Versions of the libraries this adapter relies on (for cache keys and baselines)."""
        found: dict[str, str] = {}
        for dist in self.distributions:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[dist] = "missing"
        return found

    def uses_calibration(self, spec: QuantSpec) -> bool:
        """Whether ``spec`` reads calibration text (then its hash enters the cache key)."""
        return False

    @abstractmethod
    def quantize(self, spec: QuantSpec, ctx: QuantContext) -> "PreTrainedModel":
        """Return the quantized model for ``spec``, in eval mode, reusing ``ctx.cache_dir`` when it holds one."""

    @abstractmethod
    def dequantized_weight(self, module: "torch.nn.Module") -> "torch.Tensor | None":
        """The float weight ``[out, in]`` of one (possibly quantized) linear layer, or None if not possible."""

    def load_checkpoint(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Load an existing quantized checkpoint of this backend's format."""
        raise QxaiError(f"the {self.name} backend cannot load existing checkpoints")


def require_library(scheme: Scheme) -> None:
    """Raise a one-line error naming the pip extra when the scheme's library is not installed.

    Uses ``find_spec`` only, so validating ``--quant`` imports neither the library nor torch.
    """
    if not scheme.module:
        return
    top = scheme.module.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None and importlib.util.find_spec(scheme.module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise BackendMissingError(f"--quant {scheme.name} needs the '{top}' library: pip install 'pytest-qxai[{scheme.extra}]'")


def scheme_for_backend(backend: str) -> Scheme:
    """The first scheme implemented by ``backend`` (for checkpoints whose scheme is read from their config)."""
    return next(s for s in SCHEMES.values() if s.backend == backend)


_ADAPTERS: dict[str, str] = {
    "none": "pytest_qxai.backends.none:NoneBackend",
    "bnb": "pytest_qxai.backends.bnb:BitsAndBytesBackend",
    "gptq": "pytest_qxai.backends.gptq:GPTQModelBackend",
    "hqq": "pytest_qxai.backends.hqq:HQQBackend",
    "quanto": "pytest_qxai.backends.quanto:QuantoBackend",
    "torchao": "pytest_qxai.backends.torchao:TorchAOBackend",
}


def get_backend(name: str) -> QuantBackend:
    """Instantiate the adapter registered under ``name`` (imports its module lazily)."""
    module_name, _, cls_name = _ADAPTERS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls()  # type: ignore[no-any-return]
