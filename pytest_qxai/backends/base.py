"""The small interface every quantization library adapter implements, and the adapter registry.

An adapter turns the reference model folder into a quantized model for one scheme, says whether it
runs on CPU and how to dequantize one of its linear layers (the neuron-attribution probe needs
``W_down``), and names the pip extra that installs it. Whether backward passes work is probed on the
loaded model (:func:`pytest_qxai.runtime.probe_backward`), never assumed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import math
import os
import shutil
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from ..errors import BackendMissingError, QxaiError, QxaiUsageError
from ..specs import SCHEMES, QuantSpec, Scheme
from ..storage import CacheWarning, locked

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
    schemes: ClassVar[tuple[Scheme, ...]] = ()
    """The ``--quant`` schemes a registered backend adds (built-in ones are in :data:`~pytest_qxai.specs.SCHEMES`)."""

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

    def can_move(self, model: "PreTrainedModel") -> bool:
        """Whether ``model`` survives a round trip GPU → CPU → GPU unchanged (so it can take turns on the GPU).

        Off unless an adapter knows its packed weights and kernels move intact.
        """
        return False

    per_token: ClassVar[bool] = False
    """True when the adapter's kernels treat each token of a pass on its own (weight-only schemes, activations
    scaled per token): then the quantized side may run a prefix its prompts share once (``Runtime.share_prefix``)."""

    def mixes_tokens(self, model: "PreTrainedModel") -> bool:
        """Whether a token's output may depend on the other tokens of its pass (a scale or outlier set taken over
        the batch, as LLM.int8's): then the quantized side runs whole prompts. On unless :attr:`per_token`."""
        return not self.per_token

    def load_checkpoint(self, location: str, ctx: QuantContext) -> "PreTrainedModel":
        """Load an existing quantized checkpoint of this backend's format."""
        raise QxaiError(f"the {self.name} backend cannot load existing checkpoints")


def require_library(scheme: Scheme, option: str | None = None) -> None:
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
        who = option or f"--quant {scheme.name}"
        raise BackendMissingError(f"{who} needs the '{top}' library: pip install 'pytest-qxai[{scheme.extra}]'")


def scheme_for_backend(backend: str) -> Scheme:
    """The first scheme implemented by ``backend`` (for checkpoints whose scheme is read from their config)."""
    return next(s for s in SCHEMES.values() if s.backend == backend)


def finish(model: "PreTrainedModel") -> "PreTrainedModel":
    """Put a quantized model in eval mode with frozen parameters (libraries leave some trainable)."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_float_copy(ctx: QuantContext) -> "PreTrainedModel":
    """A fresh full-precision load of the reference on ``ctx.device``, for libraries that quantize in place."""
    from ..models.loading import load_reference

    return load_reference(
        ctx.reference_dir, device=ctx.device, dtype=ctx.dtype, revision=None, trust_remote_code=ctx.trust_remote_code
    )


def plain_weight(module: "torch.nn.Module") -> "torch.Tensor | None":
    """The float32 weight of an unquantized ``nn.Linear`` (e.g. ``lm_head``, which no adapter quantizes), else None."""
    import torch

    if type(module) is torch.nn.Linear:
        return module.weight.detach().float()
    return None


def decoder_linears(model: "PreTrainedModel") -> dict[str, "torch.nn.Linear"]:
    """The model's ``nn.Linear`` layers except the output projection (``lm_head``): what weight-only schemes quantize."""
    import torch

    output = model.get_output_embeddings()
    return {name: module for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and module is not output}


def check_widths(layers: dict[str, "torch.nn.Linear"], spec: QuantSpec, multiple: int, unit: str) -> None:
    """Refuse, naming the first layer, a spec whose blocks or groups do not divide a layer's input width."""
    for name, module in layers.items():
        if module.in_features % multiple:
            raise QxaiError(f"--quant {spec}: {name} has {module.in_features} input features, not a multiple "
                            f"of {unit}{_group_hint(layers, spec, multiple)}")


def _group_hint(layers: dict[str, "torch.nn.Linear"], spec: QuantSpec, multiple: int) -> str:
    """Where the spec has a ``group_size``: the largest smaller power of two that divides every layer's width."""
    if "group_size" not in spec.scheme.params:
        return ""
    width = math.gcd(*(module.in_features for module in layers.values()))
    size = multiple
    while size > 1 and width % size:
        size //= 2
    return f" (group_size={size} divides every layer: --quant {spec.scheme.name}:group_size={size})" if size > 1 else ""


@contextlib.contextmanager
def library_errors(library: str, action: str) -> Iterator[None]:
    """Turn a library's exception into a one-line :class:`QxaiError` saying which library failed at what."""
    import torch

    try:
        yield
    except (QxaiError, MemoryError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - any library failure becomes one readable line
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise QxaiError(f"{library} could not {action}: {detail}") from exc


@contextlib.contextmanager
def quiet_quantized_load() -> Iterator[None]:
    """Silence transformers' progress bars, and its warning that a passed config only sets loading attributes."""
    import warnings

    from ..models.loading import quiet_transformers

    with quiet_transformers(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        yield


@dataclass(frozen=True)
class CheckpointSlot:
    """Where a quantized checkpoint is (``found``) or is to be written (a staging folder)."""

    path: Path
    found: bool
    persistent: bool
    """Whether what is written here is kept in the cache (False without ``ctx.cache_dir``)."""


@contextlib.contextmanager
def checkpoint_slot(ctx: QuantContext) -> Iterator[CheckpointSlot]:
    """Hold the cache entry of ``ctx`` and yield its checkpoint folder, or a staging folder to fill.

    The checkpoint lives in ``ctx.cache_dir / "checkpoint"``. It is written into a sibling staging
    folder and renamed in one step when the block exits cleanly, so a half-written checkpoint is never
    found; a lock makes concurrent processes (xdist workers) quantize once. Without a cache the staging
    folder is temporary and removed at exit. A found checkpoint is used only when its signed manifest
    matches its files; it must hold data-only files (safetensors, JSON, text).
    """
    if ctx.cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="qxai-quant-") as tmp:
            yield CheckpointSlot(Path(tmp), found=False, persistent=False)
        return
    from ..models.identity import manifest_problem, reject_folder, write_manifest

    target = ctx.cache_dir / "checkpoint"
    root = ctx.cache_dir.parent.parent  # <cache>/quantized/<entry>: the hash memos live at the cache's top
    slot = f"quantized/{ctx.cache_dir.name}"
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(target, f"quantizing into {ctx.cache_dir.name}"):
        if target.is_dir():
            why = manifest_problem(target, slot, root)
            if not why:
                yield CheckpointSlot(target, found=True, persistent=True)
                return
            reject_folder(target, why)
        staging = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=ctx.cache_dir))
        try:
            yield CheckpointSlot(staging, found=False, persistent=True)
            if any(staging.iterdir()):
                why = write_manifest(staging, slot, root)
                if why:
                    warnings.warn(CacheWarning(f"qxai cache: the checkpoint is not cached: {why}"), stacklevel=3)
                else:
                    os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


_ADAPTERS: dict[str, str | type[QuantBackend]] = {
    "none": "pytest_qxai.backends.none:NoneBackend",
    "bnb": "pytest_qxai.backends.bnb:BitsAndBytesBackend",
    "gptq": "pytest_qxai.backends.gptq:GPTQModelBackend",
    "hqq": "pytest_qxai.backends.hqq:HQQBackend",
    "quanto": "pytest_qxai.backends.quanto:QuantoBackend",
    "torchao": "pytest_qxai.backends.torchao:TorchAOBackend",
    "gguf": "pytest_qxai.backends.gguf:GGUFBackend",
    "ctensors": "pytest_qxai.backends.ctensors:CompressedTensorsBackend",
}
"""Backend name → its adapter class, or where to import it from (the built-ins load lazily)."""
BUILTIN_BACKENDS = frozenset(_ADAPTERS)
ENTRY_POINT_GROUP = "pytest_qxai.backends"
"""Installed packages register backends here: ``NAME = "module:Class"`` (docs/extending.md)."""


def get_backend(name: str) -> QuantBackend:
    """Instantiate the adapter registered under ``name`` (imports a built-in's module lazily)."""
    adapter = _ADAPTERS[name]
    if isinstance(adapter, str):
        module_name, _, cls_name = adapter.partition(":")
        adapter = getattr(importlib.import_module(module_name), cls_name)
    return adapter()  # type: ignore[operator,no-any-return]


def register_backend(cls: type[QuantBackend]) -> type[QuantBackend]:
    """Make ``cls`` the adapter of backend ``cls.name`` and its ``cls.schemes`` valid ``--quant`` values.

    Usable as a class decorator; registering a backend again replaces it. Built-in backends and schemes keep theirs.
    """
    name = getattr(cls, "name", None)
    if not (isinstance(cls, type) and issubclass(cls, QuantBackend)) or not isinstance(name, str):
        raise QxaiUsageError(f"backend {cls!r}: a backend is a QuantBackend subclass with a `name`")
    if name in BUILTIN_BACKENDS:
        raise QxaiUsageError(f"backend {name!r}: a built-in backend has this name; choose another")
    for scheme in cls.schemes:
        owner = SCHEMES[scheme.name].backend if scheme.name in SCHEMES else name
        if scheme.backend != name or owner != name:
            raise QxaiUsageError(f"backend {name!r}: scheme {scheme.name!r} belongs to backend "
                                 f"{owner if owner != name else scheme.backend!r}")
    for scheme in cls.schemes:
        SCHEMES[scheme.name] = scheme
    _ADAPTERS[name] = cls
    return cls


def register_entry_point_backends() -> None:
    """Register the backends installed packages declare in the ``pytest_qxai.backends`` entry-point group."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken third-party package becomes one readable line
            raise QxaiUsageError(f"backend entry point {entry.name} = {entry.value} does not load: "
                                 f"{type(exc).__name__}: {exc}") from None
        if getattr(cls, "name", None) != entry.name:
            raise QxaiUsageError(f"backend entry point {entry.name} = {entry.value}: the class's `name` is "
                                 f"{getattr(cls, 'name', None)!r}, not {entry.name!r}")
        register_backend(cls)
