"""``keep=``: which modules a backend leaves in full precision, by name, for each library's own skip mechanism."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelMismatchError, QxaiUsageError
from ..models.families import ARCHITECTURES
from ..specs import KeepUnits, QuantSpec, keep_units


def kept_modules(model_type: str, units: KeepUnits) -> list[str]:
    """Dotted names of the kept sublayers (``model.layers.17.mlp``), sorted by layer then sublayer."""
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise QxaiUsageError(f"keep= needs a known decoder layout; model_type {model_type} is not one of "
                             f"{', '.join(sorted(ARCHITECTURES))}")
    return [f"{arch.layers}.{layer}.{arch.attn if part == 'attn' else arch.mlp}" for layer, part in sorted(units)]


def is_kept(name: str, kept: list[str]) -> bool:
    """Whether module ``name`` is one of the kept sublayers or lies inside one."""
    return any(name == k or name.startswith(k + ".") for k in kept)


def folder_model_type(folder: Path) -> str:
    """``model_type`` from a model folder's ``config.json`` (for libraries that quantize while loading)."""
    return str(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type", "unknown"))


def check_keep_layers(spec: QuantSpec, n_layers: int) -> None:
    """A one-line usage error when ``keep=`` names a layer the model does not have."""
    beyond = sorted({layer for layer, _ in keep_units(spec) if layer >= n_layers})
    if beyond:
        raise ModelMismatchError(f"--quant {spec}: keep names layer {beyond[0]}, but the model has {n_layers} decoder "
                             f"layers (0-{n_layers - 1})")
