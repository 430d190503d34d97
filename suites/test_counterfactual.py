"""Self-generated counterfactual edits on e-SNLI: label flips (self and FP-judged), minimality, similarity, fluency."""

from pytest_qxai.methods import counterfactual
from pytest_qxai.testing import suite_test

test_counterfactual = suite_test(counterfactual.COUNTERFACTUAL_SUITE)
