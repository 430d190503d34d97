"""Feature attributions on labelled texts (e-SNLI, your classification files): ERASER faithfulness and agreement."""

from pytest_qxai.methods import attribution
from pytest_qxai.testing import suite_test

test_attribution = suite_test(attribution.ATTRIBUTION_SUITE)
