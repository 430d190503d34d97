"""Faithfulness of the explanations: the counterfactual-edit test (unfaithfulness, flip rate) and CC-SHAP."""

from pytest_qxai.methods import faithfulness
from pytest_qxai.testing import suite_test

test_nle_faithfulness = suite_test(faithfulness.NLE_FAITHFULNESS_SUITE)
