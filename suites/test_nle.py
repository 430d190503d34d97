"""Quality of each model's post-hoc explanation of its own e-SNLI label, and FP–quantized explanation agreement."""

import pytest

from pytest_qxai.methods import nle


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(nle.run_nle)


@pytest.mark.parametrize("metric", nle.NLE_METRICS, ids=str)
def test_nle(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
