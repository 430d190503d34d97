"""Cosine similarity that is exactly 1 for identical vectors, so a null pair (a model and its copy) gates equal sides.

``a·b / (‖a‖ ‖b‖)`` rounds each norm, and their product is not ``a·a`` bit for bit: on SmolLM2 the null run gave
per-item cosines of 0.9999999999999999 and 1.0000000000000002 (neurons, float64) and 0.99999988 (probes, float32
states) against the reference's defined 1. Here the denominator is ``sqrt(‖a‖² ‖b‖²)`` in float64: in binary
floating point ``sqrt(fl(x²)) = |x|`` (Boldo 2015), so ``a = b`` gives ``a·a / a·a = 1`` exactly. The theorem
needs the fourth power to stay in range, so each vector is first scaled by a power of two (exact) that puts its
largest magnitude in [0.5, 1).
"""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cosine of ``a`` and ``b`` along ``axis`` in float64, clipped to [-1, 1]; 0 where either vector is all zeros."""
    a, b = (_power_of_two_scaled(np.asarray(x, dtype=np.float64), axis) for x in (a, b))
    dot, squares = (a * b).sum(axis=axis), (a * a).sum(axis=axis) * (b * b).sum(axis=axis)
    norm = np.sqrt(squares)
    return np.clip(np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0), -1.0, 1.0)  # type: ignore[no-any-return]


def _power_of_two_scaled(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` times the power of two that brings its largest magnitude along ``axis`` into [0.5, 1) (0 stays 0)."""
    _, exponent = np.frexp(np.abs(x).max(axis=axis, keepdims=True))
    return np.ldexp(x, -exponent)  # type: ignore[no-any-return]
