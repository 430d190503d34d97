"""Read a GGUF file's header (no torch): its tensor types, and whether it can be compared with a reference.

A quantized GGUF release (``--qxai-quantized=model-Q4_K_M.gguf``) is dequantized by the ``gguf`` library
and compared with the model it was made from. Before any model loads, :func:`check_gguf_pair` refuses a
file the library cannot read or dequantize, and a pair whose architectures, vocabularies or tensor shapes
differ, naming the first difference in one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import QxaiUsageError

if TYPE_CHECKING:
    from .source import ModelSource

ARCH_ALIASES = {"mistral": "llama"}
"""HF ``model_type`` values whose GGUF files carry another ``general.architecture`` (llama.cpp's converter)."""
SHAPE_KEYS = {
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
}
"""GGUF ``{arch}.*`` hyperparameters and the HF ``config.json`` keys that hold the same number."""


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file says about itself: architecture, vocabulary, tensor shapes and types, file type."""

    path: Path
    architecture: str
    tokens: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    types: dict[str, str]
    hyper: dict[str, int]
    file_type: str | None

    @property
    def quant_label(self) -> str:
        """The release's quantization as llama.cpp names it (``Q4_K_M``), else its most common weight type."""
        if self.file_type:
            return self.file_type
        weights = [t for name, t in self.types.items() if len(self.shapes[name]) == 2]
        return max(set(weights), key=weights.count) if weights else "F32"


def read_header(path: Path, option: str) -> GGUFHeader:
    """Parse ``path``'s header with the ``gguf`` library; a one-line usage error when it is not a usable GGUF."""
    try:
        import gguf
    except ImportError:
        raise QxaiUsageError(f"{option} {path}: reading GGUF files needs the 'gguf' library: "
                             "pip install 'pytest-qxai[ml]'") from None
    try:
        reader = gguf.GGUFReader(path, "r")
    except ValueError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        unknown = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", detail)
        if unknown:
            raise QxaiUsageError(f"{option} {path}: a tensor has type id {unknown[1]}, unknown to gguf {_version()}"
                                 ) from None
        raise QxaiUsageError(f"{option} {path}: not a readable GGUF file ({detail})") from None
    except (OSError, KeyError, IndexError, TypeError, OverflowError, MemoryError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QxaiUsageError(f"{option} {path}: not a readable GGUF file ({type(exc).__name__}: {detail})") from None
    fields = reader.fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    if not isinstance(arch, str):
        raise QxaiUsageError(f"{option} {path}: not a model GGUF (no general.architecture)")
    hyper = {key: int(v) for key in SHAPE_KEYS if isinstance(v := value(f"{arch}.{key}"), int)}
    file_type = value("general.file_type")
    label = None
    if isinstance(file_type, int) and file_type in gguf.LlamaFileType._value2member_map_:
        label = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    header = GGUFHeader(
        path=path,
        architecture=arch,
        tokens=tuple(value("tokenizer.ggml.tokens") or ()),
        shapes={t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors},
        types={t.name: t.tensor_type.name for t in reader.tensors},
        hyper=hyper,
        file_type=label,
    )
    _check_dequantizable(header, option, gguf)
    return header


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("gguf")


def _check_dequantizable(header: GGUFHeader, option: str, gguf: Any) -> None:
    """Refuse tensor types the installed ``gguf`` library cannot dequantize (probed on one zero block each)."""
    import numpy as np

    for type_name in sorted(set(header.types.values())):
        qtype = gguf.GGMLQuantizationType[type_name]
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
        except NotImplementedError:
            tensor = next(name for name, t in header.types.items() if t == type_name)
            raise QxaiUsageError(f"{option} {header.path}: tensor {tensor} has type {type_name}, which gguf "
                                 f"{_version()} cannot dequantize") from None


def check_gguf_pair(reference: "ModelSource", quantized: Path) -> GGUFHeader:
    """Read the quantized GGUF and refuse it unless it matches the reference model; return its header."""
    option = f"--qxai-quantized {quantized}"
    header = read_header(quantized, option)
    if reference.kind == "gguf":
        assert reference.gguf_file is not None
        difference = _gguf_difference(read_header(Path(reference.location) / reference.gguf_file, "--qxai-model"),
                                      header)
    elif reference.kind == "local":
        difference = _folder_difference(Path(reference.location), header)
    else:
        difference = None  # a hub model is compared once it is downloaded (compare_with_folder)
    if difference:
        raise QxaiUsageError(f"{option} does not match --qxai-model {reference.label}: {difference}")
    return header


def compare_with_folder(folder: Path, header: GGUFHeader, reference_label: str) -> None:
    """After a hub download: the same check as :func:`check_gguf_pair` (an error, since models load by then)."""
    from ..errors import QxaiError

    difference = _folder_difference(folder, header)
    if difference:
        raise QxaiError(f"--qxai-quantized {header.path} does not match --qxai-model {reference_label}: {difference}")


def _gguf_difference(reference: GGUFHeader, quantized: GGUFHeader) -> str | None:
    """The first way two GGUF files differ in architecture, vocabulary or tensor shapes, or None."""
    if reference.architecture != quantized.architecture:
        return f"architectures differ (reference {reference.architecture}, quantized {quantized.architecture})"
    vocab = _vocab_difference(list(reference.tokens), list(quantized.tokens))
    if vocab:
        return vocab
    missing = sorted(set(reference.shapes) - set(quantized.shapes))
    extra = sorted(set(quantized.shapes) - set(reference.shapes))
    if missing or extra:
        return (f"tensors differ ({len(missing)} only in the reference, e.g. {missing[:1]}; "
                f"{len(extra)} only in the quantized file, e.g. {extra[:1]})")
    for name, shape in reference.shapes.items():
        if quantized.shapes[name] != shape:
            return f"shapes differ: {name} is {list(shape)} in the reference, {list(quantized.shapes[name])} quantized"
    return None


def _vocab_difference(reference: list[str], quantized: list[str]) -> str | None:
    if len(reference) != len(quantized):
        return f"vocabularies differ ({len(reference)} tokens in the reference, {len(quantized)} quantized)"
    for index, (a, b) in enumerate(zip(reference, quantized)):
        if a != b:
            return f"vocabularies differ (token {index} is {a!r} in the reference, {b!r} quantized)"
    return None


def _folder_difference(folder: Path, quantized: GGUFHeader) -> str | None:
    """The first way an HF folder's config and tokenizer differ from a GGUF header, or None."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"the reference's config.json is unreadable ({exc})"
    model_type = str(config.get("model_type", ""))
    if ARCH_ALIASES.get(model_type, model_type) != quantized.architecture:
        return f"architectures differ (reference {model_type}, quantized {quantized.architecture})"
    for key, hf_key in SHAPE_KEYS.items():
        ours, theirs = config.get(hf_key), quantized.hyper.get(key)
        if isinstance(ours, int) and theirs is not None and ours != theirs:
            return f"shapes differ: {hf_key} is {ours} in the reference, {theirs} quantized"
    tokens = _folder_tokens(folder)
    if tokens is not None:
        return _vocab_difference(tokens, list(quantized.tokens))
    size = config.get("vocab_size")
    if isinstance(size, int) and quantized.tokens and size != len(quantized.tokens):
        return f"vocabularies differ ({size} tokens in the reference, {len(quantized.tokens)} quantized)"
    return None


def _folder_tokens(folder: Path) -> list[str] | None:
    """The tokens of a fast tokenizer's ``tokenizer.json`` in id order, or None when there is none to read."""
    try:
        data = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return None
    vocab = data.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        return None  # e.g. a unigram model stores a list of pairs; compare sizes from config.json instead
    by_id = {int(i): str(t) for t, i in vocab.items()}
    by_id.update({int(a["id"]): str(a["content"]) for a in data.get("added_tokens", [])})
    return [by_id.get(i, "") for i in range(max(by_id) + 1)] if by_id else None
