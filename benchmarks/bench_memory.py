"""Peak resident memory of one batched forward pass on the CPU, per spec: where a run's memory peak comes from.

Each spec is measured in a process of its own, since a process's peak (``VmHWM``) cannot be reset. The process
loads the model the way a run does (the embedded model, or ``--model``; quantized through the plugin's backend),
runs one short warm-up pass, reads ``VmRSS``, then runs one pass of ``--batch`` random prompts of ``--tokens``
tokens with the key/value cache kept (what generation's prefill does) and prints the peak's rise above that
``VmRSS``, with the pass's seconds. ``none`` is the full-precision reference.

Usage::

    python benchmarks/bench_memory.py --quant none bnb8 --batch 16 --tokens 221 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _status_mib() -> dict[str, int]:
    """This process's VmRSS and VmHWM in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1]) // 1024
    return fields


def load_model(quant: str, model: str | None, cache: Path | None) -> tuple[Any, Any]:
    """The model (``none``: the reference) and its tokenizer on the CPU, loaded and quantized as a run does."""
    import torch

    from pytest_qxai.backends.base import QuantContext, get_backend
    from pytest_qxai.models.loading import load_reference, load_tokenizer, materialize, scratch_dir
    from pytest_qxai.models.source import resolve_source
    from pytest_qxai.specs import parse_spec

    location, _ = materialize(resolve_source(model), cache, scratch_dir("qxai-bench-"))
    tokenizer = load_tokenizer(location, revision=None, trust_remote_code=False)
    if quant == "none":
        return load_reference(location, device="cpu", dtype=torch.float32, revision=None,
                              trust_remote_code=False), tokenizer
    spec = parse_spec(quant)
    ctx = QuantContext(reference_dir=location, device="cpu", dtype=torch.float32, tokenizer=tokenizer,
                       calibration=[], seed=0, trust_remote_code=False, cache_dir=None)
    return get_backend(spec.scheme.backend).quantize(spec, ctx), tokenizer


def measure(quant: str, model: str | None, batch: int, tokens: int, cache: Path | None) -> dict[str, Any]:
    """Load ``quant`` (``none``: the reference), run one pass of ``batch`` x ``tokens`` tokens, return its memory."""
    import torch

    net, _ = load_model(quant, model, cache)
    ids = torch.randint(100, 40_000, (batch, tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net(input_ids=ids[:, :8], logits_to_keep=1)
        before = _status_mib()
        start = time.perf_counter()
        net(input_ids=ids, logits_to_keep=1, use_cache=True)
        seconds = time.perf_counter() - start
    after = _status_mib()
    return {"quant": quant, "batch": batch, "tokens": tokens, "rss_before_mib": before["VmRSS"],
            "peak_mib": after["VmHWM"], "rise_mib": after["VmHWM"] - before["VmRSS"], "seconds": round(seconds, 2)}


def main() -> None:
    """Measure each spec in a child process and print (and optionally save) one line per spec."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quant", nargs="+", default=["none", "bnb8"], help="specs to measure (none: reference)")
    parser.add_argument("--model", default=None, help="--qxai-model (default: the embedded model)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=221, help="tokens per prompt (221: the NLE prompts)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where a GGUF model's conversion is kept")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.quant[0], args.model, args.batch, args.tokens, args.cache_dir)))
        return
    rows = []
    for quant in args.quant:
        command = [sys.executable, __file__, "--child", "--quant", quant, "--batch", str(args.batch),
                   "--tokens", str(args.tokens)]
        command += ["--model", args.model] if args.model else []
        command += ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(f"{quant:>10}: {args.batch} x {args.tokens} tokens, peak +{row['rise_mib']} MiB above "
              f"{row['rss_before_mib']} MiB resident ({row['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
