"""The tolerance band grammar and the precedence of user overrides over metric defaults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.gate.tolerance import Tolerance, ToleranceOverrides, parse_tolerance
from pytest_qxai.metrics import Metric


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abs:0.03", Tolerance("abs", 0.03)),
        ("rel:0.1", Tolerance("rel", 0.1)),
        ("abs:0.03,two-sided", Tolerance("abs", 0.03, two_sided=True)),
        ("rel:0.1,two-sided,alpha=0.01", Tolerance("rel", 0.1, True, 0.01)),
        (" ABS : 2 , alpha = 0.2 ", Tolerance("abs", 2.0, alpha=0.2)),
        ("abs:0,one-sided", Tolerance("abs", 0.0)),
    ],
)
def test_parse_examples(text: str, expected: Tolerance) -> None:
    assert parse_tolerance(text) == expected


@pytest.mark.parametrize(
    ("band", "text"),
    [(Tolerance("abs", 0.03), "abs:0.03"), (Tolerance("rel", 0.1, True, 0.01), "rel:0.1,two-sided,alpha=0.01"),
     (Tolerance("abs", 3.0), "abs:3")],
)
def test_canonical_text(band: Tolerance, text: str) -> None:
    assert str(band) == text


@pytest.mark.parametrize(
    "text",
    ["", "0.03", "abs", "abs:", "abs:x", "abs:-0.1", "abs:nan", "abs:inf", "pct:3", "abs:0.1,alpha=0",
     "abs:0.1,alpha=1", "abs:0.1,alpha=x", "abs:0.1,both", "abs:0.1,two-sided,two-sided", "abs:0.1,alpha",
     "abs:0.1,,"],
)
def test_garbage_is_one_clear_line(text: str) -> None:
    with pytest.raises(QxaiUsageError) as excinfo:
        parse_tolerance(text)
    assert "\n" not in str(excinfo.value)


def test_thresholds() -> None:
    assert parse_tolerance("abs:0.03").threshold(0.8) == 0.03
    assert parse_tolerance("rel:0.1").threshold(-20.0) == pytest.approx(2.0)


bands = st.builds(
    Tolerance,
    mode=st.sampled_from(["abs", "rel"]),
    value=st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
    two_sided=st.booleans(),
    alpha=st.floats(1e-6, 0.999999, exclude_min=True, exclude_max=True),
)


@given(bands)
def test_text_round_trip(band: Tolerance) -> None:
    assert parse_tolerance(str(band)) == band
    assert str(parse_tolerance(str(band))) == str(band)


@given(st.text(max_size=40))
def test_arbitrary_text_parses_to_a_round_tripping_band_or_is_rejected_cleanly(text: str) -> None:
    try:
        band = parse_tolerance(text)
    except QxaiUsageError:
        return
    assert parse_tolerance(str(band)) == band


ACC = Metric("nli", "accuracy", "share correct", "binary", tolerance="abs:0.05")


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ((), "abs:0.05"),
        (("accuracy=abs:0.02",), "abs:0.02"),
        (("nli.accuracy=abs:0.01", "accuracy=abs:0.02"), "abs:0.01"),
        (("accuracy=abs:0.02", "nli.accuracy=abs:0.01"), "abs:0.01"),
        (("accuracy=abs:0.02", "accuracy=rel:0.3"), "rel:0.3"),
        (("ecqa.accuracy=abs:0.2", "other=abs:0.3"), "abs:0.05"),
    ],
)
def test_override_precedence(entries: tuple[str, ...], expected: str) -> None:
    """Suite-qualified beats bare, a later entry beats an earlier one, the metric default comes last."""
    assert str(ToleranceOverrides.parse(entries).resolve(ACC)) == expected


@pytest.mark.parametrize("entry", ["accuracy", "=abs:0.1", "a b=abs:0.1", "accuracy=abs:", "x.y.z=abs:0.1"])
def test_bad_override_names_the_entry(entry: str) -> None:
    with pytest.raises(QxaiUsageError, match="--qxai-tolerance"):
        ToleranceOverrides.parse([entry])


def test_unused_overrides_are_reported() -> None:
    overrides = ToleranceOverrides.parse(["accuracy=abs:0.1", "nle.cc_shap=abs:0.1", "typo=abs:0.2"])
    assert overrides.unused({"nli.accuracy", "nle.cc_shap"}) == ["typo"]


def test_bad_metric_default_is_a_usage_error() -> None:
    bad = Metric("s", "m", "", "continuous", tolerance="zzz")
    with pytest.raises(QxaiUsageError, match="s.m declares a bad default band"):
        ToleranceOverrides.parse([]).resolve(bad)
