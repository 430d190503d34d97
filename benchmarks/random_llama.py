"""A Llama-3-8B-shaped decoder with random bf16 weights, for GPU timings where no real weights can be downloaded.

The weights are noise (seeded): its outputs mean nothing, but every suite runs the same model calls at the same
sizes as on a real 8B model. Built on the GPU when there is one (seconds), and, with ``--out``, saved as a
safetensors checkpoint next to a tokenizer so that ``pytest --qxai-model=DIR`` loads and quantizes it like any
local checkpoint.

Usage::

    python benchmarks/random_llama.py --tokenizer PATH/TO/TOKENIZER --out /tmp/llama8b
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0}
"""Llama-3-8B's shape (8.03 B parameters). Token ids past a smaller tokenizer's vocabulary decode to nothing."""


def build_model(layers: int = 32, **overrides: Any) -> Any:
    """A Llama-3-8B-shaped model (``layers`` decoder layers) with seeded random bf16 weights, on the GPU if any."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": layers, **overrides})
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def main() -> None:
    """Build the model and save it with the tokenizer as a local checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="Folder of any HF tokenizer")
    parser.add_argument("--out", type=Path, required=True, help="Checkpoint folder to write")
    parser.add_argument("--layers", type=int, default=32, help="Decoder layers (32 = Llama-3-8B)")
    parser.add_argument("--hidden", type=int, help="Override hidden size (tiny shapes for a dry run)")
    parser.add_argument("--intermediate", type=int, help="Override FFN width (tiny shapes for a dry run)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    overrides = {k: v for k, v in (("hidden_size", args.hidden), ("intermediate_size", args.intermediate)) if v}
    started = time.perf_counter()
    model = build_model(args.layers, **overrides)
    built = time.perf_counter() - started
    model.save_pretrained(args.out, max_shard_size="5GB")
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(args.out)
    print(f"{model.num_parameters() / 1e9:.2f} B parameters: built in {built:.1f} s, "
          f"saved to {args.out} in {time.perf_counter() - started - built:.1f} s")


if __name__ == "__main__":
    main()
