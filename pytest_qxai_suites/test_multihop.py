"""Latent multi-hop reasoning (Yang et al. 2024): first-hop EntRec tests, CnstScore, second hop, accuracies."""

import pytest

from pytest_qxai.methods import multihop


@pytest.fixture(scope="module")
def result(qxai_pair):
    return multihop.run_multihop(qxai_pair)


@pytest.mark.parametrize("metric", multihop.MULTIHOP_METRICS, ids=str)
def test_multihop(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
