"""Load a full-precision reference model and tokenizer from a :class:`ModelSource`.

GGUF files are dequantized once into a cached HF folder (fp32 safetensors), so later runs load in
about a second; that dequantized model is the full-precision reference. Every model is put in eval
mode with seeds and deterministic settings applied, and the tokenizer pads on the left for batching.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import QxaiError, QxaiUsageError
from ..storage import locked, memo_file_hash, stable_hash
from .identity import (CONVERTER_DISTRIBUTIONS, VALUE_DISTRIBUTIONS, distribution_versions, folder_content_hash,
                       manifest_problem, reject_folder, slot_name, write_manifest)
from .source import ModelSource

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("pytest_qxai")


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; explicit CUDA needs a GPU.

    Under pytest-xdist a plain ``cuda`` becomes the worker's own GPU (:func:`worker_gpu`).
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        return worker_gpu(device, os.environ.get("PYTEST_XDIST_WORKER"), torch.cuda.device_count())
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise QxaiError(f"--qxai-device {device}: no CUDA GPU is visible on this machine")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise QxaiError(f"--qxai-device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def worker_gpu(device: str, worker: str | None, gpus: int) -> str:
    """xdist worker ``gwN`` takes GPU ``N mod gpus`` of those visible (so an outer ``CUDA_VISIBLE_DEVICES`` holds).

    One process, one GPU, or an explicit index (``cuda:1``) keep ``device`` as given.
    """
    if device != "cuda" or gpus < 2 or not worker or not worker.startswith("gw") or not worker[2:].isdigit():
        return device
    return f"cuda:{int(worker[2:]) % gpus}"


def resolve_dtype(dtype: str, device: str) -> "torch.dtype":
    """``auto`` is float32 on CPU (bf16 matmuls are slow there) and bfloat16 on GPU."""
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def apply_determinism(seed: int) -> None:
    """Seed every generator and ask torch for deterministic kernels (warn-only where none exist)."""
    import random

    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
    # cuDNN's fused attention is not deterministic (torch warns so); flash or memory-efficient attention run instead.
    torch.backends.cuda.enable_cudnn_sdp(False)


def worker_cpu_share() -> int | None:
    """This pytest-xdist worker's share of the CPUs, or None outside xdist or where ``OMP_NUM_THREADS`` is set.

    Every process otherwise starts one thread per core, and N workers oversubscribe the machine N times.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1 and not os.environ.get("OMP_NUM_THREADS"):
        return max(1, len(os.sched_getaffinity(0)) // workers)
    return None


def share_cpu_threads() -> int:
    """Under pytest-xdist, give torch this worker's share of the CPUs (``worker_cpu_share``); return the count."""
    import torch

    threads = worker_cpu_share()
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info logs during a load."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def convert_gguf(source: ModelSource, target: Path, cache_root: Path | None = None, *, tokenizer: bool = True) -> None:
    """Dequantize a GGUF model into an fp32 HF folder at ``target`` (written whole, signed when cached, then renamed).

    ``tokenizer=False`` skips the tokenizer (a quantized release runs on its reference's; building it
    from the GGUF vocabulary costs about half the conversion).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert source.gguf_file is not None
    log.info("converting %s to an HF folder (once; cached)", source.gguf_file)
    with quiet_transformers():
        loaded = AutoModelForCausalLM.from_pretrained(
            source.location, gguf_file=source.gguf_file, dtype=torch.float32
        )
        config = loaded.config
        # save_pretrained refuses a GGUF-loaded model: rebuild it plainly from its config and weights.
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict(), strict=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            fresh.save_pretrained(staging, safe_serialization=True)
            if tokenizer:
                AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file).save_pretrained(staging)
            (staging / "qxai_source.json").write_text(
                json.dumps({"gguf_file": source.gguf_file, "label": source.label}, sort_keys=True)
            )
            if cache_root is not None:
                why = write_manifest(staging, slot_name(target, cache_root), cache_root)
                if why:
                    raise QxaiError(f"the conversion of {source.gguf_file} cannot be cached: {why}")
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def materialize(source: ModelSource, cache_root: Path | None, scratch: Path) -> tuple[Path, str]:
    """Return a local HF folder for the model and its content hash.

    GGUF models are converted into ``cache_root/models`` (or ``scratch`` without a cache); hub models
    are snapshotted into the Hugging Face cache.
    """
    if source.kind == "gguf":
        assert source.gguf_file is not None
        gguf_path = Path(source.location) / source.gguf_file
        digest = memo_file_hash(gguf_path, cache_root)
        base = (cache_root / "models") if cache_root else scratch
        target = base / f"gguf-{digest[:16]}-{stable_hash(converter_versions())[:8]}"
        base.mkdir(parents=True, exist_ok=True)
        with locked(target, f"converting {source.gguf_file}"):
            if cache_root is not None and target.is_dir():
                why = manifest_problem(target, slot_name(target, cache_root), cache_root)
                if why:
                    reject_folder(target, why)
            if not (target / "config.json").is_file():
                convert_gguf(source, target, cache_root)
                release_freed_memory()
        return target, f"gguf-sha256:{digest}"
    folder = Path(source.location) if source.kind == "local" else hub_snapshot(source)
    return folder, f"sha256:{folder_content_hash(folder, cache_root)}"


MMAP_THRESHOLD = 8 * 2**20
"""Blocks of this many bytes or more that the heap has no free room for get a mapping of their own, handed back to
the system when freed.

glibc otherwise raises this threshold as large blocks are freed (up to 32 MiB), after which a pass's activations
live in the heap and fragment it: one bnb8 pass of 16 prompts of 221 tokens on SmolLM2-135M peaked 773 MiB above
the resident memory with glibc's default, 462 MiB with 8 MiB, and no slower; 1 and 2 MiB made it 2.5-3 times slower
(a fresh mapping is zeroed page by page), 4 MiB peaked at 660 MiB (docs/measurements.md, "Memory")."""


def return_large_blocks() -> None:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` for this process, unless the user set
    ``MALLOC_MMAP_THRESHOLD_`` (elsewhere than glibc, nothing)."""
    mallopt = _glibc("mallopt")
    if mallopt is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD; fixing it also ends glibc's dynamic trim threshold


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc otherwise keeps what a process frees for the whole run: fp32 copies of the weights after a GGUF
    conversion or quantization (0.8 GB on SmolLM2-135M), and each measurement's activations, which the next
    suite's differently sized tensors rarely reuse (docs/measurements.md, "Memory")."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


def own_file_backed_tensors(model: "torch.nn.Module") -> int:
    """Copy into the process's own memory the tensors of ``model`` that hold a small part of a memory-mapped
    weights file; return how many bytes were copied.

    A backend that quantizes on load keeps the layers it leaves alone (embeddings, norms) as views of the
    reference's safetensors file, and those views keep a second mapping of the whole file alive, with every page
    quantization read resident (0.5 GB on SmolLM2-135M for 0.1 GB of views, docs/measurements.md, "Memory").
    Views that fill half of their mapping or more stay: copying them would only double them (``--quant=none``).
    Linux only (file mappings are read from ``/proc/self/maps``); elsewhere nothing is copied.
    """
    import bisect

    import torch

    mappings = _file_mappings()
    starts = [low for low, _ in mappings]
    views: dict[int, list[torch.Tensor]] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        at = bisect.bisect_right(starts, tensor.data_ptr()) - 1
        if (type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.device.type == "cpu" and at >= 0
                and tensor.data_ptr() < mappings[at][1]):
            views.setdefault(at, []).append(tensor)
    copied = 0
    with torch.no_grad():
        for at, tensors in views.items():
            size = sum(t.numel() * t.element_size() for t in tensors)
            if 2 * size >= mappings[at][1] - mappings[at][0]:
                continue
            for tensor in tensors:
                tensor.data = tensor.data.clone()
            copied += size
    return copied


def _file_mappings() -> list[tuple[int, int]]:
    """Sorted address ranges of this process's memory mappings of files (none where ``/proc`` is absent)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return []
    ranges = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            low, high = fields[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return sorted(ranges)


@functools.cache
def _glibc(name: str) -> Any:
    """The C library function ``name`` of this process, or None (not Linux, or a C library without it: musl)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None), name, None)


def scratch_dir(prefix: str) -> Path:
    """A private temporary folder removed when the process exits (a conversion without a cache lives there)."""
    import atexit

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def converter_versions() -> dict[str, str]:
    """The libraries that turn a GGUF file into the reference's weights: part of a converted model's identity."""
    return distribution_versions(CONVERTER_DISTRIBUTIONS + VALUE_DISTRIBUTIONS[:2])


def hub_snapshot(source: ModelSource) -> Path:
    """Download (or find in the HF cache) a hub model's config, tokenizer and safetensors weights.

    A local folder is what every quantization adapter reloads from, and what the content hash covers.
    Only safetensors weights are fetched: pickled ``.bin`` weights are never loaded from the hub.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            source.location,
            revision=source.revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"],
        )
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-repo errors alike
        raise QxaiError(f"--qxai-model {source.location}: cannot download from the hub: {_first_line(exc)}") from None
    if not any(Path(folder).glob("*.safetensors")):
        raise QxaiError(f"--qxai-model {source.location}: the hub repository has no safetensors weights")
    return Path(folder)


def load_tokenizer(location: Path | str, *, revision: str | None, trust_remote_code: bool) -> "PreTrainedTokenizerBase":
    """A tokenizer that pads on the left (for batched generation) and always has a pad token."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(
                str(location), revision=revision, trust_remote_code=trust_remote_code
            )
    except OSError as exc:
        raise QxaiError(f"cannot load the tokenizer of {location}: {_first_line(exc)}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise QxaiUsageError(f"the tokenizer of {location} has neither a pad token nor an eos token; batched "
                                 "generation needs one: set pad_token in its tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reference(
    location: Path | str,
    *,
    device: str,
    dtype: "torch.dtype",
    revision: str | None,
    trust_remote_code: bool,
    **kwargs: Any,
) -> "PreTrainedModel":
    """Load the full-precision reference in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                str(location),
                revision=revision,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None,
                **kwargs,
            )
    except (OSError, ValueError) as exc:
        raise QxaiError(f"cannot load model {location}: {_first_line(exc)}") from None
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
