"""Which suites support blame: per suite, a callable that re-measures its metrics on chosen items (no torch).

A suite registers :class:`BlameSupport` at import. ``remeasure(pair, item_ids)`` returns per-item values
(keyed by metric name, in the order of ``item_ids``) of the quantized model *as it is now*, bypassing every
cache, since blame swaps full-precision modules into it between calls. ``run(pair)`` runs the whole suite
(used to verify a proposed spec on a freshly quantized pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..metrics import SuiteResult
    from ..models.pair import ModelPair


@dataclass(frozen=True)
class BlameSupport:
    """A suite's hooks for blame: the metrics it can re-measure, how, and how to run the suite."""

    suite: str
    metrics: tuple[str, ...]
    remeasure: Callable[["ModelPair", Sequence[str]], dict[str, np.ndarray]]
    run: Callable[["ModelPair"], "SuiteResult"]


_SUPPORT: dict[str, BlameSupport] = {}


def register_blame(support: BlameSupport) -> BlameSupport:
    """Declare that ``support.suite`` can re-measure ``support.metrics`` for blame."""
    _SUPPORT[support.suite] = support
    return support


def blame_support(suite: str, metric: str) -> BlameSupport | None:
    """The support for ``suite.metric``, or None when that metric cannot be re-measured."""
    support = _SUPPORT.get(suite)
    return support if support is not None and metric in support.metrics else None
