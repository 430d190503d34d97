"""Security: no remote code unless asked, no pickled weights, safe file names, no network while offline.

Model loading is observed by wrapping ``from_pretrained`` (the tiny random model of ``tests/tiny.py`` stands
in for SmolLM2); nothing here downloads anything.
"""

from __future__ import annotations

import re
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.models.source import ModelSource, resolve_source
from pytest_qxai.options import QxaiConfig, check_baseline_name
from pytest_qxai.specs import SCHEMES, QuantSpec, parse_spec

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_qxai"
UNSAFE = ("/", "\\", "..", "\x00")


# --- remote code -------------------------------------------------------------------------------------------

@pytest.fixture
def spied_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Record every ``from_pretrained`` call of the Auto classes (the real loader still runs)."""
    import transformers

    calls: list[tuple[str, dict[str, Any]]] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args: Any, _real: Callable[..., Any] = real, _name: str = cls.__name__, **kwargs: Any) -> Any:
            calls.append((_name, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", staticmethod(spy))
    return calls


def test_loaders_pass_trust_remote_code_false(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import transformers

    from pytest_qxai.models.loading import load_reference, load_tokenizer

    seen: list[Any] = []
    model = mock.MagicMock()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        staticmethod(lambda *a, **k: seen.append(k["trust_remote_code"]) or model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        staticmethod(lambda *a, **k: seen.append(k["trust_remote_code"])
                                     or SimpleNamespace(pad_token=None, eos_token="</s>")))
    load_reference("some/folder", device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    load_tokenizer("some/folder", revision=None, trust_remote_code=False)
    assert seen == [False, False]


@pytest.mark.parametrize(("args", "ini", "expected"), [
    ((), "", False),
    ((), "qxai_trust_remote_code = false", False),
    (("--qxai-trust-remote-code",), "", True),
    ((), "qxai_trust_remote_code = true", True),
])
def test_remote_code_is_off_unless_asked(pytester: pytest.Pytester, args: tuple[str, ...], ini: str,
                                         expected: bool) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    assert QxaiConfig.from_pytest(pytester.parseconfig(*args)).trust_remote_code is expected


def test_the_whole_pair_load_never_trusts_remote_code(
    tmp_path: Path, make_config: Callable[..., QxaiConfig], spied_loads: list[tuple[str, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reference, tokenizer and the quantized side (a second load for ``none``) all get ``trust_remote_code=False``."""
    from tiny import build_tiny_model

    from pytest_qxai.models import loading, pair

    monkeypatch.setattr(loading, "apply_determinism", lambda seed: None)  # keep global torch flags untouched
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the pair's scratch folder lands here
    folder = build_tiny_model(tmp_path)
    loaded = pair._load_pair(make_config(model=str(folder), quant=parse_spec("none"), cache_dir=tmp_path / "cache",
                                         skip_sanity=True))
    assert loaded.reference.model is not loaded.quantized.model
    assert len(spied_loads) >= 3
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in spied_loads), spied_loads


# --- weights: safetensors, never arbitrary pickles ---------------------------------------------------------

def test_gguf_conversion_writes_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dequantized reference folder holds safetensors weights only (no pickle-based .bin/.pt)."""
    import transformers
    from tiny import build_tiny_model

    from pytest_qxai.models.loading import convert_gguf

    folder = build_tiny_model(tmp_path)
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def from_tiny(location: str, *, gguf_file: str, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            assert gguf_file == "tiny.gguf"
            return _real(str(folder), **kwargs)  # stands in for transformers' GGUF reader

        monkeypatch.setattr(cls, "from_pretrained", staticmethod(from_tiny))
    target = tmp_path / "converted"
    convert_gguf(ModelSource("gguf", str(tmp_path), "tiny.gguf", gguf_file="tiny.gguf"), target)
    names = sorted(p.name for p in target.iterdir())
    assert any(n.endswith(".safetensors") for n in names), names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))], names
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".converted.")]  # staging renamed away


def _never_called() -> None:
    raise AssertionError("torch.load ran code from a pickle")


class _Payload:
    """An object whose unpickling would call an arbitrary function."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _never_called, ()


def test_torch_load_defaults_to_weights_only(tmp_path: Path) -> None:
    """torch >= 2.6 loads only tensors and plain containers unless told otherwise (transformers' .bin fallback)."""
    import pickle

    import torch

    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    assert (major, minor) >= (2, 6), torch.__version__
    path = tmp_path / "payload.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        torch.load(path)
    torch.save({"weight": torch.ones(2)}, path)
    assert torch.equal(torch.load(path)["weight"], torch.ones(2))


SOURCE_RULES = [
    (re.compile(r"torch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only=True"),
    (re.compile(r"pickle\.loads?\(|import pickle"), "pickle (the cache is safetensors and JSON)"),
    (re.compile(r"torch\.save\("), "torch.save (a pickle)"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "remote code trusted unconditionally"),
    (re.compile(r"(?<![\w.])(eval|exec)\("), "eval/exec"),
    (re.compile(r"shell\s*=\s*True"), "a shell command"),
    (re.compile(r"yaml\.load\("), "yaml.load"),
    (re.compile(r"use_safetensors\s*=\s*False|safe_serialization\s*=\s*False"), "pickle-based weights"),
]


def test_package_source_has_no_unsafe_loading() -> None:
    """A grep-level guard over the package: nothing it reads or writes is a pickle or code."""
    findings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for rule, what in SOURCE_RULES:
                if rule.search(line):
                    findings.append(f"{path.relative_to(PACKAGE)}:{number}: {what}: {line.strip()}")
    assert findings == []


# --- file names from user or model text --------------------------------------------------------------------

def assert_safe(name: str) -> None:
    """``name`` is one non-empty path component that stays inside its folder."""
    assert name and not any(bad in name for bad in UNSAFE), repr(name)
    assert name not in (".", "..")
    root = Path("/baselines")
    assert (root / name).parent == root


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["hub", "gguf", "local"]), location=st.text(max_size=60),
       gguf=st.one_of(st.none(), st.text(max_size=40)))
def test_model_source_slug_is_a_safe_name(kind: str, location: str, gguf: str | None) -> None:
    """(``baselines.model_slug`` has the same property test in tests/test_baselines.py.)"""
    slug = ModelSource(kind, location, "label", gguf_file=gguf).slug  # type: ignore[arg-type]
    assert_safe(slug)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", slug)


@pytest.mark.parametrize(("location", "slug"), [("a..b", "a.b"), ("../../etc/passwd", "passwd"),
                                                 ("org/..", "org--"), ("", "model"), ("..", "model")])
def test_model_source_slug_examples(location: str, slug: str) -> None:
    kind = "hub" if location.startswith("org/") else "local"
    assert ModelSource(kind, location, "label").slug == slug  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+/\\-]{0,20}", fullmatch=True)))
def test_baseline_names_are_accepted_only_when_safe(name: str) -> None:
    try:
        accepted = check_baseline_name(name)
    except QxaiUsageError as exc:
        assert "\n" not in str(exc)
        return
    assert accepted == name
    assert_safe(name)
    assert not name.startswith(("-", ".", "+"))


def param_values(param: Any) -> st.SearchStrategy[Any]:
    """Values of one scheme parameter's type: numbers, choices, or ``keep=`` unit lists."""
    if param.type is bool:
        return st.booleans()
    if param.type is int:
        return st.integers(-(10**6), 10**6)
    if param.type is float:
        return st.floats(-1e6, 1e6, allow_nan=False)
    if param.choices:
        return st.sampled_from(param.choices)
    return st.sampled_from(["0", "3-5", "attn.1", "mlp.0-2", "2,mlp.4"])


spec_values = st.sampled_from(sorted(SCHEMES)).flatmap(
    lambda name: st.fixed_dictionaries({}, optional={
        key: param_values(p) for key, p in SCHEMES[name].params.items()
    }).map(lambda params: (name, params)))


@settings(max_examples=100, deadline=None)
@given(spec_values)
def test_default_baseline_name_of_every_spec_is_safe(value: tuple[str, dict[str, Any]]) -> None:
    """Without ``--qxai-baseline-name`` the spec's slug names the file; it always passes the same check."""
    name, params = value
    text = name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
    spec: QuantSpec = parse_spec(text)
    assert check_baseline_name(spec.slug) == spec.slug


# --- no network while offline ------------------------------------------------------------------------------

def test_offline_hub_id_never_touches_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    for model, revision in (("some-org/some-model", None), ("gpt2", "abc123")):
        with pytest.raises(QxaiUsageError) as info:
            resolve_source(model, revision)
        assert str(info.value) == (f"--qxai-model {model}: not in the local Hugging Face cache and the hub is "
                                   "offline (HF_HUB_OFFLINE)")
    assert attempts == []
