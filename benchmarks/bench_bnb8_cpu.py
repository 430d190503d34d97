"""LLM.int8 on the CPU: bitsandbytes' own forward against ``bnb_cpu.int8_forward``, in one process, on real prompts.

Loads ``bnb8`` the way a run does (the embedded model, or ``--model``), then in turns, ``--repeats`` times: the
NLE suite's explanation prompts (3-shot e-SNLI, ``--items`` of them, the suites' batch size) generated greedily
(``Runtime.generate_scored``, the whole prompts as the quantized side runs them) with every 8-bit layer on the
library's forward, then on this release's. Prints the median seconds of each, their ratio, and whether every
generated text and every first-step log-probability is identical.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_bnb8_cpu.py --items 32 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from bench_memory import load_model


def main() -> None:
    """Time both forwards in turns and compare what they generate."""
    import bitsandbytes as bnb

    from pytest_qxai.datasets import load_esnli
    from pytest_qxai.methods.nle import NLE_TEMPLATE, explanation_prompt
    from pytest_qxai.runtime import Runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="--qxai-model (default: the embedded model)")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    net, tokenizer = load_model("bnb8", args.model, None)
    layers = [m for m in net.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    fast = {m: vars(m).get("forward") for m in layers}
    print(f"{sum(f is not None for f in fast.values())} of {len(layers)} 8-bit layers reproduce the library")
    prompts = [explanation_prompt(it.premise, it.hypothesis, it.label) for it in load_esnli(args.items, 0)]
    runtime = Runtime(net, tokenizer)
    seconds: dict[str, list[float]] = {"library": [], "bnb_cpu": []}
    outputs = {}
    for _ in range(args.repeats):
        for name in seconds:
            for module in layers:
                vars(module).pop("forward", None)
                if name == "bnb_cpu" and fast[module] is not None:
                    module.forward = fast[module]
            start = time.perf_counter()
            outputs[name] = runtime.generate_scored(prompts, NLE_TEMPLATE["max_new_tokens"])
            seconds[name].append(time.perf_counter() - start)
    (texts_a, rows_a), (texts_b, rows_b) = outputs["library"], outputs["bnb_cpu"]
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{args.items} explanations, {args.repeats} turns: library {median['library']:.1f} s, "
          f"bnb_cpu {median['bnb_cpu']:.1f} s, ratio {median['bnb_cpu'] / median['library']:.2f} "
          f"(every turn: {seconds})")
    print(f"texts identical: {texts_a == texts_b}; first-step log-probabilities identical: "
          f"{bool(np.array_equal(rows_a, rows_b))}")


if __name__ == "__main__":
    main()
