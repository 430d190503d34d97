"""The full-precision / quantized model pair every suite shares, loaded at most once per process.

:func:`validate` checks everything that can be checked without loading a model (spec, model path,
backend library, GPU availability) so bad input is a usage error at start-up. :func:`get_pair` loads
the reference, quantizes it (or loads ``--qxai-quantized``), and caches the quantized model on disk
keyed by the model's content hash, the spec, the calibration data and the library versions.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from ..backends.base import QuantBackend, QuantContext, get_backend, require_library, scheme_for_backend
from ..errors import QxaiError, QxaiUsageError
from ..config import QxaiConfig
from ..storage import DiskCache, stable_hash
from .identity import code_hash, value_versions
from .loading import own_file_backed_tensors, release_freed_memory
from .residency import Residency, estimated_quantized_bytes, models_fit
from .source import ModelSource, check_gguf_architecture, resolve_source

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..runtime import Runtime

T = TypeVar("T")
log = logging.getLogger("pytest_qxai")
CORE_DISTRIBUTIONS = ("torch", "transformers", "accelerate", "pytest-qxai")


@dataclass
class ModelSide:
    """One of the two models, with the runtime that batches its calls and its cache identity."""

    role: str
    model: "PreTrainedModel"
    runtime: "Runtime"
    identity: str
    """Changes whenever this model's outputs could change: content hash, spec, calibration, versions."""
    backward: tuple[bool, str] | None = None

    def backward_ok(self) -> tuple[bool, str]:
        """Whether gradients reach the inputs through this model (probed once, then remembered)."""
        if self.backward is None:
            from ..runtime import probe_backward

            self.runtime.make_resident()
            self.backward = probe_backward(self.model, self.runtime.tokenizer)
        return self.backward


@dataclass
class ModelPair:
    """The reference and quantized models on the same tokenizer, with run metadata and the result cache."""

    reference: ModelSide
    quantized: ModelSide
    tokenizer: "PreTrainedTokenizerBase"
    config: QxaiConfig
    source: ModelSource
    backend: QuantBackend
    cache: DiskCache
    metadata: dict[str, Any] = field(default_factory=dict)
    judges: dict[Any, tuple["Runtime", str]] = field(default_factory=dict, repr=False)
    """Judge models loaded for this pair (:mod:`pytest_qxai.models.judge`), by their settings."""

    def __post_init__(self) -> None:
        """Refuse one model object on both sides: hooks, caches or in-place edits of one side would reach the other."""
        if self.reference.model is self.quantized.model:
            raise ValueError("the reference and quantized sides must be two model objects (load the quantized "
                             "side separately, as --quant=none does)")

    @property
    def same_model(self) -> bool:
        """Whether the quantized side is the reference model itself (``--quant=none``): one cache identity."""
        return self.quantized.identity == self.reference.identity

    @property
    def sides(self) -> tuple[ModelSide, ModelSide]:
        """``(reference, quantized)``."""
        return self.reference, self.quantized

    def cached(self, side: ModelSide, namespace: str, params: Any, compute: Callable[[], T]) -> T:
        """Compute a side's result once: keyed by the side's identity, the method parameters, the code of the
        method's module (and what it imports from this package) and the value-changing library versions.

        The side's model is put on the GPU before ``compute`` runs (when the models take turns there), since a
        method may use its modules directly. The heap pages its temporaries freed go back to the system after it.
        """
        key = {"model": side.identity, "params": params, "code": code_hash(compute.__module__),
               "versions": value_versions(), "shared_prefix": side.runtime.share_prefix}

        def resident_compute() -> T:
            side.runtime.make_resident()
            try:
                return compute()
            finally:
                release_freed_memory()

        return self.cache.memo(namespace, key, resident_compute, label=f"{side.role} {side.identity}")

    def cached_batches(self, side: ModelSide, namespace: str, n: int, looks: Sequence[int] | None,
                       params: Callable[[int, int], Any], compute: Callable[[int, int], T]) -> T:
        """A side's per-item results on ``n`` items, :meth:`cached` one sequential look's batch at a time
        (``looks``: the looks' item counts, :meth:`pytest_qxai.suite.Suite.look_items`; None: one batch of all),
        so that a look computes only its new items. ``params(start, stop)`` and ``compute(start, stop)``
        describe and measure the items ``start:stop``; the parts are joined by :func:`join_parts`."""
        from ..gate.sequential import batches

        parts = []
        for start, stop in batches(n, looks):
            def part(start: int = start, stop: int = stop) -> T:
                return compute(start, stop)

            part.__module__ = compute.__module__  # the cache key names the measuring method's code
            parts.append(self.cached(side, namespace, params(start, stop), part))
        return join_parts(parts)


def join_parts(parts: Sequence[Any]) -> Any:
    """One per-item result from consecutive batches' results: arrays joined along items, lists chained, dicts
    joined key by key; None when a part is None (the measurement did not apply)."""
    import numpy as np

    first = parts[0]
    if len(parts) == 1:
        return first
    if any(part is None for part in parts):
        return None
    if isinstance(first, dict):
        return {key: join_parts([part[key] for part in parts]) for key in first}
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, list):
        return [value for part in parts for value in part]
    raise TypeError(f"cannot join per-item results of type {type(first).__name__}")


def library_versions(backend: QuantBackend | None = None) -> dict[str, str]:
    """Versions of the libraries whose change could change a result."""
    found: dict[str, str] = {"python": platform.python_version()}
    for dist in CORE_DISTRIBUTIONS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "missing"
    if backend is not None:
        found.update(backend.versions())
    return dict(sorted(found.items()))


def validate(cfg: QxaiConfig) -> ModelSource:
    """Check the configuration without loading a model; raise a one-line :class:`QxaiUsageError`."""
    source = resolve_source(cfg.model, cfg.revision)
    if source.kind == "gguf" and not source.embedded:
        check_gguf_architecture(source)
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise QxaiUsageError(f"--qxai-device {cfg.device}: no CUDA GPU is visible on this machine "
                                 "(use --qxai-device cpu or auto)")
        index = cfg.device.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise QxaiUsageError(f"--qxai-device {cfg.device}: only {torch.cuda.device_count()} GPU(s) visible "
                                 "(numbered from 0)")
    scheme = cfg.quant.scheme
    if cfg.quantized is None:
        require_library(scheme)
        if not scheme.cpu:
            if cfg.device == "cpu":
                raise QxaiUsageError(f"--quant {scheme.name} needs a CUDA GPU, but --qxai-device is cpu")
            import torch

            if not torch.cuda.is_available():
                raise QxaiUsageError(f"--quant {scheme.name} needs a CUDA GPU and none is visible on this machine")
    else:
        from ..backends.checkpoint import detect_checkpoint

        backend_name, _ = detect_checkpoint(cfg.quantized)
        require_library(scheme_for_backend(backend_name), f"--qxai-quantized {cfg.quantized}")
        if backend_name == "gguf":
            from ..backends.checkpoint import gguf_release
            from .gguf_file import check_gguf_pair

            release = gguf_release(cfg.quantized)
            assert release is not None
            check_gguf_pair(source, release)
    if cfg.judge is not None:
        try:
            resolve_source(cfg.judge)
        except QxaiUsageError as exc:
            raise QxaiUsageError(str(exc).replace("--qxai-model", "--qxai-judge", 1)) from None
    return source


_PAIRS: dict[str, ModelPair] = {}


def _pair_key(cfg: QxaiConfig) -> str:
    return stable_hash([cfg.model, cfg.revision, str(cfg.quant), cfg.quantized, cfg.device, cfg.dtype, cfg.seed])


def get_pair(cfg: QxaiConfig) -> ModelPair:
    """The process-wide pair for this configuration, loaded on first use."""
    key = _pair_key(cfg)
    if key not in _PAIRS:
        _PAIRS[key] = _load_pair(cfg)
    return _PAIRS[key]


def release_pair(cfg: QxaiConfig) -> None:
    """Forget the pair of ``cfg`` (e.g. a spec loaded only to verify it), so its memory can be freed."""
    _PAIRS.pop(_pair_key(cfg), None)


def _load_pair(cfg: QxaiConfig) -> ModelPair:
    import torch

    from ..runtime import Runtime
    from .loading import (apply_determinism, converter_versions, load_reference, load_tokenizer, materialize,
                          resolve_device, resolve_dtype, return_large_blocks, scratch_dir, share_cpu_threads)

    started = time.perf_counter()
    source = validate(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    apply_determinism(cfg.seed)
    return_large_blocks()
    threads = share_cpu_threads()
    cache_root = cfg.cache_dir
    if cache_root is not None:
        from ..cache_admin import clean_staging

        for path in clean_staging(cache_root):
            log.info("removed %s, left by an interrupted run", path)
    location, content_id = materialize(source, cache_root, scratch_dir("qxai-"))
    tokenizer = load_tokenizer(location, revision=None, trust_remote_code=cfg.trust_remote_code)
    check_memory(location, dtype, device)
    reference = load_reference(
        location, device=device, dtype=dtype, revision=None, trust_remote_code=cfg.trust_remote_code
    )
    if cfg.quantized is None:
        from ..backends.keep import check_keep_layers

        check_keep_layers(cfg.quant, int(reference.config.num_hidden_layers))
    sanity = sanity_figures(cfg, Runtime(reference, tokenizer, batch_size=cfg.batch_size, label="reference",
                                         device=device, static_cache=False),  # 8 tokens: nothing to compile for
                            source, content_id, str(dtype))
    residency = plan_residency(cfg, device, dtype, reference)
    if residency.turns:
        reference.to("cpu")  # the GPU is the quantizer's while it works
    if cfg.quantized is not None:
        from ..backends.checkpoint import detect_checkpoint

        backend_name, scheme_name = detect_checkpoint(cfg.quantized)
        backend = get_backend(backend_name)
    else:
        backend = get_backend(cfg.quant.scheme.backend)
        scheme_name = cfg.quant.name
    versions = library_versions(backend)
    ctx = QuantContext(
        reference_dir=location,
        device=device,
        dtype=dtype,
        tokenizer=tokenizer,
        calibration=[],
        seed=cfg.seed,
        trust_remote_code=cfg.trust_remote_code,
        cache_dir=None,
    )
    quant_started = time.perf_counter()
    # A result can differ by device kind, dtype and the CPU's kernels (bitsandbytes' 8-bit matmuls do), never by
    # which GPU of a kind: workers on GPUs 0 and 1 share entries. Backend versions key the quantized side only.
    machine = [device.split(":")[0], str(dtype), torch.backends.cpu.get_cpu_capability()]
    if cfg.quantized is not None:
        quant_id = stable_hash(["checkpoint", checkpoint_identity(cfg.quantized, cfg.revision, cache_root),
                                value_versions(), backend.versions(), machine])
        if cache_root is not None:
            ctx.cache_dir = cache_root / "quantized" / f"checkpoint-{quant_id}"  # a GGUF release's HF conversion
        if backend.name == "gguf" and source.kind == "hub":
            from ..backends.checkpoint import gguf_release
            from .gguf_file import compare_with_folder, read_header

            release = gguf_release(cfg.quantized)
            assert release is not None
            compare_with_folder(location, read_header(release, "--qxai-quantized"), source.label)
        quantized = backend.load_checkpoint(cfg.quantized, ctx)
    else:
        calib_id = None
        if backend.uses_calibration(cfg.quant):
            from ..datasets import load_calibration

            ctx.calibration = load_calibration(int(cfg.quant.get("calibration")), int(cfg.quant.get("seed")))
            calib_id = stable_hash(ctx.calibration)
        recipe = [content_id, str(cfg.quant), cfg.quant.resolved, calib_id, value_versions(), backend.versions(),
                  machine]
        if "keep" in cfg.quant.resolved:  # this plugin's own patcher decides what a keep= checkpoint holds
            recipe.append(code_hash(type(backend).__module__))
        quant_id = stable_hash(recipe)
        if cache_root is not None:
            ctx.cache_dir = cache_root / "quantized" / f"{cfg.quant.slug}-{quant_id}"
        quantized = backend.quantize(cfg.quant, ctx)
    quant_seconds = time.perf_counter() - quant_started
    own_file_backed_tensors(quantized)
    release_freed_memory()
    ref_id = stable_hash([content_id, converter_versions() if source.kind == "gguf" else {}, machine])
    residency.add(reference, movable=True)
    residency.add(quantized, movable=backend.can_move(quantized))
    reference_runtime = Runtime(reference, tokenizer, batch_size=cfg.batch_size, label="reference", device=device,
                                residency=residency, share_prefix=True)
    # The quantized side follows the reference's cache choice (a packed model under-counts its parameters) and
    # keeps whole prompts in each pass where its kernels mix a pass's tokens (LLM.int8; Runtime.share_prefix).
    quantized_runtime = Runtime(quantized, tokenizer, batch_size=cfg.batch_size, label="quantized", device=device,
                                static_cache=reference_runtime.static_cache, residency=residency,
                                share_prefix=not backend.mixes_tokens(quantized))
    cache = DiskCache(cache_root)
    pair = ModelPair(
        reference=ModelSide("reference", reference, reference_runtime, ref_id),
        quantized=ModelSide("quantized", quantized, quantized_runtime, ref_id if scheme_name == "none" else quant_id),
        tokenizer=tokenizer,
        config=cfg,
        source=source,
        backend=backend,
        cache=cache,
        metadata={
            "model": source.label,
            "model_id": source.slug,
            "model_hash": content_id,
            "revision": source.revision,
            "quant": str(cfg.quant) if cfg.quantized is None else scheme_name,
            "quant_params": cfg.quant.resolved if cfg.quantized is None else {},
            "quantized_checkpoint": cfg.quantized,
            "versions": versions,
            "device": device,
            "dtype": str(dtype).replace("torch.", ""),
            "seed": cfg.seed,
            "profile": cfg.profile,
            "deterministic": True,
            "cpu_threads": threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # CPU kernels, bitsandbytes' too, vary by it
            "kv_cache": "static (decode step compiled where the backend allows)" if reference_runtime.static_cache
            else "dynamic",
            "quantized_prefix": "shared (its kernels treat each token on its own)" if quantized_runtime.share_prefix
            else "whole prompts in each pass (its kernels mix a pass's tokens)",
            "residency": residency.describe(),
            "load_seconds": round(quant_started - started, 2),
            "quantize_seconds": round(quant_seconds, 2),
            "backend_notes": ctx.notes,
            "sanity": sanity,
            "cache": cache.activity,
        },
    )
    return pair


def sanity_figures(cfg: QxaiConfig, runtime: "Runtime", source: ModelSource, content_id: str,
                   dtype: str) -> dict[str, Any] | str:
    """The reference's sanity figures (cached by its content), or why they were not taken; SanityError on failure."""
    from .sanity import SANITY_TEXT, VERSION, SanityError, check_reference

    if cfg.skip_sanity:
        return "skipped (--qxai-skip-sanity)"

    def compute() -> dict[str, Any]:
        try:
            return check_reference(runtime, converted=source.kind == "gguf")
        except SanityError as exc:
            return {"problem": str(exc)}

    key = {"model": content_id, "device": runtime.device.type, "dtype": dtype, "version": VERSION,
           "text": SANITY_TEXT, "versions": library_versions()}
    figures = DiskCache(cfg.cache_dir).memo("sanity", key, compute)
    if "problem" in figures:
        raise SanityError(f"the reference model {source.label} is not usable: {figures['problem']}; no suite ran "
                          "(--qxai-skip-sanity runs them anyway)")
    return figures


def check_memory(location: Path, dtype: "torch.dtype", device: str) -> None:
    """On CPU, refuse in one line a reference whose weights alone exceed the memory available now (before loading).

    The size is read from the safetensors headers (parameter count times the dtype's bytes); accelerate's psutil
    says what is available.
    """
    if device != "cpu":
        return
    import math

    import psutil
    import torch
    from safetensors import safe_open

    from ..cache_admin import human

    count = 0
    for file in Path(location).glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            count += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    need = count * torch.finfo(dtype).bits // 8
    available = psutil.virtual_memory().available
    if need > available:
        raise QxaiUsageError(f"the model needs {human(need)} of memory for its {count:,} parameters in "
                             f"{str(dtype).replace('torch.', '')}, and {human(available)} is available: use a "
                             "machine with more memory or a GPU")


def plan_residency(cfg: QxaiConfig, device: str, dtype: "torch.dtype", reference: "PreTrainedModel") -> Residency:
    """Whether the models take turns on the GPU: ``--qxai-offload``, or automatically when both would not fit."""
    if not device.startswith("cuda"):
        return Residency(device, turns=False)
    import torch

    reference_bytes = reference.get_memory_footprint()
    bits = cfg.quant.scheme.bits if cfg.quantized is None else 4
    quantized_bytes = estimated_quantized_bytes(reference_bytes, bits, torch.finfo(dtype).bits)
    gpu_bytes = torch.cuda.get_device_properties(torch.device(device)).total_memory
    return Residency(device, turns=cfg.offload or not models_fit(reference_bytes, quantized_bytes, gpu_bytes))


def checkpoint_identity(location: str, revision: str | None, cache_root: Path | None) -> str:
    """A ``--qxai-quantized`` checkpoint's identity: the content hash of a local folder or GGUF file, else the hub
    id and revision (never paths, sizes or mtimes)."""
    from ..storage import memo_file_hash
    from .identity import folder_content_hash

    path = Path(location)
    if path.is_dir():
        return f"sha256:{folder_content_hash(path, cache_root)}"
    if path.is_file():
        return f"sha256:{memo_file_hash(path, cache_root)}"
    return f"{location}@{revision or 'main'}"


def pair_error(exc: BaseException) -> str:
    """One line describing a failure to build the pair."""
    if isinstance(exc, QxaiError):
        return str(exc)
    return f"loading the model pair failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
