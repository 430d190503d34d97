"""Feature attributions on e-SNLI: ERASER comprehensiveness/sufficiency and FP–quantized attribution agreement."""

import pytest

from pytest_qxai.methods import attribution


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(attribution.run_attribution)


@pytest.mark.parametrize("metric", attribution.ATTRIBUTION_METRICS, ids=str)
def test_attribution(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
