"""Recognise an existing quantized checkpoint (``--qxai-quantized``) from its ``config.json``.

``quantization_config.quant_method`` names the format: ``gptq`` and ``awq`` load through gptqmodel,
``bitsandbytes`` through bitsandbytes, and ``compressed-tensors`` through transformers itself (the
``none`` adapter, with the weights decompressed at load) when the ``compressed-tensors`` package is
installed. Only torch-free work happens here, so it can run while options are validated.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import QxaiUsageError

SUPPORTED = ("gptq", "awq", "bitsandbytes", "compressed-tensors")


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
    """``(backend name, scheme name)`` for a quantized checkpoint folder, e.g. ``("gptq", "gptq4")``."""
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
        return "none", "compressed-tensors"
    raise QxaiUsageError(
        f"--qxai-quantized {location}: unsupported quant_method '{method}' (supported: {', '.join(SUPPORTED)})"
    )
