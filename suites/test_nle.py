"""Quality of each model's post-hoc explanation of its own label (e-SNLI, ECQA, your files), FP–quantized agreement."""

from pytest_qxai.methods import nle
from pytest_qxai.testing import suite_test

test_nle = suite_test(nle.NLE_SUITE)
