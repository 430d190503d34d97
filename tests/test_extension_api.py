"""The extension API as a third party meets it: an installed backend, the report and metadata hooks, the Runtime
protocol, all through ``pytest_qxai``'s top-level names (docs/extending.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

BACKEND = '''
"""A user backend: every decoder weight rounded to 2**bits levels per output row (a fake quantization)."""
from pytest_qxai import Param, QuantBackend, Scheme, finish, load_float_copy, plain_weight


class RoundingBackend(QuantBackend):
    name = "rounding"
    schemes = (Scheme("round", "rounding", 8, "weights rounded per row", extra="", module="",
                      params={"bits": Param(int, 8, "levels are 2**bits")}),)

    def quantize(self, spec, ctx):
        import torch

        model = load_float_copy(ctx)
        top = 2 ** (int(spec.get("bits")) - 1) - 1
        with torch.no_grad():
            for module in model.model.layers.modules():
                if isinstance(module, torch.nn.Linear):
                    scale = module.weight.abs().amax(dim=1, keepdim=True) / top
                    module.weight.copy_(torch.round(module.weight / scale) * scale)
        return finish(model)

    def dequantized_weight(self, module):
        return plain_weight(module)
'''

CONFTEST = '''
def pytest_qxai_metadata(metadata):
    metadata["release"] = "r1"


def pytest_qxai_report(report):
    report["release_checked"] = report["metadata"]["release"]
'''

SUITE = '''
import numpy as np

from pytest_qxai import Metric, Runtime, register_metric

AGREEMENT = register_metric(Metric("rounding", "top1_agreement", "same next token as the reference", "binary",
                                   bounds=(0.0, 1.0), tolerance="abs:0.5"))
PROMPTS = ["The capital of France is", "A cat sat on the", "Two plus two equals", "The doctor asked the",
           "Water boils at one", "Berlin is the capital of", "The quick brown fox", "If it rains, the ground"]


def test_rounding_keeps_the_next_token(qxai_pair, qxai_check):
    assert qxai_pair.backend.name == "rounding"
    sides = (qxai_pair.reference.runtime, qxai_pair.quantized.runtime)
    assert all(isinstance(runtime, Runtime) for runtime in sides)
    reference, quantized = (runtime.next_token_logprobs(PROMPTS).argmax(axis=1) for runtime in sides)
    qxai_check(AGREEMENT, np.ones(len(PROMPTS)), (reference == quantized).astype(float),
               item_ids=[str(i) for i in range(len(PROMPTS))])
'''


def _install(site: Path, entry: str) -> None:
    """A distribution on ``site`` whose ``pytest_qxai.backends`` entry point is ``entry`` (as pip would leave it)."""
    info = site / "qxai_rounding-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qxai-rounding\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pytest_qxai.backends]\n{entry}\n")
    (site / "qxai_rounding.py").write_text(textwrap.dedent(BACKEND))


def _run(pytester: pytest.Pytester, site: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a fresh process (outside CI), with ``site`` on the path: a model run, an installed backend."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site or ""), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:xdist", *args],
                          cwd=pytester.path, env=env, capture_output=True, text=True, timeout=600)


def test_a_broken_backend_entry_point_is_one_usage_line(pytester: pytest.Pytester, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(site, "rounding = qxai_missing:RoundingBackend")
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = _run(pytester, site, "--quant=none")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: backend entry point rounding = qxai_missing:RoundingBackend does not load: ModuleNotFoundError: "
            "No module named 'qxai_missing'") in result.stderr
    assert "Traceback" not in result.stderr
    assert _run(pytester, site).returncode == 0  # a run that asks for no model never imports third-party backends


def test_a_backend_may_not_take_a_built_in_name_or_scheme() -> None:
    from pytest_qxai import QuantBackend, QxaiUsageError, Scheme, register_backend

    class Impostor(QuantBackend):
        name = "bnb"

    class Thief(QuantBackend):
        name = "thief"
        schemes = (Scheme("bnb4", "thief", 4, "", "", ""),)

    with pytest.raises(QxaiUsageError, match="a built-in backend has this name"):
        register_backend(Impostor)
    with pytest.raises(QxaiUsageError, match="scheme 'bnb4' belongs to backend 'bnb'"):
        register_backend(Thief)


def test_the_runtime_implements_the_protocol_methods_rely_on() -> None:
    """Every member of the protocol exists on the runtime with the same parameters."""
    import inspect

    from pytest_qxai import Runtime as Protocol
    from pytest_qxai.runtime import Runtime

    for name, member in vars(Protocol).items():
        if callable(member) and not name.startswith("_"):
            assert inspect.signature(getattr(Runtime, name)).parameters.keys() == \
                inspect.signature(member).parameters.keys(), name


def test_the_top_level_names_import_without_torch() -> None:
    code = ("import sys, pytest_qxai\n"
            "[getattr(pytest_qxai, n) for n in pytest_qxai.__all__]\n"
            "assert 'torch' not in sys.modules and 'pytest' not in sys.modules, sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "test_stability.py"


def test_the_documented_own_suite_is_the_tested_file() -> None:
    """docs/extending.md shows docs/examples/test_stability.py whole, so the worked example is the one tested."""
    guide = (EXAMPLE.parents[1] / "extending.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```" in guide


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model, built before ``pytester`` snapshots the imported modules (torch must not be re-imported)."""
    pytest.importorskip("torch")
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_a_user_backend_and_a_user_suite_run_through_the_public_api_with_profiles_hooks_and_baselines(
    tiny_model: Path, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """An installed backend (entry point), the documented suite, a check of one's own and both hooks, in one project:
    item counts follow the profile, a recorded baseline gates the next run and stays byte for byte."""
    site = tmp_path / "site"
    _install(site, "rounding = qxai_rounding:RoundingBackend")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_rounding=SUITE, test_stability=EXAMPLE.read_text())
    args = (f"--qxai-model={tiny_model}", "--quant=round:bits=6", "--qxai-device=cpu",
            f"--qxai-cache-dir={tmp_path / 'c'}", "--qxai-skip-sanity", "--qxai-report-json=r.json")

    def report(*more: str) -> dict:
        result = _run(pytester, site, *args, *more)
        assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
        return json.loads((pytester.path / "r.json").read_text())  # type: ignore[no-any-return]

    def checked(document: dict) -> set[tuple[str, str, int]]:
        return {(c["metric"], c["kind"], c["n"]) for c in document["checks"] if c["suite"] == "stability"}

    def expected(items: int, stored: int) -> set[tuple[str, str, int]]:
        """Both metrics on ``items`` items against the reference; ``stored`` against the baseline (0: recording)."""
        return {(m, kind, n) for m in ("same_next_token", "confidence")
                for kind, n in (("vs_reference", items), ("vs_baseline", stored))}

    assert checked(report("--qxai-profile=standard", "--qxai-update-baselines")) == expected(8, 0)
    assert checked(report("--qxai-profile=smoke", "--qxai-update-baselines")) == expected(4, 0)
    baseline = pytester.path / "baselines" / "tiny-llama" / "round_bits_6-smoke.json"  # named like a built-in's
    stored = baseline.read_bytes()
    gated = report("--qxai-profile=smoke")
    assert checked(gated) == expected(4, 4)
    assert baseline.read_bytes() == stored
    assert gated["quant"] == "round:bits=6"
    assert {(c["suite"], c["kind"]) for c in gated["checks"]} >= {("rounding", "vs_reference"),
                                                                  ("rounding", "vs_baseline")}
    assert gated["metadata"]["release"] == "r1" and gated["release_checked"] == "r1"


def test_a_failed_precondition_makes_every_metric_not_applicable_without_running_the_suite() -> None:
    from types import SimpleNamespace

    from pytest_qxai import Metric, Suite

    def run(pair: object) -> None:
        raise AssertionError("the suite ran")

    metric = Metric("tiny_vocab", "m", "", "binary")
    suite = Suite("tiny_vocab", "", (metric,), run, {"smoke": 2, "standard": 2, "full": 2},  # type: ignore[arg-type]
                  preconditions=(lambda pair: None, lambda pair: f"a vocabulary of {len(pair.tokenizer)} tokens"))
    result = suite.result(SimpleNamespace(tokenizer=[0] * 40))  # type: ignore[arg-type]
    assert result.skipped == {"m": "not applicable: a vocabulary of 40 tokens"} and result.item_ids == []


def test_a_suite_declares_every_profile_and_only_its_own_metrics() -> None:
    from pytest_qxai import Metric, QxaiUsageError, Suite, register_suite

    own, other = Metric("mine", "m", "", "binary"), Metric("theirs", "m", "", "binary")
    with pytest.raises(QxaiUsageError, match=r"suite 'mine': give at least 2 items for each profile"):
        register_suite(Suite("mine", "", (own,), print, {"smoke": 2, "standard": 2}))  # type: ignore[arg-type]
    with pytest.raises(QxaiUsageError, match=r"suite 'mine': its metrics must belong to it \(theirs.m\)"):
        register_suite(Suite("mine", "", (own, other), print,  # type: ignore[arg-type]
                             {"smoke": 2, "standard": 2, "full": 2}))
