"""The model pair on a tiny model: hub snapshots, the null spec, caching identities, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("torch")

from pytest_qxai.errors import QxaiError  # noqa: E402
from pytest_qxai.models import pair as pair_module  # noqa: E402
from pytest_qxai.models.loading import materialize  # noqa: E402
from pytest_qxai.models.source import ModelSource  # noqa: E402
from pytest_qxai.options import QxaiConfig  # noqa: E402
from pytest_qxai.specs import parse_spec  # noqa: E402
from tiny import build_tiny_model  # noqa: E402


def test_hub_models_are_snapshotted_to_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = build_tiny_model(tmp_path)
    asked: dict[str, Any] = {}

    def fake_snapshot(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> str:
        asked.update(repo_id=repo_id, revision=revision, patterns=allow_patterns)
        return str(tiny)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    folder, content = materialize(ModelSource("hub", "org/tiny", "org/tiny", revision="abc123"), None, tmp_path)
    assert folder == tiny and content.startswith("sha256:")
    assert asked["repo_id"] == "org/tiny" and asked["revision"] == "abc123"
    assert "*.safetensors" in asked["patterns"] and not any(p.endswith(".bin") for p in asked["patterns"])


def test_hub_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> str:
        raise OSError("We couldn't connect to the hub.\nCheck your connection.")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(QxaiError) as info:
        materialize(ModelSource("hub", "org/tiny", "org/tiny"), None, tmp_path)
    assert str(info.value) == "--qxai-model org/tiny: cannot download from the hub: We couldn't connect to the hub."


def test_null_spec_pair_shares_the_reference_identity(make_config: Callable[..., QxaiConfig], tmp_path: Path) -> None:
    tiny = build_tiny_model(tmp_path)
    cfg = make_config(model=str(tiny), quant=parse_spec("none"), cache_dir=tmp_path / "cache", baseline_name="none",
                      skip_sanity=True)  # a random tiny model is no language model
    pair = pair_module.get_pair(cfg)
    assert pair_module.get_pair(cfg) is pair  # loaded at most once per process
    assert pair.quantized.model is not pair.reference.model
    assert pair.quantized.identity == pair.reference.identity  # the null check reuses reference results
    assert pair.metadata["model_id"] == "tiny-llama" and pair.metadata["model_hash"].startswith("sha256:")
    assert pair.metadata["residency"] == "both models on cpu"
    assert pair.metadata["sanity"] == "skipped (--qxai-skip-sanity)"
    calls: list[int] = []
    first = pair.cached(pair.reference, "demo", {"n": 1}, lambda: calls.append(1) or 42)
    again = pair.cached(pair.quantized, "demo", {"n": 1}, lambda: calls.append(1) or 43)
    assert first == again == 42 and calls == [1]


def _anonymous_rss() -> int:
    """This process's resident anonymous memory (heap and other unnamed pages), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads resident memory from Linux's /proc")
def test_a_computation_hands_the_heap_it_freed_back(make_config: Callable[..., QxaiConfig], tmp_path: Path) -> None:
    """Memory a measurement freed goes back to the system when it returns, not kept for the rest of the run.

    The measurement leaves 100 MB of freed heap below one small survivor, which the C allocator cannot give back
    by itself (each suite's tensors fragment the heap this way: docs/measurements.md, "Memory").
    """
    tiny = build_tiny_model(tmp_path)
    cfg = make_config(model=str(tiny), quant=parse_spec("none"), cache_dir=tmp_path / "cache", baseline_name="none",
                      skip_sanity=True)
    pair = pair_module.get_pair(cfg)
    survivors: list[bytes] = []

    def measure() -> int:
        chunks = [bytes(2048) + bytes([i % 256]) for i in range(50_000)]  # 100 MB in the C heap
        survivors.append(bytes(2048) + b"!")  # allocated after them: the heap's top cannot shrink past it
        return len(chunks)

    before = _anonymous_rss()
    assert pair.cached(pair.reference, "heap", {"n": 50_000}, measure) == 50_000
    assert _anonymous_rss() - before < 30 * 2**20


FREED_BLOCK = """
import numpy as np
from pytest_qxai.models.loading import MMAP_THRESHOLD, return_large_blocks

def anonymous() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("RssAnon:"))

return_large_blocks()
for _ in range(3):  # freeing 30 MiB blocks raises glibc's own threshold past 24 MiB
    np.ones(30 * 2**20 // 8).sum()
block = np.ones(24 * 2**20 // 8)
assert block.nbytes >= MMAP_THRESHOLD
holding = anonymous()
del block
print(holding - anonymous())
"""
"""A fresh process: in a long one, an earlier test's free heap could serve the block whatever the threshold."""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads resident memory from Linux's /proc")
def test_a_freed_activation_goes_back_to_the_system_at_once() -> None:
    """Blocks of 8 MiB or more (a pass's activations) get mappings of their own once a pair loads, so freeing one
    returns its memory: glibc would otherwise keep them in its heap once it has freed a few large blocks."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", FREED_BLOCK], capture_output=True, text=True, env=env, check=True)
    assert int(done.stdout) > 20 * 2**20


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's mappings from Linux's /proc")
def test_a_quantized_model_lets_go_of_the_weights_file_its_few_unquantized_layers_were_read_from(
        tmp_path: Path) -> None:
    """Layers left unquantized are copied out of the reference's weights file, so its mapping (every page that
    quantization read) is released; a model that is all views of its file keeps them. Outputs do not change."""
    import gc

    import torch

    from pytest_qxai.models.loading import load_reference, own_file_backed_tensors

    tiny = build_tiny_model(tmp_path)
    weights = str((tiny / "model.safetensors").resolve())

    def mapped() -> bool:
        return weights in Path("/proc/self/maps").read_text()

    model = load_reference(tiny, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    ids = torch.tensor([[1, 5, 9, 4, 7]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert mapped() and own_file_backed_tensors(model) == 0 and mapped()  # all views: copying would double them
        for name, parameter in model.named_parameters():
            if "norm" not in name:  # "quantized": new memory, as a backend's packed weights
                parameter.data = parameter.data.clone()
        norms = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "norm" in name)
        assert own_file_backed_tensors(model) == norms
        gc.collect()
        assert not mapped()
        assert torch.equal(model(input_ids=ids).logits, before)


def test_quantized_checkpoint_made_by_the_project_loads_as_the_pair(
    make_config: Callable[..., QxaiConfig], tmp_path: Path
) -> None:
    """``--qxai-quantized`` on a GPTQ checkpoint the GPTQ adapter wrote: scheme read from its config."""
    import torch

    tiny = build_tiny_model(tmp_path)
    cache = tmp_path / "cache"
    spec = parse_spec("gptq4:group_size=32,calibration=4")
    made = pair_module.get_pair(make_config(model=str(tiny), quant=spec, cache_dir=cache, baseline_name="gptq4",
                                            skip_sanity=True))
    checkpoint = next((cache / "quantized").glob("gptq4*/checkpoint"))
    loaded = pair_module.get_pair(make_config(model=str(tiny), quantized=str(checkpoint), cache_dir=cache,
                                              skip_sanity=True))
    assert loaded.metadata["quant"] == "gptq4" and loaded.metadata["quantized_checkpoint"] == str(checkpoint)
    ids = loaded.tokenizer("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = made.quantized.model(ids).logits.argmax(-1)
        assert torch.equal(loaded.quantized.model(ids).logits.argmax(-1), expected)


@pytest.mark.parametrize("text, shares", [("hqq4", True), ("bnb8", False)])
def test_the_quantized_side_shares_prompt_prefixes_only_where_its_kernels_keep_tokens_apart(
    make_config: Callable[..., QxaiConfig], tmp_path: Path, text: str, shares: bool
) -> None:
    """A weight-only spec runs the prefix its prompts share once, with the values of whole prompts; LLM.int8 never."""
    import numpy as np

    from pytest_qxai.runtime import Runtime
    from tests.tiny import backend_or_skip

    backend_or_skip(text)
    tiny = build_tiny_model(tmp_path)
    pair = pair_module.get_pair(make_config(model=str(tiny), quant=parse_spec(text), cache_dir=tmp_path / "cache",
                                            baseline_name=text, skip_sanity=True))
    runtime = pair.quantized.runtime
    assert runtime.share_prefix is shares
    assert pair.metadata["quantized_prefix"].startswith("shared" if shares else "whole prompts")
    prompts = ["The capital of France is Paris and", "The capital of France is", "The capital of Germany"]
    whole = Runtime(runtime.model, runtime.tokenizer, batch_size=2, share_prefix=False)
    np.testing.assert_allclose(runtime.next_token_logprobs(prompts), whole.next_token_logprobs(prompts), atol=1e-4)
    assert runtime.generate(prompts, max_new_tokens=6, stop=None) == whole.generate(prompts, max_new_tokens=6,
                                                                                      stop=None)


def test_xdist_workers_share_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """N workers each get 1/N of the CPUs for torch's threads, so they do not oversubscribe the machine."""
    import os

    import torch

    from pytest_qxai.models.loading import share_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        assert share_cpu_threads() == max(1, len(os.sched_getaffinity(0)) // 2)
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's explicit choice wins
        assert share_cpu_threads() == before
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert share_cpu_threads() == before  # one process: torch's default is kept
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("device", "worker", "gpus", "expected"), [
    ("cuda", "gw0", 4, "cuda:0"), ("cuda", "gw5", 4, "cuda:1"), ("cuda", "gw1", 1, "cuda"),
    ("cuda", None, 4, "cuda"), ("cuda:3", "gw0", 4, "cuda:3"), ("cpu", "gw1", 4, "cpu"), ("cuda", "master", 2, "cuda"),
])
def test_each_xdist_worker_takes_its_own_gpu(device: str, worker: str | None, gpus: int, expected: str) -> None:
    from pytest_qxai.models.loading import worker_gpu

    assert worker_gpu(device, worker, gpus) == expected
