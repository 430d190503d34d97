"""The --quant grammar: every scheme parses, canonical text round-trips, garbage gets one clear line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.specs import SCHEMES, QuantSpec, parse_spec

ISSUE_SCHEMES = ["none", "bnb8", "bnb4", "bnb4-fp4", "gptq4", "gptq8", "awq4", "hqq4", "hqq8",
                 "quanto-int8", "quanto-int4", "quanto-int2", "torchao-int8", "gguf-q8_0", "gguf-q4_0", "gguf-q4_1",
                 "gguf-q5_0", "gguf-q5_1", "ct-w4a16", "ct-w8a16", "ct-w8a8"]


@pytest.mark.parametrize("name", ISSUE_SCHEMES)
def test_every_documented_scheme_parses(name: str) -> None:
    spec = parse_spec(name)
    assert spec.name == name and spec.params == () and str(spec) == name


def test_parameters_are_typed_and_defaults_filled() -> None:
    spec = parse_spec("gptq4:group_size=64,calibration=32,desc_act=true")
    assert spec.get("group_size") == 64 and spec.get("calibration") == 32 and spec.get("desc_act") is True
    assert spec.get("damp") == 0.05  # default
    assert str(spec) == "gptq4:calibration=32,desc_act=true,group_size=64"  # canonical: sorted keys


def test_scheme_names_are_case_and_space_tolerant() -> None:
    assert parse_spec("  GPTQ4 : group_size = 32 ").get("group_size") == 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gptq3", "unknown --quant scheme gptq3; choose one of: none, bnb8"),
        ("", "--quant is empty"),
        ("gptq4:", "nothing after ':'"),
        ("gptq4:group_size", "malformed parameter 'group_size'; write key=value"),
        ("gptq4:group_size=abc", "parameter 'group_size' expects int, got 'abc'"),
        ("gptq4:bits=3", "unknown parameter 'bits'; valid parameters: group_size, calibration"),
        ("bnb8:threshold=nan", "parameter 'threshold' expects float"),
        ("gptq4:seed=1,seed=2", "parameter 'seed' given twice"),
        ("quanto-int4:group_size=64", "unknown parameter 'group_size'; valid parameters: keep"),
        ("bnb4:double_quant=maybe", "parameter 'double_quant' expects bool"),
    ],
)
def test_bad_specs_give_one_line(text: str, message: str) -> None:
    with pytest.raises(QxaiUsageError) as info:
        parse_spec(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def _values(scheme: str) -> st.SearchStrategy[dict[str, object]]:
    params = SCHEMES[scheme].params
    strategies: dict[str, st.SearchStrategy[object]] = {}
    for key, param in params.items():
        if param.type is bool:
            strategies[key] = st.booleans()
        elif param.type is int:
            strategies[key] = st.integers(-(10**6), 10**6)
        elif param.type is float:
            strategies[key] = st.floats(allow_nan=False, allow_infinity=False, width=32)
    return st.fixed_dictionaries({}, optional=strategies)  # type: ignore[arg-type]


@st.composite
def specs(draw: st.DrawFn) -> QuantSpec:
    scheme = draw(st.sampled_from(sorted(SCHEMES)))
    values = draw(_values(scheme))
    body = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items())
    return parse_spec(f"{scheme}:{body}" if body else scheme)


@given(specs())
def test_canonical_text_round_trips(spec: QuantSpec) -> None:
    again = parse_spec(str(spec))
    assert again == spec and str(again) == str(spec)
    assert "/" not in spec.slug and ".." not in spec.slug


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_fails_with_usage_error(text: str) -> None:
    try:
        spec = parse_spec(text)
    except QxaiUsageError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert spec.name in SCHEMES
