"""Feature attributions on e-SNLI: ERASER comprehensiveness/sufficiency and FP–quantized attribution agreement."""

from pytest_qxai.methods import attribution
from pytest_qxai.testing import suite_test

test_attribution = suite_test(attribution.ATTRIBUTION_SUITE)
