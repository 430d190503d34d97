"""Self-generated counterfactual edits (e-SNLI, ECQA, your classification files): label flips, minimality, fluency."""

import pytest

from pytest_qxai.methods import counterfactual


@pytest.fixture(scope="module")
def result(qxai_pair):
    return counterfactual.run_counterfactual(qxai_pair)


@pytest.mark.parametrize("metric", counterfactual.COUNTERFACTUAL_METRICS, ids=str)
def test_counterfactual(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
