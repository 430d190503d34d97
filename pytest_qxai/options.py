"""The pytest glue of the qxai options: registers each option and its ini twin (no torch import).

The option table, its parsing and :class:`QxaiConfig` live in :mod:`pytest_qxai.config`, which imports no
pytest; the names below are re-exported from there for code written against this module.
"""

from __future__ import annotations

import pytest

from .config import (
    DEFAULT_QUANT,
    GROUP,
    OPTIONS,
    PROFILES,
    OptionDef,
    QxaiConfig,
    check_baseline_name,
    default_cache_dir,
    explicitly_requested,
    is_ci,
    parse_shard,
    raw_value,
)

__all__ = ["DEFAULT_QUANT", "OPTIONS", "PROFILES", "OptionDef", "QxaiConfig", "add_options", "check_baseline_name",
           "default_cache_dir", "explicitly_requested", "is_ci", "parse_shard", "raw_value"]


def add_options(parser: pytest.Parser) -> None:
    """Register every option and its ini twin under the ``qxai`` group."""
    group = parser.getgroup(GROUP, "pytest-qxai: explainability regression gate for quantized LLMs")
    for opt in OPTIONS:
        group.addoption(*opt.flags, dest=opt.dest, default=None, help=opt.help, **opt.kwargs)
        ini_default = opt.default if opt.ini_type == "bool" else ([] if opt.ini_type == "args" else None)
        parser.addini(opt.ini, help=opt.help, type=opt.ini_type, default=ini_default)  # type: ignore[arg-type]
