"""Neuron-level knowledge attribution (Yu & Ananiadou 2024): top-300 neuron overlap and sublayer profiles."""

import pytest

from pytest_qxai.methods import neurons


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(neurons.run_neurons)


@pytest.mark.parametrize("metric", neurons.NEURONS_METRICS, ids=str)
def test_neurons(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
