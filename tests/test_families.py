"""Every suite runs on a tiny random model of each decoder family people quantize now (``tiny.FAMILIES``).

Both sides are the same model, so every metric that ran must agree between them. The models are random: this is
evidence that each suite's code paths (scoring, generation, captum, hidden states, the probes' architecture map,
gradients) work on the family, not that a metric means anything. Generation lengths and sampling budgets are cut
to keep the test fast; the suites run on the bundled datasets (classification data: tests/test_data.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny import FAMILIES, build_tiny_model, family_config, shorten_suites  # noqa: E402


class _OwnWeights:
    """A stand-in backend whose dequantized weight is the module's own (the quantized side is the reference)."""

    name = "none"

    def dequantized_weight(self, module: Any) -> Any:
        return module.weight


def _family_runtime(tmp_path: Path, family: str) -> Any:
    """A runtime on a random tiny model of ``family`` with the tiny tokenizer, loaded from a saved folder."""
    from pytest_qxai.models.loading import load_reference, load_tokenizer
    from pytest_qxai.runtime import Runtime

    tokenizer = load_tokenizer(build_tiny_model(tmp_path), revision=None, trust_remote_code=False)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    config = family_config(family, len(tokenizer), 64, 192, 2, **ids)  # 384 neurons: more than the top 300
    folder = tmp_path / family
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    model = load_reference(folder, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    return Runtime(model, load_tokenizer(folder, revision=None, trust_remote_code=False), batch_size=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_suite_runs_on_a_tiny_model_of_the_family(
        family: str, tmp_path: Path, make_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_arch import tiny_pair

    from pytest_qxai.methods import (attribution, counterfactual, faithfulness, knowledge, multihop, neurons, nle,
                                     probes, task)

    shorten_suites(monkeypatch)
    # A random model recalls no fact: attribute the first candidates, so the neuron probes run on this family.
    monkeypatch.setattr(neurons, "neuron_items", lambda pair, n: knowledge.recall_items(pair, n))
    runtime = _family_runtime(tmp_path, family)
    pair = tiny_pair(runtime, make_config(samples=2), backend=_OwnWeights())
    suites = [task.run_task_accuracy, attribution.run_attribution, nle.run_nle, faithfulness.run_nle_faithfulness,
              counterfactual.run_counterfactual, probes.run_probes, knowledge.run_knowledge, neurons.run_neurons,
              multihop.run_multihop]
    for run in suites:
        result = run(pair)
        assert result.item_ids, (family, run.__name__, result.skipped)
        for metric, reason in result.skipped.items():
            assert reason.startswith("not applicable: ") or "GPU" in reason or "too few" in reason \
                or "cannot" in reason, (family, run.__name__, metric, reason)
        for metric in result.reference:
            np.testing.assert_allclose(*result.values(metric), atol=1e-4, err_msg=f"{family} {run.__name__} {metric}")


@pytest.mark.parametrize(("arch", "readable"), [("olmo2", False), ("smollm3", False), ("gemma3", True),
                                                ("qwen3", True), ("phi3", True), ("llama", True)])
def test_gguf_architectures_transformers_cannot_read_are_refused_at_start_up(
        tmp_path: Path, arch: str, readable: bool) -> None:
    gguf = pytest.importorskip("gguf")
    from pytest_qxai.errors import QxaiUsageError
    from pytest_qxai.models.source import check_gguf_architecture, resolve_source

    writer = gguf.GGUFWriter(tmp_path / "model.gguf", arch)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    source = resolve_source(str(tmp_path / "model.gguf"))
    if readable:
        check_gguf_architecture(source)
        return
    with pytest.raises(QxaiUsageError) as caught:
        check_gguf_architecture(source)
    assert str(caught.value).startswith(f"--qxai-model model.gguf: transformers {transformers.__version__} cannot "
                                        f"read GGUF architecture '{arch}' (it reads ")
    assert str(caught.value).endswith("); give the model as an HF folder or hub id")
