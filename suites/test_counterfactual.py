"""Self-generated counterfactual edits on e-SNLI: label flips (self and FP-judged), minimality, similarity, fluency."""

import pytest

from pytest_qxai.methods import counterfactual


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(counterfactual.run_counterfactual)


@pytest.mark.parametrize("metric", counterfactual.COUNTERFACTUAL_METRICS, ids=str)
def test_counterfactual(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
