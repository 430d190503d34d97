"""Decode speed on a GPU: the runtime's generation with a dynamic KV cache (eager) vs a static one (compiled).

Builds a decoder with random bf16 weights on the GPU, Llama-3-8B-shaped by default (timings only: the weights
are noise), and generates ``--new`` tokens for ``--batch`` prompts of about ``--prompt`` tokens through
:meth:`Runtime.generate`, once with ``static_cache=False`` and once with ``static_cache=True`` (transformers
compiles the decode step of a static cache on CUDA). A decode step costs ``(T(new) − T(1)) / (new − 1)``: the
one-token run is the prefill, which both share. Prints and optionally writes the figures as JSON:
milliseconds per decode step, the first static call's time (compilation included), peak GPU memory.

Usage::

    python benchmarks/bench_decode.py --tokenizer PATH/TO/TOKENIZER --json decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from random_llama import build_model  # the sibling script (benchmarks/ is on sys.path when run as a script)

from pytest_qxai.models.loading import load_tokenizer
from pytest_qxai.runtime import Runtime


def prompts(tokenizer: Any, batch: int, length: int) -> list[str]:
    """``batch`` texts of about ``length`` tokens each, decoded from seeded random token ids."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, min(len(tokenizer), 40000), (batch, length), generator=generator)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def timed(runtime: Runtime, texts: list[str], new: int) -> float:
    """Seconds for one batched greedy ``generate`` of ``new`` tokens, device work included."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    runtime.generate(texts, max_new_tokens=new, stop=None)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_ms(runtime: Runtime, texts: list[str], new: int, repeats: int) -> dict[str, float]:
    """Median ms per decode step over ``repeats`` runs, and the first run's seconds (compilation, if any)."""
    first = timed(runtime, texts, new)
    prefill = statistics.median(timed(runtime, texts, 1) for _ in range(repeats))
    full = statistics.median(timed(runtime, texts, new) for _ in range(repeats))
    return {"ms_per_step": 1000 * (full - prefill) / (new - 1), "first_call_s": first, "prefill_s": prefill,
            "generate_s": full}


def main() -> None:
    """Measure both cache kinds on one model and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="Folder of any HF tokenizer")
    parser.add_argument("--layers", type=int, default=32, help="Decoder layers (32 = Llama-3-8B)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=128, help="Prompt tokens (about)")
    parser.add_argument("--new", type=int, default=64, help="Generated tokens per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Write the figures here")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.tokenizer, revision=None, trust_remote_code=False)
    started = time.perf_counter()
    model = build_model(args.layers)
    figures: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()), "build_s": time.perf_counter() - started,
        "batch": args.batch, "prompt_tokens": args.prompt, "new_tokens": args.new,
    }
    texts = prompts(tokenizer, args.batch, args.prompt)
    for name, static in (("dynamic_eager", False), ("static_compiled", True)):
        runtime = Runtime(model, tokenizer, batch_size=args.batch, static_cache=static)
        figures[name] = decode_ms(runtime, texts, args.new, args.repeats)
        print(name, {k: round(v, 3) for k, v in figures[name].items()}, flush=True)
    figures["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    figures["speedup"] = figures["dynamic_eager"]["ms_per_step"] / figures["static_compiled"]["ms_per_step"]
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
