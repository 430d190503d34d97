"""Linear NLI probes on the residual stream (transfer and retrained) and FP-quantized representation similarity."""

import pytest

from pytest_qxai.methods import probes


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(probes.run_probes)


@pytest.mark.parametrize("metric", probes.PROBES_METRICS, ids=str)
def test_probes(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
