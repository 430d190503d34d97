"""Lan-DeMets alpha spending, O'Brien-Fleming type: how much of a test's alpha each sequential look may use."""

from __future__ import annotations

import math

Fractions = tuple[float, float]
"""Information fractions ``(t_previous, t)`` of a look: items at the previous look and at this one, over the budget."""


def spent(t: float, alpha: float) -> float:
    """``alpha(t) = 2 - 2 Phi(z(1 - alpha / 2) / sqrt(t))``: the alpha spent by information fraction ``t``
    (Lan & DeMets 1983; equal to ``alpha`` at ``t = 1``)."""
    from scipy.special import ndtr, ndtri  # the normal cdf and its inverse (scipy.stats.norm without its overhead)

    if t <= 0:
        return 0.0
    return float(2 * ndtr(ndtri(alpha / 2) / math.sqrt(min(t, 1.0))))


def share(fractions: Fractions | None, alpha: float) -> float:
    """The part of ``alpha`` a look at ``fractions`` spends (1 for a fixed-n check, ``fractions`` None)."""
    if fractions is None:
        return 1.0
    before, now = fractions
    return (spent(now, alpha) - spent(before, alpha)) / alpha
