"""Quality of each model's post-hoc explanation of its own label (e-SNLI, ECQA, your files), FP–quantized agreement."""

import pytest

from pytest_qxai.methods import nle


@pytest.fixture(scope="module")
def result(qxai_pair):
    return nle.run_nle(qxai_pair)


@pytest.mark.parametrize("metric", nle.NLE_METRICS, ids=str)
def test_nle(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
