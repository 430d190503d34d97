"""Paired statistics for the gate: exact McNemar for binary outcomes, bootstrap and sign-flip tests otherwise.

Every comparison is paired (same items on both sides): a difference of two or three points is only
detectable that way. Items that are NaN (not applicable) on either side are dropped and the paired
``n`` is reported. Resampling is seeded, so a run repeats exactly. scipy is imported on first use to
keep ``pytest --help`` light.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..metrics import Kind

Alternative = Literal["two-sided", "greater", "less"]

DEFAULT_RESAMPLES = 9999
MIN_PAIRED = 2


@dataclass(frozen=True)
class PairedTest:
    """The mean paired difference ``b - a``, its confidence interval and one p-value.

    ``p_value`` tests "no difference" against ``alternative``: ``greater`` means ``b > a``.
    """

    estimate: float
    ci: tuple[float, float]
    p_value: float
    alternative: Alternative
    n: int
    method: str


def paired_valid(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items valid (not NaN) on both sides, in order."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need two vectors of one length, got shapes {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def mean_difference_ci(
    diff: np.ndarray, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap (BCa) interval of the mean of per-item differences, i.e. the paired bootstrap.

    Identical differences have no spread: the interval is the point itself. Where BCa is undefined
    (a bootstrap distribution too lumpy for its acceleration estimate) the percentile interval is used.
    """
    from scipy import stats

    diff = np.asarray(diff, dtype=np.float64)
    _require_pairs(diff.size)
    if np.all(diff == diff[0]):
        return float(diff[0]), float(diff[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            res = stats.bootstrap(
                (diff,), np.mean, vectorized=True, confidence_level=confidence,
                n_resamples=n_resamples, method=method, rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            break
    # A resampling interval may miss its own estimate by a hair on tiny, lumpy samples; never report that.
    estimate = float(np.mean(diff))
    return min(low, estimate), max(high, estimate)


def mcnemar(
    a: np.ndarray, b: np.ndarray, alternative: Alternative = "two-sided", *, confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> PairedTest:
    """Exact McNemar test of paired binary outcomes: a binomial test on the discordant pairs.

    ``gained`` items are 0 in ``a`` and 1 in ``b``; under "no difference" they are Binomial(discordant,
    1/2). The interval is the paired bootstrap of the difference of proportions.
    """
    from scipy import stats

    a, b = paired_valid(a, b)
    _require_pairs(a.size)
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise ValueError("binary per-item values must be 0, 1 or NaN")
    gained = int(np.sum((a == 0) & (b == 1)))
    lost = int(np.sum((a == 1) & (b == 0)))
    discordant = gained + lost
    p = 1.0 if discordant == 0 else float(stats.binomtest(gained, discordant, 0.5, alternative=alternative).pvalue)
    diff = b - a
    ci = mean_difference_ci(diff, confidence, n_resamples, seed)
    return PairedTest(float(np.mean(diff)), ci, min(p, 1.0), alternative, int(a.size), "exact McNemar")


def sign_flip(
    a: np.ndarray, b: np.ndarray, alternative: Alternative = "two-sided", *, confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> PairedTest:
    """Paired permutation (sign-flip) test and bootstrap interval of the mean difference ``b - a``.

    Exact when ``2**n <= n_resamples``; otherwise Monte Carlo with ``n_resamples`` seeded draws.
    """
    from scipy import stats

    a, b = paired_valid(a, b)
    _require_pairs(a.size)
    diff = b - a
    if np.all(diff == 0):
        p = 1.0
    else:
        res = stats.permutation_test(
            (diff,), np.mean, permutation_type="samples", vectorized=True, alternative=alternative,
            n_resamples=n_resamples, batch=max(64, 2_000_000 // diff.size), rng=np.random.default_rng(seed),
        )
        p = float(res.pvalue)
    ci = mean_difference_ci(diff, confidence, n_resamples, seed)
    return PairedTest(float(np.mean(diff)), ci, min(p, 1.0), alternative, int(a.size), "sign-flip permutation")


def paired_test(
    a: np.ndarray, b: np.ndarray, kind: Kind, alternative: Alternative = "two-sided", *,
    confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> PairedTest:
    """McNemar for binary per-item outcomes, the sign-flip test for continuous ones."""
    test = mcnemar if kind == "binary" else sign_flip
    return test(a, b, alternative, confidence=confidence, n_resamples=n_resamples, seed=seed)


def _require_pairs(n: int) -> None:
    if n < MIN_PAIRED:
        raise ValueError(f"a paired test needs at least {MIN_PAIRED} items valid on both sides, got {n}")
