"""The real gate on the embedded SmolLM2-135M model, through pytest as a user runs it (slow).

Each case runs the knowledge suite (the cheapest: one greedy answer and one scoring pass per fact) on 12 facts
in a fresh pytest process, with one ``--quant`` spec: ``none`` must fail nothing (12 identical differences
cannot show a difference within the band: the rule's bound for identical differences needs hundreds of items
here, so it is inconclusive, not a pass), a 2-bit spec must fail, every other spec the plugin offers must run
the suite to a verdict (never an error), and in every case the two sides of the pair must be two models that
share no weight. Calibrated schemes run on fewer calibration texts than their
default (the code path is the same; only the search data is smaller), to keep the file within CI's budget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_qxai.specs import SCHEMES
from tests.tiny import backend_or_skip

pytestmark = pytest.mark.slow

SUITE = (Path(__file__).parents[1] / "suites" / "test_knowledge.py").read_text()
TWO_MODELS = '''

def test_the_two_sides_are_two_models(qxai_pair):
    reference, quantized = (side.model for side in qxai_pair.sides)
    assert reference is not quantized
    shared = {p.data_ptr() for p in reference.parameters()} & {p.data_ptr() for p in quantized.parameters()}
    assert not shared, f"{len(shared)} weight tensors are shared between the two sides"
'''
REPRESENTATIVE = ("none", "bnb4", "hqq2", "quanto-int2", "torchao-int8", "gguf-q4_0", "ct-w4a16")
"""One scheme per backend, the two 2-bit ones among them: what CI runs (about 40 s of CPU per scheme on two
cores). ``QXAI_ALL_SPECS=1`` runs every scheme (GPTQ alone took 417 s to quantize there)."""
SPEC_TEXT = {"gptq4": "gptq4:calibration=4", "gptq8": "gptq8:calibration=4", "awq4": "awq4:calibration=2",
             "ct-w4a16": "ct-w4a16:group_size=64"}  # SmolLM2's 576-wide layers take groups of 64, not the default 128
FAILS = {"none": False, "hqq2": True, "quanto-int2": True}
"""Whether the run fails, where that is known in advance: the null check never does, 2-bit weights lose the facts."""


def run_knowledge(pytester: pytest.Pytester, spec: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    """The knowledge suite (12 facts) plus the two-models test in a fresh process; its result and JSON report."""
    pytester.makepyfile(test_knowledge=SUITE + TWO_MODELS)
    result = pytester.runpytest_subprocess(
        f"--quant={spec}", "--qxai-samples=12", "--qxai-device=cpu", "--qxai-update-baselines",
        "--qxai-report-json=report.json", "-p", "no:cacheprovider", "-rs")
    path = pytester.path / "report.json"
    return result, json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_spec_runs_a_suite_end_to_end(pytester: pytest.Pytester, scheme: str) -> None:
    """Every scheme runs all three knowledge checks on two distinct models; none fails nothing, 2-bit fails."""
    if not SCHEMES[scheme].cpu:
        pytest.skip(f"{scheme} needs a CUDA GPU; this test runs on the CPU")
    if scheme not in REPRESENTATIVE and not os.environ.get("QXAI_ALL_SPECS"):
        pytest.skip(f"{scheme}: its backend runs here as one of {', '.join(REPRESENTATIVE)}; QXAI_ALL_SPECS=1 runs it")
    backend_or_skip(scheme)
    result, report = run_knowledge(pytester, SPEC_TEXT.get(scheme, scheme))
    summary = report.get("summary", {})
    assert summary.get("verdict") not in (None, "error"), result.stdout.str()[-3000:]
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes and outcomes.get("passed", 0) >= 1, outcomes  # the two-models test passed
    decided = [c for c in report["checks"] if c["kind"] == "vs_reference" and c["verdict"] != "skipped"]
    assert {c["metric"] for c in decided} == {"recall_accuracy", "object_logprob", "object_log_rank"}
    if scheme in FAILS:
        assert (summary["verdict"] == "fail") is FAILS[scheme], result.stdout.str()[-3000:]
        assert result.ret == (pytest.ExitCode.TESTS_FAILED if FAILS[scheme] else pytest.ExitCode.OK)
    if scheme == "none":  # the reference model on both sides: equal on every item, so it passes by identity
        assert [c["verdict"] for c in decided] == ["pass"] * 3 and summary["verdict"] == "pass", decided
