"""Faithfulness of the explanations: the counterfactual-edit test (unfaithfulness, flip rate) and CC-SHAP."""

import pytest

from pytest_qxai.methods import faithfulness


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(faithfulness.run_nle_faithfulness)


@pytest.mark.parametrize("metric", faithfulness.NLE_FAITHFULNESS_METRICS, ids=str)
def test_nle_faithfulness(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
