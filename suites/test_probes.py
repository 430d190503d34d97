"""Linear label probes on the residual stream (e-SNLI, your files) and FP-quantized representation similarity."""

from pytest_qxai.methods import probes
from pytest_qxai.testing import suite_test

test_probes = suite_test(probes.PROBES_SUITE)
