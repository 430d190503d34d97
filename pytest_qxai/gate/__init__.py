"""The release gate: paired statistics, tolerance bands and the per-metric pass/fail decision."""

from __future__ import annotations

from .check import CheckResult, check_vs_baseline, check_vs_reference, summarize
from .tolerance import Tolerance, ToleranceOverrides, parse_tolerance

__all__ = [
    "CheckResult",
    "Tolerance",
    "ToleranceOverrides",
    "check_vs_baseline",
    "check_vs_reference",
    "parse_tolerance",
    "summarize",
]
