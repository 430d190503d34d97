"""Benchmark the standard suites: per-suite wall and model-call time, tokens, memory, and overhead ratios.

It runs the suites in-process through pytest with the plugin, records every model call the runtime
makes, then replays exactly those calls (same batches, same padded inputs, same generate arguments)
in a bare loop with transformers, and prints

* per suite: wall time, model-call time, tokens scored and generated, tokens per second, peak memory;
* plugin time / bare-loop time (the plugin's overhead over the model calls it needs);
* with ``--second-quant``: a second run with another spec on the same cache, and its time / the first's
  (the reference side comes from the cache).

Usage::

    python benchmarks/bench_suites.py --quant bnb4 --profile standard --second-quant bnb8 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator

import pytest

from pytest_qxai.plugin import suite_name
from recorder import CacheShape, CallRecorder

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SuiteFigures:
    """What one suite (test module) cost."""

    suite: str
    wall_s: float = 0.0
    model_s: float = 0.0
    tokens_scored: int = 0
    tokens_generated: int = 0
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Scored plus generated tokens per second of model time."""
        return (self.tokens_scored + self.tokens_generated) / self.model_s if self.model_s else 0.0


def _peak_rss_mib() -> float:
    """Peak resident memory since the last reset (Linux VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peaks() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


@dataclass
class BenchPlugin:
    """Times each suite module and turns on call recording once the model pair exists."""

    record: bool = True
    """Record every model call for the bare-loop replay (off for models whose inputs are too large to keep)."""
    suites: dict[str, SuiteFigures] = field(default_factory=dict)
    pair: Any = None
    recorders: dict[str, CallRecorder] = field(default_factory=dict)
    """Each side's recorder, attached to its runtime as an observer, by side (``reference``, ``quantized``)."""
    _current: str | None = None
    _started: float = 0.0
    _stats0: tuple[float, int, int] = (0.0, 0, 0)

    def _totals(self) -> tuple[float, int, int]:
        if self.pair is None:
            return 0.0, 0, 0
        sides = [s.runtime.stats for s in self.pair.sides]
        return (sum(s.seconds for s in sides), sum(s.tokens_scored for s in sides),
                sum(s.tokens_generated for s in sides))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Generator[None, Any, None]:
        """Start recording the runtime's calls as soon as ``qxai_pair`` is built."""
        outcome = yield
        if fixturedef.argname == "qxai_pair" and self.pair is None:
            self.pair = outcome.get_result()
            for side in self.pair.sides if self.record else ():
                self.recorders[side.role] = CallRecorder()
                side.runtime.observers.append(self.recorders[side.role])
            self._stats0 = self._totals()  # loading is not suite time

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Close the previous suite and open this item's one when the module changes."""
        suite = suite_name(item)
        if suite != self._current:
            self._close()
            self._current, self._started = suite, time.perf_counter()
            _reset_peaks()
            self._stats0 = self._totals()

    def _close(self) -> None:
        if self._current is None:
            return
        seconds, scored, generated = (a - b for a, b in zip(self._totals(), self._stats0))
        figures = self.suites.setdefault(self._current, SuiteFigures(self._current))
        figures.wall_s += time.perf_counter() - self._started
        figures.model_s += seconds
        figures.tokens_scored += int(scored)
        figures.tokens_generated += int(generated)
        figures.peak_rss_mib = max(figures.peak_rss_mib, _peak_rss_mib())
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                figures.peak_gpu_mib = max(figures.peak_gpu_mib, torch.cuda.max_memory_allocated() / 2**20)

    def pytest_sessionfinish(self) -> None:
        """Close the last suite."""
        self._close()
        self._current = None


def replay(pair: Any, recorders: dict[str, CallRecorder]) -> float:
    """Run every recorded model call again, bare, and return the seconds it took."""
    import torch

    total = 0.0
    for side in pair.sides:
        model, tokenizer = side.runtime.model, side.runtime.tokenizer
        for kind, kwargs in recorders[side.role].calls if side.role in recorders else []:
            inputs = {k: v.build(side.runtime.device) if isinstance(v, CacheShape)
                      else v.to(side.runtime.device) if hasattr(v, "to") else v for k, v in kwargs.items()}
            start = time.perf_counter()
            if kind == "gradient":  # a captum integrated-gradients pass: forward, then backward to the embeddings
                embeds = inputs["inputs_embeds"].requires_grad_(True)
                with torch.enable_grad():
                    torch.autograd.grad(model(**inputs).logits[:, -1].float().sum(), embeds)
            else:
                with torch.no_grad():  # as the plugin's runtime does
                    if kind == "generate":
                        model.generate(**inputs, **({"tokenizer": tokenizer} if "stop_strings" in inputs else {}))
                    else:
                        model(**inputs)
            if side.runtime.device.type == "cuda":
                torch.cuda.synchronize()
            total += time.perf_counter() - start
    return total


def run_once(args: argparse.Namespace, quant: str, cache_dir: Path) -> dict[str, Any]:
    """One pytest run of the suites with ``quant``; returns its figures."""
    plugin = BenchPlugin(record=not args.no_bare)
    report = cache_dir / f"report-{quant}.json"
    argv = [str(ROOT / "suites"), f"--quant={quant}", f"--qxai-profile={args.profile}", "-q", "-p", "no:cacheprovider",
            f"--qxai-cache-dir={cache_dir}", f"--qxai-baseline-dir={cache_dir / 'baselines'}",
            "--qxai-update-baselines=all", f"--qxai-report-json={report}"]
    if args.model:
        argv.append(f"--qxai-model={args.model}")
    if args.device:
        argv.append(f"--qxai-device={args.device}")
    if args.k:
        argv += ["-k", args.k]
    started = time.perf_counter()
    code = pytest.main(argv, plugins=[plugin])
    wall = time.perf_counter() - started
    result: dict[str, Any] = {"quant": quant, "profile": args.profile, "k": args.k, "exit_code": int(code),
                              "wall_s": wall,
                              "suites": [asdict(s) | {"tokens_per_s": s.tokens_per_s} for s in plugin.suites.values()]}
    if plugin.pair is not None:
        load = float(plugin.pair.metadata.get("load_seconds") or 0.0)
        quantize = float(plugin.pair.metadata.get("quantize_seconds") or 0.0)
        # The first suite's setup loads and quantizes the pair; the bare loop starts from loaded models.
        suites_wall = sum(s.wall_s for s in plugin.suites.values()) - load - quantize
        bare = None if args.no_bare else replay(plugin.pair, plugin.recorders)
        meta = plugin.pair.metadata
        result |= {"suites_wall_s": suites_wall, "bare_loop_s": bare,
                   "plugin_over_bare": suites_wall / bare if bare else None,
                   "load_s": load, "quantize_s": quantize,
                   "parameters": plugin.pair.reference.model.num_parameters(),
                   "device": meta.get("device"), "cpu_capability": meta.get("cpu_capability"),
                   "kv_cache": meta.get("kv_cache"), "residency": meta.get("residency"),
                   "peak_gpu_mib": max((s.peak_gpu_mib for s in plugin.suites.values()), default=0.0),
                   "cache_hits": plugin.pair.cache.hits, "cache_misses": plugin.pair.cache.misses}
    return result


def print_run(run: dict[str, Any]) -> None:
    """A plain table of one run."""
    print(f"\n== --quant={run['quant']}: wall {run['wall_s']:.1f} s (exit {run['exit_code']})")
    print(f"{'suite':<22}{'wall s':>9}{'model s':>9}{'scored':>9}{'generated':>10}{'tok/s':>8}{'RSS MiB':>9}{'GPU MiB':>9}")
    for s in run["suites"]:
        print(f"{s['suite']:<22}{s['wall_s']:>9.1f}{s['model_s']:>9.1f}{s['tokens_scored']:>9}"
              f"{s['tokens_generated']:>10}{s['tokens_per_s']:>8.0f}{s['peak_rss_mib']:>9.0f}{s['peak_gpu_mib']:>9.0f}")
    if "suites_wall_s" not in run:
        return
    print(f"{run['parameters'] / 1e9:.2f} B parameters on {run['device']}, KV cache {run['kv_cache']}, "
          f"{run['residency']}; peak GPU {run['peak_gpu_mib']:.0f} MiB; load {run['load_s']} s, quantize {run['quantize_s']} s")
    if run["bare_loop_s"]:
        print(f"suites (less load and quantize) {run['suites_wall_s']:.1f} s vs bare loop over the same calls "
              f"{run['bare_loop_s']:.1f} s: ratio {run['plugin_over_bare']:.2f}")


def main() -> int:
    """Parse arguments, run once or twice, print and optionally save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="bnb4")
    parser.add_argument("--second-quant", help="a second run with this spec on the same (warm) cache")
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--model")
    parser.add_argument("--device")
    parser.add_argument("-k", help="pytest -k expression to select suites")
    parser.add_argument("--cache-dir", type=Path, help="default: a fresh temporary folder (a cold first run)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--no-bare", action="store_true",
                        help="skip the bare-loop replay (and the recording it needs): timings of the suites only")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="qxai-bench-"))
    runs = [run_once(args, args.quant, cache_dir)]
    print_run(runs[0])
    if args.second_quant:
        from pytest_qxai.models import pair as pair_module

        pair_module._PAIRS.clear()  # a new spec: a new pair, as in a separate CI job
        runs.append(run_once(args, args.second_quant, cache_dir))
        print_run(runs[1])
        print(f"\nsecond run ({args.second_quant}) / first run ({args.quant}): "
              f"{runs[1]['wall_s'] / runs[0]['wall_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
