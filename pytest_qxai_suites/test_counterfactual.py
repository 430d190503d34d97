"""Self-generated counterfactual edits on e-SNLI: label flips (self and FP-judged), minimality, similarity, fluency."""

import pytest

from pytest_qxai.methods import counterfactual


@pytest.fixture(scope="module")
def result(qxai_pair):
    return counterfactual.run_counterfactual(qxai_pair)


@pytest.mark.parametrize("metric", counterfactual.COUNTERFACTUAL_METRICS, ids=str)
def test_counterfactual(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
