"""Linear label probes on the residual stream (e-SNLI, your files) and FP-quantized representation similarity."""

import pytest

from pytest_qxai.methods import probes


@pytest.fixture(scope="module")
def result(qxai_pair):
    return probes.run_probes(qxai_pair)


@pytest.mark.parametrize("metric", probes.PROBES_METRICS, ids=str)
def test_probes(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
