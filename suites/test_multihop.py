"""Latent multi-hop reasoning (Yang et al. 2024): first-hop EntRec tests, CnstScore, second hop, accuracies."""

import pytest

from pytest_qxai.methods import multihop


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(multihop.run_multihop)


@pytest.mark.parametrize("metric", multihop.MULTIHOP_METRICS, ids=str)
def test_multihop(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
