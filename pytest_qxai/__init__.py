"""pytest-qxai: a pytest plugin that gates quantized LLM releases on explainability and interpretability.

The plugin compares a quantized model with its full-precision reference on the same items
(self-explanations, faithfulness, attributions, knowledge and multi-hop probes) and gates each
metric with paired statistics, tolerance bands and stored baselines.

The names below are the stable extension API (docs/extending.md). Each is imported on first use, so
``import pytest_qxai`` stays cheap; none of them imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "QxaiConfig": "pytest_qxai.config",
    "Metric": "pytest_qxai.metrics",
    "SuiteResult": "pytest_qxai.metrics",
    "register_metric": "pytest_qxai.metrics",
    "not_applicable": "pytest_qxai.metrics",
    "Suite": "pytest_qxai.suite",
    "register_suite": "pytest_qxai.suite",
    "CheckResult": "pytest_qxai.gate.check",
    "Runtime": "pytest_qxai.protocols",
    "ModelPair": "pytest_qxai.models.pair",
    "ModelSide": "pytest_qxai.models.pair",
    "QuantBackend": "pytest_qxai.backends.base",
    "QuantContext": "pytest_qxai.backends.base",
    "register_backend": "pytest_qxai.backends.base",
    "load_float_copy": "pytest_qxai.backends.base",
    "plain_weight": "pytest_qxai.backends.base",
    "finish": "pytest_qxai.backends.base",
    "Scheme": "pytest_qxai.specs",
    "Param": "pytest_qxai.specs",
    "QuantSpec": "pytest_qxai.specs",
    "QxaiError": "pytest_qxai.errors",
    "QxaiUsageError": "pytest_qxai.errors",
}
"""Public name → the module that defines it."""

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the public names, for type checkers
    from .backends.base import QuantBackend, QuantContext, finish, load_float_copy, plain_weight, register_backend  # noqa: F401
    from .config import QxaiConfig  # noqa: F401
    from .errors import QxaiError, QxaiUsageError  # noqa: F401
    from .gate.check import CheckResult  # noqa: F401
    from .metrics import Metric, SuiteResult, not_applicable, register_metric  # noqa: F401
    from .models.pair import ModelPair, ModelSide  # noqa: F401
    from .protocols import Runtime  # noqa: F401
    from .specs import Param, QuantSpec, Scheme  # noqa: F401
    from .suite import Suite, register_suite  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import a public name from its module on use (not kept here: the module stays the one source of truth)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pytest_qxai' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    """The public names next to the module's own."""
    return sorted({*globals(), *_EXPORTS})
