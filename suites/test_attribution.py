"""Feature attributions on labelled texts (e-SNLI, your classification files): ERASER faithfulness and agreement."""

import pytest

from pytest_qxai.methods import attribution


@pytest.fixture(scope="module")
def result(qxai_pair):
    return attribution.run_attribution(qxai_pair)


@pytest.mark.parametrize("metric", attribution.ATTRIBUTION_METRICS, ids=str)
def test_attribution(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
