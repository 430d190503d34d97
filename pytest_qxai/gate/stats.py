"""Margin statistics for the gate: one-sided tests and bounds of a paired mean change against any margin.

Every comparison is paired (same items on both sides). The quantity is theta = mean(b - a) over the items
valid on both sides. Binary per-item outcomes use Tango's score test for the paired difference of
proportions with a non-zero margin, continuous ones the studentized (bootstrap-t) bootstrap of the mean
difference; docs/gate.md says why, with the simulation that chose them. Resampling is seeded, so a run
repeats exactly. scipy is imported on first use to keep ``pytest --help`` light.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..metrics import Kind

Side = Literal["lower", "upper"]

DEFAULT_RESAMPLES = 9999
MIN_PAIRED = 2
POWER = 0.8
_BATCH = 2_000_000  # resampled values per bootstrap batch (memory, not results)


def paired_valid(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items valid (not NaN) on both sides, in order."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need two vectors of one length, got shapes {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def paired_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b - a`` per item, 0 where the two are equal: an item at the same infinity on both sides did not change."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(a == b, 0.0, b - a)


@dataclass(frozen=True)
class MarginTest(ABC):
    """Inference on theta = mean(b - a): p-values of one-sided tests against a margin ``c`` and confidence bounds.

    ``p_above(c)`` tests H0 theta <= c against theta > c; ``p_below(c)`` tests H0 theta >= c against theta < c.
    ``bound(alpha, side)`` is the one-sided ``1 - alpha`` confidence bound that inverts them. ``sd`` is the
    per-item standard deviation of the differences (what power and sample-size estimates need).
    """

    estimate: float
    sd: float
    n: int
    method: str

    @property
    def se(self) -> float:
        """Standard error of the estimate."""
        return self.sd / math.sqrt(self.n)

    @abstractmethod
    def p_above(self, c: float) -> float:
        """One-sided p-value of H0 theta <= c."""

    @abstractmethod
    def p_below(self, c: float) -> float:
        """One-sided p-value of H0 theta >= c."""

    @abstractmethod
    def bound(self, alpha: float, side: Side) -> float:
        """The one-sided ``1 - alpha`` confidence bound of theta on ``side``."""

    def interval(self, alpha: float) -> tuple[float, float]:
        """Lower and upper one-sided ``1 - alpha`` bounds (together a ``1 - 2 alpha`` interval)."""
        return min(self.bound(alpha, "lower"), self.estimate), max(self.bound(alpha, "upper"), self.estimate)


@dataclass(frozen=True)
class ScoreTest(MarginTest):
    """Tango's (1998) score test for the difference of paired proportions, with a margin.

    Tango T., "Equivalence test and confidence interval for the difference in proportions for the paired-sample
    design", Statistics in Medicine 17:891-908 (1998); the same statistic as Nam (1997), with a continuity
    correction of 1/2 on the discordant-count difference (without it the size exceeded alpha when few items
    are discordant; docs/gate.md). Written here because neither scipy nor statsmodels has a paired-proportion
    test with a non-zero margin (statsmodels' McNemar is for a zero margin only). ``gained`` items are 0 in
    ``a`` and 1 in ``b``, ``lost`` the reverse.
    """

    gained: int = 0
    lost: int = 0

    def z(self, c: float) -> float:
        """The score statistic for H0 theta = c; large when the data show theta > c."""
        n, b, k = self.n, self.gained, self.lost
        excess = b - k - n * c
        numerator = math.copysign(max(abs(excess) - 0.5, 0.0), excess)
        # Restricted maximum-likelihood estimate of P(lost) under theta = c (Tango 1998, eq. 3).
        big_b = -b - k + (2 * n - b + k) * c
        p_lost = (-big_b + math.sqrt(max(big_b * big_b + 8 * n * k * c * (1 - c), 0.0))) / (4 * n)
        variance = n * (2 * p_lost + c * (1 - c))
        if variance <= 0:
            return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
        return numerator / math.sqrt(variance)

    def p_above(self, c: float) -> float:
        """One-sided p-value of H0 theta <= c (normal approximation of the score statistic)."""
        from scipy.special import ndtr

        return float(ndtr(-self.z(c)))

    def p_below(self, c: float) -> float:
        """One-sided p-value of H0 theta >= c."""
        from scipy.special import ndtr

        return float(ndtr(self.z(c)))

    def bound(self, alpha: float, side: Side) -> float:
        """The score bound: the margin at which the one-sided test has p = alpha (root of a monotone function)."""
        from scipy.optimize import brentq
        from scipy.special import ndtri

        crit = -float(ndtri(alpha))
        edge = -1.0 if side == "lower" else 1.0
        sign = 1.0 if side == "lower" else -1.0
        f = lambda c: sign * self.z(c) - crit  # noqa: E731 - a one-line root target
        if f(edge * (1 - 1e-12)) <= 0:
            return edge
        return float(brentq(f, edge * (1 - 1e-12), self.estimate, xtol=1e-10))


@dataclass(frozen=True)
class BootstrapT(MarginTest):
    """Studentized (bootstrap-t) inference on a mean of per-item differences, never bolder than Student's t.

    t* = (mean* - mean) / se* over seeded resamples of the items; p-values and bounds compare (mean - c) / se
    with that distribution, and take the more conservative of it and Student's t with n - 1 degrees of
    freedom (the larger p-value, the wider bound): the bootstrap-t corrects for skew, where the t-test fails,
    and the t-test holds for symmetric heavy tails, where the bootstrap-t was slightly liberal (docs/gate.md).
    Hand-written because scipy's ``bootstrap`` offers percentile, basic and BCa intervals only, and BCa's
    one-sided coverage was worse than either. ``span`` is the range per-item differences
    can take (from the metric's bounds). Identical differences show no spread, which does not make them exact:
    then the bounds allow a share 1 - alpha**(1/n) of unseen items anywhere in the span (the binomial bound
    behind the "rule of three"), and an unbounded metric decides nothing.
    """

    t_star: np.ndarray = field(default_factory=lambda: np.zeros(1), repr=False, compare=False)
    span: tuple[float, float] = (-math.inf, math.inf)

    def p_above(self, c: float) -> float:
        """Bootstrap-t p-value of H0 theta <= c."""
        if self.sd == 0:
            return self._p_identical(self.estimate - c, self.estimate - self.span[0])
        t = (self.estimate - c) / self.se
        return self._combined(int(np.count_nonzero(self.t_star >= t)), self._student(t))

    def p_below(self, c: float) -> float:
        """Bootstrap-t p-value of H0 theta >= c."""
        if self.sd == 0:
            return self._p_identical(c - self.estimate, self.span[1] - self.estimate)
        t = (self.estimate - c) / self.se
        return self._combined(int(np.count_nonzero(self.t_star <= t)), self._student(-t))

    def _combined(self, beyond: int, student: float) -> float:
        """The larger of the bootstrap-t p-value (``beyond`` resampled t* as extreme as t) and Student's.

        Beyond every resampled t* the bootstrap says only p < 1 / (B + 1); Student's t decides there, the rule
        :meth:`bound` follows, so a sequential look spending less than 1 / (B + 1) can still stop a clear case.
        """
        return student if beyond == 0 else max((1 + beyond) / (self.t_star.size + 1), student)

    def _student(self, t: float) -> float:
        """Student's t upper-tail p-value with n - 1 degrees of freedom."""
        from scipy.stats import t as student

        return float(student.sf(t, self.n - 1))

    def _p_identical(self, distance: float, room: float) -> float:
        """p of a margin ``distance`` inside the estimate when all n differences were equal (``room`` to the span)."""
        if distance <= 0 or not math.isfinite(room):
            return 1.0
        return max(0.0, 1 - distance / room) ** self.n if room > 0 else 0.0

    def bound(self, alpha: float, side: Side) -> float:
        """mean - q * se with q the (1 - alpha) or alpha quantile of t*, clipped to the metric's span."""
        if self.sd == 0:
            edge = self.span[0] if side == "lower" else self.span[1]
            return self.estimate + (1 - alpha ** (1 / self.n)) * (edge - self.estimate)
        from scipy.stats import t as student

        q = np.quantile(self.t_star, 1 - alpha if side == "lower" else alpha,
                        method="higher" if side == "lower" else "lower")
        edge = float(student.isf(alpha, self.n - 1))
        q = max(q, edge) if side == "lower" else min(q, -edge)
        value = self.estimate - float(q) * self.se if math.isfinite(q) else -math.copysign(math.inf, q)
        return float(np.clip(value, *self.span))


@dataclass(frozen=True)
class InfiniteShift(MarginTest):
    """Differences some of which are infinite (a log-probability of minus infinity on one side, say).

    An item changed by an infinite amount makes theta that infinity whatever the other items do, so the test is
    certain: p is 0 for the margin it is beyond and 1 otherwise, both bounds are the estimate. Infinities of both
    signs leave theta undefined (NaN): nothing is shown, both bounds are open.
    """

    def p_above(self, c: float) -> float:
        """0 when theta is +inf (beyond any margin), else 1."""
        return 0.0 if self.estimate > c else 1.0

    def p_below(self, c: float) -> float:
        """0 when theta is -inf, else 1."""
        return 0.0 if self.estimate < c else 1.0

    def bound(self, alpha: float, side: Side) -> float:
        """The estimate itself, or an open side when theta is undefined."""
        if math.isnan(self.estimate):
            return -math.inf if side == "lower" else math.inf
        return self.estimate


def bootstrap_t(diff: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                span: tuple[float, float] = (-math.inf, math.inf)) -> MarginTest:
    """The :class:`BootstrapT` of per-item differences (seeded); :class:`InfiniteShift` if any is infinite."""
    diff = np.asarray(diff, dtype=np.float64)
    _require_pairs(diff.size)
    if np.isinf(diff).any():
        signs = set(np.sign(diff[np.isinf(diff)]).tolist())
        infinite = int(np.isinf(diff).sum())
        return InfiniteShift(math.copysign(math.inf, signs.pop()) if len(signs) == 1 else math.nan, 0.0, diff.size,
                             f"{infinite} item(s) changed by an infinite amount: no test needed")
    n, mean, sd = diff.size, float(diff.mean()), float(diff.std(ddof=1))
    if sd == 0:
        return BootstrapT(mean, 0.0, n, "bootstrap-t", span=span)
    rng = np.random.default_rng(seed)
    parts = []
    per_batch = max(1, _BATCH // n)
    for start in range(0, n_resamples, per_batch):
        sample = diff[rng.integers(0, n, size=(min(per_batch, n_resamples - start), n))]
        se = sample.std(axis=1, ddof=1) / math.sqrt(n)
        # A resample of identical values has se* = 0; its t* is 0 when it equals the mean and infinite otherwise.
        flat = np.sign(sample[:, 0] - mean) * np.where(sample[:, 0] == mean, 0.0, math.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(np.where(se > 0, (sample.mean(axis=1) - mean) / se, flat))
    t_star = np.concatenate(parts)
    return BootstrapT(mean, sd, n, "bootstrap-t", t_star=t_star, span=span)


def score_test(a: np.ndarray, b: np.ndarray) -> ScoreTest:
    """Tango's score test of paired binary outcomes ``a`` (reference) and ``b`` (0, 1 or NaN)."""
    a, b = paired_valid(a, b)
    _require_pairs(a.size)
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise ValueError("binary per-item values must be 0, 1 or NaN")
    n = int(a.size)
    gained = int(np.sum((a == 0) & (b == 1)))
    lost = int(np.sum((a == 1) & (b == 0)))
    estimate = (gained - lost) / n
    sd = math.sqrt(max((gained + lost) / n - estimate**2, 0.0))
    return ScoreTest(estimate, sd, n, "Tango score", gained=gained, lost=lost)


def margin_test(a: np.ndarray, b: np.ndarray, kind: Kind, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                span: tuple[float, float] = (-math.inf, math.inf)) -> MarginTest:
    """The score test for binary per-item outcomes, the bootstrap-t for continuous ones (items valid on both sides)."""
    if kind == "binary":
        return score_test(a, b)
    a, b = paired_valid(a, b)
    return bootstrap_t(paired_difference(a, b), n_resamples=n_resamples, seed=seed, span=span)


def detectable(test: MarginTest, margin: float, alpha: float, power: float = POWER) -> float:
    """The degradation (margin plus the excess) that a one-sided level-alpha test detects with ``power``.

    Normal approximation, (z(1-alpha) + z(power)) * SE beyond the margin; a binary test without any discordant
    item is given the spread of one, so that no data never reads as perfect power.
    """
    if _identical(test):  # the bound of identical differences: a share 1 - alpha**(1/n) of the room
        return margin + (1 - alpha ** (1 / test.n)) * _room(test)
    return margin + _z_sum(alpha, power) * _spread(test) / math.sqrt(test.n)


def items_needed(test: MarginTest, distance: float, alpha: float, power: float = POWER) -> int | None:
    """Items at which a one-sided level-alpha test would tell the observed degradation from the margin.

    ``distance`` is |estimate - margin| in metric units; None when it is 0 (no sample size decides a tie) or
    ``alpha`` is 0 (a sequential look so early that its share of alpha underflows: no sample size decides there).
    """
    if distance <= 0 or not math.isfinite(distance) or alpha <= 0:
        return None
    if _identical(test):  # identical differences decide once 1 - alpha**(1/n) of the room is within the distance
        room = _room(test)
        if not math.isfinite(room):
            return None
        needed = math.log(alpha) / math.log1p(-distance / room) if distance < room else 1.0
    else:
        needed = ((_z_sum(alpha, power) * _spread(test)) / distance) ** 2
    return max(test.n + 1, math.ceil(needed))


def _z_sum(alpha: float, power: float) -> float:
    """z(1 - alpha) + z(power), by scipy's normal quantile function (``scipy.stats.norm`` without its overhead)."""
    from scipy.special import ndtri

    return float(ndtri(power) - ndtri(alpha))


def _identical(test: MarginTest) -> bool:
    return isinstance(test, BootstrapT) and test.sd == 0


def _room(test: MarginTest) -> float:
    """How far from the estimate the metric's span reaches (the larger side)."""
    assert isinstance(test, BootstrapT)
    return max(test.estimate - test.span[0], test.span[1] - test.estimate)


def _spread(test: MarginTest) -> float:
    """Per-item sd, floored at one discordant item in n for a binary test."""
    if isinstance(test, ScoreTest):
        return max(test.sd, math.sqrt(1 / test.n))
    return test.sd


def _require_pairs(n: int) -> None:
    if n < MIN_PAIRED:
        raise ValueError(f"a paired test needs at least {MIN_PAIRED} items valid on both sides, got {n}")
