"""Neuron-level knowledge attribution (Yu & Ananiadou 2024): top-300 neuron overlap and sublayer profiles."""

from pytest_qxai.methods import neurons
from pytest_qxai.testing import suite_test

test_neurons = suite_test(neurons.NEURONS_SUITE)
