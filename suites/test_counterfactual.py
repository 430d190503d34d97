"""Self-generated counterfactual edits (e-SNLI, ECQA, your classification files): label flips, minimality, fluency."""

from pytest_qxai.methods import counterfactual
from pytest_qxai.testing import suite_test

test_counterfactual = suite_test(counterfactual.COUNTERFACTUAL_SUITE)
