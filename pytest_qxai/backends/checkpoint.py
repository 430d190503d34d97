"""Recognise an existing quantized checkpoint (``--qxai-quantized``) from its ``config.json``.

``quantization_config.quant_method`` names the format: ``gptq`` and ``awq`` load through gptqmodel,
``bitsandbytes`` through bitsandbytes, and ``compressed-tensors`` through the compressed-tensors adapter
(its scheme, e.g. ``ct-w4a16``, read from the config's groups). A ``.gguf`` file (or a folder holding one
and no ``config.json``) is a GGUF release, read by the gguf adapter. Only torch-free work happens here,
so it can run while options are validated.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import QxaiUsageError
from ..specs import CT_SCHEMES

SUPPORTED = ("gptq", "awq", "bitsandbytes", "compressed-tensors")


def gguf_release(location: str | Path) -> Path | None:
    """The GGUF file ``location`` names (a ``.gguf`` file, or a folder with one and no config.json), else None."""
    path = Path(location)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise QxaiUsageError(f"--qxai-quantized {location}: the folder holds several GGUF files "
                                 f"({', '.join(p.name for p in found)}); name one")
        return found[0] if found else None
    return None


def quantization_config(location: str | Path) -> dict[str, Any]:
    """The ``quantization_config`` of a local checkpoint folder, or a one-line usage error saying why not."""
    path = Path(location)
    if not path.exists():
        raise QxaiUsageError(f"--qxai-quantized {location}: no such file or folder")
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise QxaiUsageError(f"--qxai-quantized {location}: no config.json in the folder")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise QxaiUsageError(f"--qxai-quantized {location}: config.json is unreadable ({exc})") from None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quant, dict) or not quant:
        raise QxaiUsageError(
            f"--qxai-quantized {location}: not a quantized checkpoint (config.json has no quantization_config)"
        )
    return quant


def detect_checkpoint(location: str | Path) -> tuple[str, str]:
    """``(backend name, scheme name)`` for a quantized checkpoint folder, e.g. ``("gptq", "gptq4")``.

    A GGUF release is ``("gguf", "gguf-file:Q4_K_M")``, named by its llama.cpp file type.
    """
    gguf_file = gguf_release(location)
    if gguf_file is not None:
        from ..models.gguf_file import read_header

        return "gguf", "gguf-file:" + read_header(gguf_file, "--qxai-quantized").quant_label
    quant = quantization_config(location)
    method = str(quant.get("quant_method", "")).lower()
    if method in ("gptq", "awq"):
        return "gptq", f"{method}{int(quant.get('bits', 4))}"
    if method == "bitsandbytes":
        if quant.get("load_in_8bit"):
            return "bnb", "bnb8"
        if quant.get("load_in_4bit"):
            return "bnb", "bnb4-fp4" if quant.get("bnb_4bit_quant_type") == "fp4" else "bnb4"
        raise QxaiUsageError(f"--qxai-quantized {location}: bitsandbytes config is neither load_in_8bit nor load_in_4bit")
    if method == "compressed-tensors":
        if importlib.util.find_spec("compressed_tensors") is None:
            raise QxaiUsageError(
                f"--qxai-quantized {location}: a compressed-tensors checkpoint needs the 'compressed-tensors' "
                "package: pip install compressed-tensors"
            )
        return "ctensors", compressed_tensors_scheme(location, quant)
    raise QxaiUsageError(
        f"--qxai-quantized {location}: unsupported quant_method '{method}' (supported: {', '.join(SUPPORTED)})"
    )


def compressed_tensors_scheme(location: str | Path, quant: dict[str, Any]) -> str:
    """The ``ct-*`` scheme of a compressed-tensors config: its integer weight and activation bits.

    Every config group must agree; float (FP8, FP4) and sparse formats are refused with what was found.
    """
    groups = quant.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise QxaiUsageError(f"--qxai-quantized {location}: compressed-tensors config has no config_groups")
    names = set()
    for group in groups.values():
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            raise QxaiUsageError(f"--qxai-quantized {location}: a compressed-tensors group quantizes no weights")
        acts = group.get("input_activations")
        kinds = [weights.get("type", "int")] + ([acts.get("type", "int")] if isinstance(acts, dict) else [])
        wbits, abits = weights.get("num_bits"), acts.get("num_bits") if isinstance(acts, dict) else 16
        name = f"ct-w{wbits}a{abits}"
        if any(k != "int" for k in kinds) or name not in CT_SCHEMES:
            shown = f"{'/'.join(kinds)} W{wbits}A{abits}"
            raise QxaiUsageError(f"--qxai-quantized {location}: compressed-tensors scheme {shown} is not supported "
                                 f"(supported: {', '.join(CT_SCHEMES)})")
        names.add(name)
    if len(names) > 1:
        raise QxaiUsageError(f"--qxai-quantized {location}: compressed-tensors groups mix schemes "
                             f"({', '.join(sorted(names))})")
    return names.pop()
