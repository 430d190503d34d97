"""Module names of the decoder families the probes are tested on, for code that names modules before a model loads.

``keep=`` specs (:mod:`pytest_qxai.backends.keep`) and blame's sublayer swaps use them; the probes themselves
find a model's parts from its structure (:mod:`pytest_qxai.methods.arch`), and tests check each entry against it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Module names of one family's decoder, for code that names modules before a model is loaded (``keep=``)
    or swaps whole sublayers (blame); the probes themselves find the parts from the structure."""

    layers: str
    attn: str
    mlp: str


_LLAMA_LIKE = ArchSpec("model.layers", "self_attn", "mlp")
ARCHITECTURES: dict[str, ArchSpec] = {
    **dict.fromkeys(("gemma", "gemma2", "gemma3_text", "llama", "mistral", "olmo2", "phi3", "qwen2", "qwen3",
                     "smollm3"), _LLAMA_LIKE),
    "gpt2": ArchSpec("transformer.h", "attn", "mlp"),
}
"""``config.model_type`` → module names; tests check each entry against the structure :func:`model_parts` finds."""
TESTED_FAMILIES = tuple(sorted(ARCHITECTURES))
"""``model_type``s the probes are tested on (tiny random models of each); others are resolved the same way."""
