"""The null pair (the reference and a second copy of it) gives bitwise identical sides on the layer metrics."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_qxai.methods.similarity import cosine
from test_attribution import smollm  # noqa: F401 - shared model fixture
from test_integrity import _config

VECTORS = st.sampled_from([np.float32, np.float64]).flatmap(lambda dtype: arrays(
    dtype, st.integers(1, 64), elements=st.floats(-1e4, 1e4, width=32 if dtype == np.float32 else 64)))


@given(VECTORS)
def test_a_vector_has_cosine_exactly_one_with_itself(vector: np.ndarray) -> None:
    """The null run's agreement metrics are 1 by definition on the reference side: the quantized side's copy must
    give exactly that, not 0.9999999999999999 (a product of two rounded norms)."""
    assert cosine(vector, vector.copy()) == (1.0 if np.any(vector != 0) else 0.0)  # all zeros: 0 by definition


@settings(deadline=None)  # the first call imports scipy.spatial
@given(VECTORS, st.integers(0, 2**32 - 1))
def test_cosine_agrees_with_scipy_and_stays_in_bounds(vector: np.ndarray, seed: int) -> None:
    from scipy.spatial.distance import cosine as scipy_distance

    a = vector.astype(np.float64)
    b = np.random.default_rng(seed).normal(size=a.shape)
    got = float(cosine(a, b))
    assert -1.0 <= got <= 1.0
    if np.linalg.norm(a) > 1e-100:
        assert got == pytest.approx(1.0 - scipy_distance(a, b), abs=1e-12)


def test_cosine_rows_along_an_axis() -> None:
    a = np.array([[[1.0, 0.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, 1.0]]])
    b = np.array([[[0.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [-2.0, -2.0]]])
    np.testing.assert_array_equal(cosine(a, b), [[0.0, 1.0], [0.0, -1.0]])


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["neurons", "probes"])
def test_real_null_pair_gives_identical_sides(smollm: Any, suite: str, tmp_path: Path) -> None:  # noqa: F811
    """Every value of both suites is equal bit for bit on the two sides of SmolLM2 and a copy of it (the copy has
    its own cache identity, so it computes its own activations and importances)."""
    from pytest_qxai.backends.none import NoneBackend
    from pytest_qxai.methods import neurons, probes
    from pytest_qxai.models.pair import ModelPair, ModelSide
    from pytest_qxai.runtime import Runtime
    from pytest_qxai.storage import DiskCache

    twin = Runtime(copy.deepcopy(smollm.model), smollm.tokenizer, batch_size=smollm.batch_size)
    pair = ModelPair(ModelSide("reference", smollm.model, smollm, "smollm2", backward=(True, "ok")),
                     ModelSide("quantized", twin.model, twin, "smollm2-twin", backward=(True, "ok")),
                     smollm.tokenizer, _config(tmp_path, samples=3 if suite == "neurons" else 10),
                     source=None, backend=NoneBackend(), cache=DiskCache(tmp_path / "cache"))  # type: ignore[arg-type]
    result = {"neurons": neurons.run_neurons, "probes": probes.run_probes}[suite](pair)
    assert result.item_ids and set(result.reference) == set(result.quantized)
    gated = {"neurons": "sublayer_profile_cosine", "probes": "worst_layer_cosine"}[suite]  # unequal before
    assert gated in result.reference and not result.skipped.get(gated)
    for name, values in result.reference.items():
        np.testing.assert_array_equal(result.quantized[name], values, err_msg=name)
    for name, profile in result.profiles.items():
        if "cka" not in name:  # CKA by layer is a plotted profile, not a gated value
            np.testing.assert_array_equal(profile["quantized"], profile["reference"], err_msg=name)
