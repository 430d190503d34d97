"""Faithfulness of the explanations: the counterfactual-edit test (unfaithfulness, flip rate) and CC-SHAP."""

import pytest

from pytest_qxai.methods import faithfulness


@pytest.fixture(scope="module")
def result(qxai_pair):
    return faithfulness.run_nle_faithfulness(qxai_pair)


@pytest.mark.parametrize("metric", faithfulness.NLE_FAITHFULNESS_METRICS, ids=str)
def test_nle_faithfulness(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
