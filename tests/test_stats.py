"""Margin statistics: Tango's score test for paired proportions, the bootstrap-t for paired means."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from pytest_qxai.gate.stats import (
    BootstrapT,
    ScoreTest,
    bootstrap_t,
    detectable,
    items_needed,
    margin_test,
    paired_valid,
    score_test,
)

FAST = 199  # resamples: enough for these checks, fast


def outcomes(lost: int, gained: int, both: int = 0, neither: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference/quantized 0-1 vectors with the given discordant and concordant counts."""
    a = [1] * lost + [0] * gained + [1] * both + [0] * neither
    b = [0] * lost + [1] * gained + [1] * both + [0] * neither
    return np.array(a, float), np.array(b, float)


def restricted_z(n: int, gained: int, lost: int, margin: float) -> float:
    """Tango's statistic from a numerically maximised restricted likelihood (no closed form), with the 1/2 correction."""
    def nll(p: float) -> float:
        cells = (p + margin, p, 1 - 2 * p - margin)
        if min(cells) <= 0:
            return 1e12
        return -(gained * math.log(cells[0]) + lost * math.log(cells[1]) + (n - gained - lost) * math.log(cells[2]))

    p = optimize.minimize_scalar(nll, bounds=(1e-12, 0.5), method="bounded", options={"xatol": 1e-12}).x
    excess = gained - lost - n * margin
    return math.copysign(max(abs(excess) - 0.5, 0), excess) / math.sqrt(n * (2 * p + margin * (1 - margin)))


@pytest.mark.parametrize("margin", [-0.2, 0.0, 0.1, 0.3])
def test_score_statistic_matches_the_restricted_maximum_likelihood(margin: float) -> None:
    test = score_test(*outcomes(lost=5, gained=12, neither=33))
    assert test.z(margin) == pytest.approx(restricted_z(50, 12, 5, margin), abs=1e-6)


def test_score_test_hand_worked_numbers() -> None:
    test = score_test(*outcomes(lost=20, gained=0, both=180))
    assert (test.estimate, test.n, test.gained, test.lost) == (-0.1, 200, 0, 20)
    assert test.p_below(-0.03) < 0.001 < 0.5 < test.p_below(-0.15)
    low, high = test.interval(0.05)
    assert low < -0.1 < high < -0.03


def test_no_discordant_pair_shows_no_change_within_a_width_that_shrinks_with_n() -> None:
    widths = [score_test(np.ones(n), np.ones(n)).interval(0.05)[1] for n in (24, 120, 300)]
    assert widths[0] > 0.1 > widths[1] > widths[2] > 0
    assert score_test(np.ones(300), np.ones(300)).p_below(0) == 0.5


def test_nan_items_are_dropped_pairwise() -> None:
    a = np.array([1.0, np.nan, 0.0, 1.0, 1.0])
    b = np.array([1.0, 1.0, np.nan, 0.0, 1.0])
    kept_a, kept_b = paired_valid(a, b)
    assert kept_a.tolist() == [1.0, 1.0, 1.0] and kept_b.tolist() == [1.0, 0.0, 1.0]
    assert score_test(a, b).n == 3


def test_score_test_rejects_non_binary_values() -> None:
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        score_test(np.array([0.5, 1.0]), np.array([1.0, 1.0]))


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_fewer_than_two_pairs_is_an_error(kind: str) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        margin_test(np.array([1.0, np.nan]), np.array([1.0, 1.0]), kind)  # type: ignore[arg-type]


def test_bootstrap_is_seeded_and_narrows_with_confidence() -> None:
    diff = np.random.default_rng(0).lognormal(0, 1, 60)
    first = bootstrap_t(diff, n_resamples=999, seed=5)
    assert first.interval(0.01) == bootstrap_t(diff, n_resamples=999, seed=5).interval(0.01)
    wide, narrow = first.interval(0.005), first.interval(0.1)
    assert wide[0] < narrow[0] < first.estimate < narrow[1] < wide[1]
    assert all(math.isfinite(x) for x in wide)


def test_bootstrap_is_never_bolder_than_students_t() -> None:
    from scipy import stats

    diff = np.random.default_rng(1).standard_t(3, 40)
    test = bootstrap_t(diff, n_resamples=FAST)
    assert test.p_above(0.1) >= stats.ttest_1samp(diff, 0.1, alternative="greater").pvalue - 1e-12


def test_power_and_sample_size_follow_the_normal_approximation() -> None:
    test = score_test(*outcomes(lost=10, gained=0, neither=90))
    sd = math.sqrt(0.1 - 0.01)
    assert detectable(test, 0.03, 0.05) == pytest.approx(0.03 + (1.6449 + 0.8416) * sd / 10, abs=1e-3)
    assert items_needed(test, 0.07, 0.05) == math.ceil(((1.6449 + 0.8416) * sd / 0.07) ** 2)
    assert items_needed(test, 0.0, 0.05) is None
    assert items_needed(test, 0.07, 0.0) is None  # a sequential look whose share of alpha underflows to 0
    assert items_needed(test, 10.0, 0.05) == 101  # never fewer than one more item than this run had


values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=30)
bits = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=80)


def binary_test(pairs: list[tuple[bool, bool]]) -> ScoreTest:
    return score_test(np.array([x for x, _ in pairs], float), np.array([y for _, y in pairs], float))


@settings(max_examples=40, deadline=None)
@given(pairs=bits, alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_score_interval_contains_the_estimate_and_p_values_are_probabilities(
        pairs: list[tuple[bool, bool]], alpha: float) -> None:
    test = binary_test(pairs)
    low, high = test.interval(alpha)
    assert -1 <= low <= test.estimate <= high <= 1
    assert all(0 <= test.p_above(c) <= 1 for c in (low, test.estimate, high))


@settings(max_examples=40, deadline=None)
@given(pairs=bits, c1=st.floats(-0.9, 0.9), c2=st.floats(-0.9, 0.9))
def test_score_p_values_are_monotone_in_the_margin(pairs: list[tuple[bool, bool]], c1: float, c2: float) -> None:
    """A larger margin is harder to exceed and easier to stay under."""
    test, (low, high) = binary_test(pairs), sorted((c1, c2))
    assert test.p_above(low) <= test.p_above(high) + 1e-12
    assert test.p_below(low) + 1e-12 >= test.p_below(high)


@settings(max_examples=40, deadline=None)
@given(pairs=bits, margin=st.floats(-0.9, 0.9))
def test_score_test_is_symmetric_in_the_two_sides(pairs: list[tuple[bool, bool]], margin: float) -> None:
    forward = binary_test(pairs)
    backward = binary_test([(y, x) for x, y in pairs])
    assert backward.estimate == pytest.approx(-forward.estimate)
    assert backward.p_above(-margin) == pytest.approx(forward.p_below(margin), abs=1e-9)
    assert backward.interval(0.05) == pytest.approx(tuple(-x for x in reversed(forward.interval(0.05))), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(diff=values, alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_bootstrap_interval_contains_the_estimate(diff: list[float], alpha: float) -> None:
    test = bootstrap_t(np.array(diff), n_resamples=FAST, span=(-2e3, 2e3))
    low, high = test.interval(alpha)
    assert low <= test.estimate <= high


@settings(max_examples=30, deadline=None)
@given(diff=values, c1=st.floats(-1e3, 1e3), c2=st.floats(-1e3, 1e3))
def test_bootstrap_p_values_are_monotone_in_the_margin(diff: list[float], c1: float, c2: float) -> None:
    test, (low, high) = bootstrap_t(np.array(diff), n_resamples=FAST, span=(-2e3, 2e3)), sorted((c1, c2))
    assert test.p_above(low) <= test.p_above(high) + 1e-12
    assert test.p_below(low) + 1e-12 >= test.p_below(high)


@settings(max_examples=30, deadline=None)
@given(diff=values)
def test_bootstrap_is_symmetric_under_negation(diff: list[float]) -> None:
    forward = bootstrap_t(np.array(diff), n_resamples=FAST, seed=3, span=(-2e3, 2e3))
    backward = bootstrap_t(-np.array(diff), n_resamples=FAST, seed=3, span=(-2e3, 2e3))
    assert isinstance(backward, BootstrapT) and backward.estimate == pytest.approx(-forward.estimate)
    assert backward.interval(0.05) == pytest.approx(tuple(-x for x in reversed(forward.interval(0.05))))


def test_identical_differences_report_the_items_their_bound_needs() -> None:
    """No spread: mdd and n_needed follow the binomial bound, not a normal approximation with sd 0."""
    few = bootstrap_t(np.zeros(24), span=(-2.0, 2.0))
    needed = items_needed(few, 0.03, 0.05)
    assert detectable(few, 0.03, 0.05) == pytest.approx(0.03 + few.interval(0.05)[1])
    assert needed is not None and bootstrap_t(np.zeros(needed), span=(-2.0, 2.0)).interval(0.05)[1] < 0.03
    assert bootstrap_t(np.zeros(needed - 1), span=(-2.0, 2.0)).interval(0.05)[1] >= 0.03
    assert items_needed(bootstrap_t(np.zeros(24)), 0.03, 0.05) is None  # no span, no number of items decides
