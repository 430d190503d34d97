"""The benchmark's call recorder: an observer of the plugin's runtimes that keeps every model call's inputs.

``bench_suites.py --replay`` runs the recorded calls again, bare, to measure the plugin's own overhead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CacheShape:
    """A recorded KV cache, kept as its layers' tensor shapes: the benchmark's replay rebuilds one of zeros.

    Attention costs the same whatever the cached values are, so the replay does the same work, while the
    recording holds no key/value tensors (keeping the caches themselves took 24 GB on the standard profile).
    """

    shapes: tuple[tuple[int, ...], ...]
    dtype: str

    @classmethod
    def of(cls, cache: Any) -> "CacheShape":
        """The shapes of a transformers cache's initialised layers (keys and values share a shape)."""
        keys = [layer.keys for layer in cache.layers if getattr(layer, "keys", None) is not None]
        return cls(tuple(tuple(k.shape) for k in keys), str(keys[0].dtype).removeprefix("torch.") if keys else "")

    def build(self, device: "torch.device") -> Any:
        """A ``DynamicCache`` of zeros with these shapes on ``device``."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, shape in enumerate(self.shapes):
            zeros = torch.zeros(shape, dtype=getattr(torch, self.dtype), device=device)
            cache.update(zeros, zeros.clone(), index)
        return cache


def _recorded(value: Any) -> Any:
    """What the recorder keeps of a model call's argument: tensors on the CPU, caches by their shapes."""
    if hasattr(value, "detach"):
        return value.detach().cpu()
    if hasattr(value, "layers") and hasattr(value, "batch_repeat_interleave"):
        return CacheShape.of(value)
    return value


@dataclass
class CallRecorder:
    """Attach to ``Runtime.observers``: keeps each call's kind and inputs (tensors on the CPU, caches as shapes)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, kind: str, kwargs: dict[str, Any]) -> None:
        """Record one call (the tokenizer passed to ``generate`` for stop strings is not an input to replay)."""
        self.calls.append((kind, {k: _recorded(v) for k, v in kwargs.items() if k != "tokenizer"}))
