"""GGUF files for tests, written with the ``gguf`` library's GGUFWriter.

:func:`requantize` copies a GGUF model (metadata, vocabulary, every tensor) with chosen weights stored in
another GGML type: Q8_0, Q4_0 ... through ``gguf.quants.quantize``, and the K-quants Q4_K and Q6_K through
:func:`pack_q4_k` / :func:`pack_q6_k`. Nothing offline writes K-quants (the ``gguf`` library only reads
them, and llama.cpp's quantizer is a C++ build), so these packers lay out known integer codes and scales
in ggml's block format; their ``expected`` output is what the blocks mean by the format's formula,
computed here without the ``gguf`` library, so a read path that dequantizes them is checked against an
independent answer. :func:`header_only` writes small files for the bad-input tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

gguf = __import__("pytest").importorskip("gguf")

QK_K = 256
K_TYPES = ("Q4_K", "Q6_K")


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def pack_q4_k(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks, expected)``: rows of ``weights`` as Q4_K blocks, and the values those blocks encode.

    Per 256 weights: 8 sub-blocks of 32 with 6-bit scale and min codes, one float16 ``d`` and ``dmin``;
    a weight is ``d * scale * q - dmin * min`` with ``q`` in 0..15 (a simple min-max fit, not llama.cpp's).
    """
    rows, cols = weights.shape
    x = weights.astype(np.float32).reshape(-1, 8, 32)
    low = np.minimum(x.min(-1), 0.0)
    step = np.maximum(x.max(-1) - low, 1e-8) / 15
    d = (step.max(-1) / 63).astype(np.float16).astype(np.float32)
    dmin = (-low.min(-1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(step / np.maximum(d[:, None], 1e-12)), 1, 63).astype(np.uint8)
    mn = np.clip(np.rint(-low / np.maximum(dmin[:, None], 1e-12)), 0, 63).astype(np.uint8)
    scale, offset = d[:, None] * sc, dmin[:, None] * mn
    q = np.clip(np.rint((x + offset[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    expected = scale[..., None] * q - offset[..., None]
    packed = np.empty((x.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    pairs = q.reshape(-1, 4, 2, 32)  # sub-blocks 2j and 2j+1 share 32 bytes: low and high nibble
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    blocks = np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed, qs], axis=1)
    return blocks.reshape(rows, -1), expected.reshape(rows, cols)


def pack_q6_k(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks, expected)`` for Q6_K: 16 sub-blocks of 16 with int8 scales, one float16 ``d``; ``d * scale * q``,
    ``q`` in -32..31."""
    rows, cols = weights.shape
    x = weights.astype(np.float32).reshape(-1, 16, 16)
    amax = np.maximum(np.abs(x).max(-1), 1e-8)
    d = (amax.max(-1) / 31 / 127).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(amax / 31 / np.maximum(d[:, None], 1e-12)), 1, 127).astype(np.int8)
    scale = d[:, None] * sc
    q = np.clip(np.rint(x / scale[..., None]), -32, 31).astype(np.int16)
    expected = scale[..., None] * q
    u = (q + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # per half of 128: four rows of 32 values
    ql = np.concatenate([(u[:, :, 0] & 0xF) | ((u[:, :, 2] & 0xF) << 4),
                         (u[:, :, 1] & 0xF) | ((u[:, :, 3] & 0xF) << 4)], axis=2).reshape(-1, 128)
    qh = ((u[:, :, 0] >> 4) | ((u[:, :, 1] >> 4) << 2) | ((u[:, :, 2] >> 4) << 4)
          | ((u[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(d)], axis=1)
    return blocks.reshape(rows, -1), expected.reshape(rows, cols)


PACKERS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {"Q4_K": pack_q4_k, "Q6_K": pack_q6_k}


def requantize(source: Path, target: Path, choose: Callable[[str, tuple[int, ...]], str | None],
               file_type: str | None) -> dict[str, np.ndarray]:
    """Copy ``source`` to ``target`` with each tensor ``choose(name, shape)`` names stored in that type.

    Returns the float values the re-typed tensors hold (what a reader must dequantize them to).
    ``file_type`` is a ``gguf.LlamaFileType`` name such as ``MOSTLY_Q8_0``.
    """
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    if file_type is not None:
        writer.add_file_type(gguf.LlamaFileType[file_type].value)
    written: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        new_type = choose(tensor.name, shape)
        if new_type is None:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        qtype = gguf.GGMLQuantizationType[new_type]
        if new_type in PACKERS:
            data, written[tensor.name] = PACKERS[new_type](values)
        else:
            data = gguf.quants.quantize(values, qtype)
            written[tensor.name] = gguf.quants.dequantize(data, qtype).reshape(shape)
        writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=qtype)
    _finish(writer)
    return written


def header_only(target: Path, arch: str = "llama", tokens: list[str] | None = None,
                tensors: dict[str, tuple[np.ndarray, Any]] | None = None, extra: dict[str, int] | None = None) -> Path:
    """A small GGUF file: an architecture, a vocabulary and a few raw tensors (``name: (bytes, GGML type)``)."""
    writer = gguf.GGUFWriter(target, arch)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens if tokens is not None else ["a", "b", "c"])
    for key, value in (extra or {}).items():
        writer.add_uint32(key, value)
    for name, (data, qtype) in (tensors or {"token_embd.weight": (np.zeros((3, 32), np.float32), None)}).items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    _finish(writer)
    return target


def set_tensor_type(path: Path, name: str, type_id: int) -> None:
    """Overwrite the GGML type id of tensor ``name`` in the file's tensor info (to make an unknown type)."""
    blob = bytearray(path.read_bytes())
    encoded = name.encode()
    at = blob.index(len(encoded).to_bytes(8, "little") + encoded) + 8 + len(encoded)
    n_dims = int.from_bytes(blob[at:at + 4], "little")
    at += 4 + 8 * n_dims
    blob[at:at + 4] = type_id.to_bytes(4, "little")
    path.write_bytes(bytes(blob))


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
