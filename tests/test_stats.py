"""Paired statistics: exact McNemar, the sign-flip test and the paired bootstrap interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pytest_qxai.gate.stats import mcnemar, mean_difference_ci, paired_test, paired_valid, sign_flip

FAST = 199  # resamples: enough for these checks, fast


def outcomes(lost: int, gained: int, both: int = 0, neither: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference/quantized 0-1 vectors with the given discordant and concordant counts."""
    a = [1] * lost + [0] * gained + [1] * both + [0] * neither
    b = [0] * lost + [1] * gained + [1] * both + [0] * neither
    return np.array(a, float), np.array(b, float)


def test_mcnemar_hand_worked_b10_c2() -> None:
    """10 items lost, 2 gained: the exact test is binomial(2 of 12, 1/2); P(X<=2) = 79/4096."""
    a, b = outcomes(lost=10, gained=2, both=30, neither=8)
    two = mcnemar(a, b, "two-sided", n_resamples=FAST)
    less = mcnemar(a, b, "less", n_resamples=FAST)
    assert two.p_value == pytest.approx(stats.binomtest(2, 12, 0.5).pvalue) == pytest.approx(158 / 4096)
    assert less.p_value == pytest.approx(79 / 4096)
    assert mcnemar(a, b, "greater", n_resamples=FAST).p_value == pytest.approx(1 - 13 / 4096)
    assert two.estimate == pytest.approx(-8 / 50)
    assert two.n == 50 and two.method == "exact McNemar"


def test_mcnemar_without_discordant_pairs_never_rejects() -> None:
    a, b = outcomes(lost=0, gained=0, both=20, neither=5)
    result = mcnemar(a, b, "less", n_resamples=FAST)
    assert result.p_value == 1.0 and result.estimate == 0.0 and result.ci == (0.0, 0.0)


def test_nan_items_are_dropped_pairwise_and_n_reported() -> None:
    a = np.array([1, 0, np.nan, 1, 1, 0], float)
    b = np.array([1, 1, 1, np.nan, 0, 0], float)
    kept_a, kept_b = paired_valid(a, b)
    assert kept_a.tolist() == [1, 0, 1, 0] and kept_b.tolist() == [1, 1, 0, 0]
    assert mcnemar(a, b, n_resamples=FAST).n == 4


def test_binary_test_rejects_non_binary_values() -> None:
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        mcnemar(np.array([0.5, 1.0]), np.array([1.0, 1.0]))


@pytest.mark.parametrize("test", [mcnemar, sign_flip])
def test_fewer_than_two_paired_items_is_refused(test) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least 2"):
        test(np.array([1.0, np.nan]), np.array([0.0, 1.0]))


def test_sign_flip_is_exact_for_small_samples() -> None:
    """Three positive differences: only the unflipped assignment is as extreme, p = 1/8."""
    result = sign_flip(np.zeros(3), np.array([1.0, 2.0, 3.0]), "greater")
    assert result.p_value == pytest.approx(1 / 8)
    assert result.estimate == pytest.approx(2.0)


def test_sign_flip_detects_a_consistent_shift_and_repeats_with_the_seed() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(200)
    b = a - 0.03 + rng.normal(0, 0.05, 200)
    first = sign_flip(a, b, "less", n_resamples=999, seed=3)
    assert first.p_value < 0.01
    assert first.ci[1] < 0
    assert sign_flip(a, b, "less", n_resamples=999, seed=3) == first


def test_identical_nonzero_differences_have_a_point_interval() -> None:
    a = np.linspace(0, 1, 30)
    result = sign_flip(a, a - 0.1, "less", n_resamples=FAST)
    assert result.ci == pytest.approx((-0.1, -0.1))
    assert result.p_value < 0.01


def test_all_zero_differences_give_p_one() -> None:
    a = np.linspace(0, 1, 30)
    result = sign_flip(a, a.copy(), "two-sided", n_resamples=FAST)
    assert result.p_value == 1.0 and result.ci == (0.0, 0.0)


def test_paired_test_picks_the_test_by_kind() -> None:
    a, b = outcomes(lost=3, gained=1, both=5)
    assert paired_test(a, b, "binary", n_resamples=FAST).method == "exact McNemar"
    assert paired_test(a, b, "continuous", n_resamples=FAST).method == "sign-flip permutation"


values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=30)


@settings(max_examples=40, deadline=None)
@given(a=values, shift=st.lists(st.floats(-10, 10, allow_nan=False), min_size=30, max_size=30),
       alternative=st.sampled_from(["two-sided", "less", "greater"]))
def test_p_in_unit_interval_and_ci_contains_the_estimate(a: list[float], shift: list[float], alternative: str) -> None:
    a_arr = np.array(a)
    b_arr = a_arr + np.array(shift[: len(a)])
    result = sign_flip(a_arr, b_arr, alternative, n_resamples=FAST)  # type: ignore[arg-type]
    assert 0.0 <= result.p_value <= 1.0
    assert result.ci[0] <= result.estimate <= result.ci[1]


@settings(max_examples=40, deadline=None)
@given(bits=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=60),
       alternative=st.sampled_from(["two-sided", "less", "greater"]))
def test_mcnemar_p_in_unit_interval_and_ci_contains_the_estimate(
    bits: list[tuple[bool, bool]], alternative: str
) -> None:
    a = np.array([x for x, _ in bits], float)
    b = np.array([y for _, y in bits], float)
    result = mcnemar(a, b, alternative, n_resamples=FAST)  # type: ignore[arg-type]
    assert 0.0 <= result.p_value <= 1.0
    assert result.ci[0] <= result.estimate <= result.ci[1]


@settings(max_examples=40, deadline=None)
@given(a=values, kind=st.sampled_from(["binary", "continuous"]))
def test_a_sample_tested_against_itself_never_rejects(a: list[float], kind: str) -> None:
    arr = (np.array(a) > 0).astype(float) if kind == "binary" else np.array(a)
    for alternative in ("two-sided", "less", "greater"):
        result = paired_test(arr, arr.copy(), kind, alternative, n_resamples=FAST)  # type: ignore[arg-type]
        assert result.p_value == 1.0 and result.estimate == 0.0


def test_interval_is_seeded_and_narrows_with_confidence() -> None:
    diff = np.random.default_rng(0).normal(0.1, 1, 100)
    wide = mean_difference_ci(diff, 0.99, 999, seed=5)
    narrow = mean_difference_ci(diff, 0.8, 999, seed=5)
    assert wide == mean_difference_ci(diff, 0.99, 999, seed=5)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert all(math.isfinite(x) for x in wide)
