"""Latent multi-hop reasoning (Yang et al. 2024): first-hop EntRec tests, CnstScore, second hop, accuracies."""

from pytest_qxai.methods import multihop
from pytest_qxai.testing import suite_test

test_multihop = suite_test(multihop.MULTIHOP_SUITE)
