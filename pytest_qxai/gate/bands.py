"""Bands for one model only: ``<baseline_dir>/<model-slug>/bands.toml``, next to that model's baselines.

A metric's default band (docs/gate.md) holds for every model. When one model needs another band, its file names
the model, and per metric the band and the measurement that justifies it::

    model = "SmolLM2-135M-Instruct"

    [bands."task_accuracy.esnli_agreement"]
    band = "abs:0.2"
    measurement = "kappa of two fp32 runs on different CPUs, 300 items: ..."

Precedence: ``--qxai-tolerance`` / ``qxai_tolerance`` > this file > the metric's default. A file that is
malformed, names an unknown metric or another model is a usage error (exit 4) before any model loads.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import QxaiUsageError
from ..metrics import registered_metrics
from .tolerance import Tolerance, parse_tolerance

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pytest itself depends on tomli there)
    import tomli as tomllib

FILE = "bands.toml"
STANDARD_METHODS = ("attribution", "counterfactual", "faithfulness", "knowledge", "multihop", "neurons", "nle",
                    "probes", "task")
"""Modules whose import registers the standard suites' metrics (no torch import)."""


@dataclass(frozen=True)
class ModelBands:
    """One model's bands keyed by ``suite.metric`` (empty when the model has no band file)."""

    path: Path | None = None
    bands: dict[str, Tolerance] = field(default_factory=dict)


def load_bands(model_dir: Path, model_id: str) -> ModelBands:
    """Read and check ``model_dir/bands.toml`` for ``model_id``; no file means no model-specific band."""
    path = model_dir / FILE
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no band file (the baseline check reports a bad folder)
        return ModelBands()
    except OSError as exc:
        raise QxaiUsageError(f"band file {path} cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise QxaiUsageError(f"band file {path} is not valid TOML: {exc}") from None
    if data.get("model") != model_id:
        raise QxaiUsageError(f"band file {path} is for model {data.get('model')!r}, not {model_id!r}; "
                             "a band applies only to the model it was measured on")
    unknown_keys = sorted(set(data) - {"model", "bands"})
    if unknown_keys or not isinstance(data.get("bands", {}), dict):
        raise QxaiUsageError(f"band file {path}: write model = \"...\" and [bands.\"SUITE.METRIC\"] tables only")
    known = _known_metrics()
    bands = {}
    for key, entry in data.get("bands", {}).items():
        bands[key] = _entry(path, key, entry, known)
    return ModelBands(path, bands)


def _entry(path: Path, key: str, entry: Any, known: set[str]) -> Tolerance:
    """One ``[bands."SUITE.METRIC"]`` table: a known metric, a valid band and its measurement."""
    if key not in known:
        raise QxaiUsageError(f"band file {path}: unknown metric {key!r}; name it SUITE.METRIC as the report does")
    if not isinstance(entry, dict) or set(entry) != {"band", "measurement"} or not all(
            isinstance(v, str) and v.strip() for v in entry.values()):
        raise QxaiUsageError(f"band file {path}: {key} needs exactly a band = \"abs:...\" and the measurement "
                             "that justifies it")
    try:
        return parse_tolerance(entry["band"])
    except QxaiUsageError as exc:
        raise QxaiUsageError(f"band file {path}: {key}: {exc}") from None


def _known_metrics() -> set[str]:
    """Keys of the standard suites' metrics and of every metric registered so far (conftest.py included)."""
    for name in STANDARD_METHODS:
        importlib.import_module(f"pytest_qxai.methods.{name}")
    return {metric.key for metric in registered_metrics()}
