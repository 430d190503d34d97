"""Every unit counts: degenerate outputs scored as outcomes, degenerate-rate metrics, and task competence.

A unit (an item, or an (item, edit) pair) is fixed before either model runs. When a model's output for it is
unusable (an empty explanation, an edit that copies the input, a constant attribution vector) the unit keeps a
value: the metric's worst bound, or the explicit value the metric defines for it. Each suite also gates the
share of degenerate units per side (``degenerate_rate``), so a model cannot improve a metric by failing.

Task competence is the precondition of every metric that explains a task label: the reference must be
significantly above chance on the gated items (one-sided exact binomial test), or those metrics are reported
``not applicable`` with the measured reason instead of gating noise.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..metrics import NOT_APPLICABLE, Metric, SuiteResult, register_metric
from ..suite import get_suite

if TYPE_CHECKING:
    from ..models.pair import ModelPair
    from ..protocols import Runtime

COMPETENCE_ALPHA = 0.05
"""One-sided level of the binomial test that the reference is above chance on a suite's gated items."""
DEGENERATE_TOLERANCE = "abs:0.05"
"""Band of every ``degenerate_rate``: at most one more unusable output per 20 units than the reference."""


def degenerate_metric(suite: str, what: str, name: str = "degenerate_rate") -> Metric:
    """Register a suite's share of units with a degenerate output (binary per unit, lower is better)."""
    return register_metric(Metric(suite, name, f"Unit's output is degenerate: {what}", "binary",
                                  direction="lower", bounds=(0.0, 1.0), tolerance=DEGENERATE_TOLERANCE))


def worst_value(metric: Metric) -> float:
    """The bound of a metric in its bad direction (the score of a degenerate unit); error when unbounded."""
    low, high = metric.bounds
    worst = low if metric.direction == "higher" else high
    if worst is None:
        raise ValueError(f"{metric.key} has no bound in its bad direction; define its degenerate value explicitly")
    return float(worst)


def uniform_log_perplexity(scorer: "Runtime") -> float:
    """Log-perplexity of a uniform guess over the scorer's vocabulary: the explicit fluency of an empty text."""
    return math.log(len(scorer.tokenizer))


def scored(values: np.ndarray, degenerate: np.ndarray, worst: float) -> np.ndarray:
    """``values`` with every degenerate unit set to ``worst`` (a copy)."""
    out = np.array(values, dtype=np.float64)
    out[np.asarray(degenerate, dtype=bool)] = worst
    return out


def lost_counts(degenerate: Mapping[str, np.ndarray], metrics: Sequence[str | Metric]) -> dict[str, dict[str, int]]:
    """``{metric: {side: degenerate units}}`` for metrics whose degenerate units are scored, not dropped."""
    counts = {side: int(np.sum(np.asarray(flags, dtype=bool))) for side, flags in degenerate.items()}
    return {str(m): dict(counts) for m in metrics}


def competence_items(pair: "ModelPair", suite: str, n: int, part: str | None = None) -> tuple[int, bool]:
    """The items a suite's (or its ``part``'s) competence test runs on, and whether that settles it: in sequential
    mode the whole budget's (the reference's task predictions only, as the last look would test them), else the
    ``n`` given."""
    looks = get_suite(suite).look_items(pair.config, part)
    return (n, False) if looks is None else (max(n, looks[-1]), True)


def competence(correct: np.ndarray, chance: float, task: str) -> tuple[bool, str]:
    """Whether the reference is significantly above ``chance`` on these items, and the measured sentence."""
    from scipy.stats import binomtest

    correct = np.asarray(correct, dtype=np.float64)
    n, k = int(correct.size), int(correct.sum())
    if n == 0:
        return False, f"no {task} items"
    p = float(binomtest(k, n, chance, alternative="greater").pvalue)
    verdict = "above chance" if p < COMPETENCE_ALPHA else "at chance"
    return p < COMPETENCE_ALPHA, (f"reference {verdict} on {task} ({k / n:.2f} vs chance {chance:.2f}, "
                                  f"one-sided binomial p={p:.3g}, n={n})")


def require_competence(result: SuiteResult, task: str, correct: np.ndarray, chance: float,
                       metrics: Sequence[Metric], settled: bool = False) -> bool:
    """State the precondition of ``metrics`` in the notes; mark them not applicable when it does not hold.

    ``settled``: ``correct`` covers the items of the whole sequential budget (:func:`competence_items`), so a
    later look tests the same items and cannot change the outcome."""
    ok, reason = competence(correct, chance, task)
    result.notes.setdefault("precondition", {})[task] = {
        "holds": ok, "test": reason, "dependent_metrics": [m.name for m in metrics], "settled": settled,
        "correct": int(np.sum(correct)), "n": int(np.size(correct)), "chance": chance, "alpha": COMPETENCE_ALPHA}
    if not ok:
        for metric in metrics:
            result.skipped[metric.name] = NOT_APPLICABLE + reason
    return ok
