"""Load the model pair for several specs on one device and report what each backend does there.

Per spec: load and quantize time, greedy top-1 agreement with the reference on a fixed English text,
whether backward passes reach the inputs, whether the backend's dequantized ``down_proj`` weight
reproduces the quantized layer, and greedy decode time per step at batch 16. Used for the README's
backend table (CPU) and for the GPU runs.

Usage::

    python benchmarks/backends_check.py --specs bnb8,bnb4,gptq4 --device cuda [--model DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

TEXT = (
    "The history of the city goes back more than two thousand years. It was founded on the banks of a "
    "wide river, where traders from the north and the south met to exchange salt, grain and cloth. Over "
    "the centuries it grew into a busy port with a cathedral, a university and a large market square, "
    "and today it is known for its museums, its music and its old bridges."
)


def make_config(model: str | None, spec: str, device: str, dtype: str, cache: Path) -> Any:
    """A :class:`QxaiConfig` for a script (the same fields pytest would resolve)."""
    from pytest_qxai.config import QxaiConfig
    from pytest_qxai.specs import parse_spec

    quant = parse_spec(spec)
    return QxaiConfig(
        model=model, quant=quant, quantized=None, revision=None, device=device, dtype=dtype, profile="standard",
        samples=None, seed=0, batch_size=None, cache_dir=cache, trust_remote_code=False, judge=None, offload=False,
        data={}, baseline_dir=cache / "baselines", baseline_name=quant.slug, update_baselines=None,
        prune_baselines=False, tolerances=(), report_json=None, report_md=None, report_html=None, ci=False,
        rootdir=Path.cwd(), skip_sanity=True,  # random-weight models on the GPU machine: not language models
    )


def check_spec(cfg: Any) -> dict[str, Any]:
    """Build the pair for ``cfg`` and measure it."""
    import torch

    from pytest_qxai.models.pair import get_pair

    started = time.perf_counter()
    pair = get_pair(cfg)
    row: dict[str, Any] = {"spec": str(cfg.quant), "load_s": pair.metadata["load_seconds"],
                           "quantize_s": pair.metadata["quantize_seconds"],
                           "total_s": round(time.perf_counter() - started, 1)}
    ids = pair.tokenizer(TEXT, return_tensors="pt")["input_ids"].to(pair.reference.runtime.device)
    with torch.inference_mode():
        ref = pair.reference.model(input_ids=ids).logits[0].float()
        quant = pair.quantized.model(input_ids=ids.to(pair.quantized.runtime.device)).logits[0].float()
    row["top1_agreement"] = round(float((ref.argmax(-1) == quant.argmax(-1).to(ref.device)).float().mean()), 4)
    row["backward"] = pair.quantized.backward_ok()[1]
    layer = pair.quantized.model.model.layers[0].mlp.down_proj
    weight = pair.backend.dequantized_weight(layer)
    if weight is None:
        row["dequantized_weight"] = "not available"
    else:
        compute = pair.reference.model.dtype  # the activations' dtype; packed weights are often uint8/int32
        x = torch.randn(4, weight.shape[1], device=pair.quantized.runtime.device, dtype=compute)
        with torch.inference_mode():
            expected = layer(x).float()
        rel = float((x.float() @ weight.T.float().to(x.device) - expected).norm() / expected.norm())
        row["dequantized_weight"] = f"relative error {rel:.2e}"
    prompts = [f"Item {i}: {TEXT[:120]}" for i in range(16)]
    pair.quantized.runtime.generate(prompts[:2], max_new_tokens=4, stop=None)  # warm-up
    start = time.perf_counter()
    pair.quantized.runtime.generate(prompts, max_new_tokens=32, stop=None)
    row["decode_ms_per_step_b16"] = round((time.perf_counter() - start) / 32 * 1000, 1)
    if torch.cuda.is_available():
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> int:
    """Run every spec, print one JSON line each, optionally save them all."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="bnb8,bnb4,gptq4,hqq4,quanto-int4")
    parser.add_argument("--model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="qxai-backends-"))
    rows = []
    for spec in args.specs.split(","):
        from pytest_qxai.models import pair as pair_module

        pair_module._PAIRS.clear()
        try:
            row = check_spec(make_config(args.model, spec, args.device, args.dtype, cache))
        except Exception as exc:  # noqa: BLE001 - a failing backend is a result to report, not a crash
            row = {"spec": spec, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

