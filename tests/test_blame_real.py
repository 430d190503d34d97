"""Blame on the real embedded model: a deliberately destroyed layer group is blamed on that group.

The quantized model is SmolLM2 at quanto-int8 (seconds to quantize, close to the reference), with the MLPs of
layers 12-14 replaced by zeroed copies. Blame on the knowledge suite's object log-probability (smoke items)
must propose keeping only sublayers of those layers, and the proposal must recover at least half of the
regression. Slow: about a minute on two CPU cores once the model is converted.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("optimum.quanto")

from pytest_qxai.blame.run import blame_check  # noqa: E402
from pytest_qxai.errors import QxaiUsageError  # noqa: E402
from pytest_qxai.gate.check import check_vs_reference  # noqa: E402
from pytest_qxai.gate.tolerance import parse_tolerance  # noqa: E402
from pytest_qxai.methods.arch import model_parts  # noqa: E402
from pytest_qxai.methods.knowledge import OBJECT_LOGPROB, SUITE, measure_recall, recall_items, recall_values  # noqa: E402
from pytest_qxai.models.pair import get_pair, release_pair  # noqa: E402
from pytest_qxai.models.source import default_source  # noqa: E402
from pytest_qxai.options import default_cache_dir  # noqa: E402
from pytest_qxai.profiles import suite_size  # noqa: E402
from pytest_qxai.specs import parse_keep, parse_spec  # noqa: E402

pytestmark = pytest.mark.slow
DESTROYED = (12, 13, 14)


def test_a_destroyed_layer_group_is_blamed_on_it(make_config: Callable[..., Any]) -> None:
    try:
        default_source()
    except QxaiUsageError as exc:
        pytest.skip(str(exc))
    config = make_config(quant=parse_spec("quanto-int8"), cache_dir=default_cache_dir())
    pair = get_pair(config)
    blocks = [layer.block for layer in model_parts(pair.quantized.model).layers]
    originals = {layer: blocks[layer].mlp for layer in DESTROYED}
    try:
        for layer in DESTROYED:
            zeroed = copy.deepcopy(model_parts(pair.reference.model).layers[layer].block.mlp)
            for parameter in zeroed.parameters():
                parameter.data.zero_()
            blocks[layer].mlp = zeroed
        items = recall_items(pair, suite_size(SUITE, config.profile, config.samples))
        reference = recall_values(pair, pair.reference, items)[OBJECT_LOGPROB.name]
        quantized = measure_recall(pair.quantized.runtime, items)[OBJECT_LOGPROB.name]
        tolerance = parse_tolerance(OBJECT_LOGPROB.tolerance)
        check = check_vs_reference(OBJECT_LOGPROB, tolerance, reference, quantized, [it.id for it in items])
        assert check.verdict == "fail"  # the destruction is a real regression
        blame = blame_check(pair, check, tolerance, target=0.5, verify=False, n_resamples=999)
    finally:
        for layer, module in originals.items():
            blocks[layer].mlp = module
        release_pair(config)
    assert blame.status == "blamed" and blame.proposal_keep is not None, blame.reason
    kept_layers = {layer for layer, _ in parse_keep(blame.proposal_keep)}
    assert kept_layers <= set(DESTROYED)
    assert blame.proposal_share is not None and blame.proposal_share >= 0.5
    assert blame.cost["measurements"] <= 40
