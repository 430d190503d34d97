"""Monte-Carlo validation of sequential item budgets (``--qxai-budget``): false-fail and false-pass rates under
the stopping rule, and the items a check uses, for the scenarios of ``gate_simulation.py``.

The tests (tests/test_sequential.py) run a small seeded grid; docs/sequential.md reports the larger one::

    python benchmarks/sequential_simulation.py --reps 1000

Each replicate draws ``budget`` items once and looks at nested prefixes of them, as a suite does.
"""

from __future__ import annotations

import argparse

import numpy as np

from gate_simulation import ALPHA, BINARY, CONTINUOUS, Scenario
from pytest_qxai.gate.check import CheckResult, check_vs_reference
from pytest_qxai.gate.sequential import plan, run_looks
from pytest_qxai.gate.tolerance import parse_tolerance
from pytest_qxai.metrics import Metric


def sequential_outcomes(scenario: Scenario, budget: int, degradation: float, reps: int, seed: int = 0,
                        resamples: int = 199, family: int = 1, naive: bool = False,
                        head: int | None = None) -> tuple[list[str], np.ndarray]:
    """Per replicate: the check's verdict when it stopped, and the items it used. ``naive`` tests every look at
    the full alpha (the fixed-n rule applied at each look: what optional stopping must not do); ``head`` adds an
    earlier first look of that many items (a time budget's)."""
    metric = Metric("sim", scenario.kind, "", scenario.kind, bounds=(0.0, 1.0) if scenario.kind == "binary" else
                    (None, None), tolerance=f"abs:{scenario.band}")
    tolerance = parse_tolerance(metric.tolerance)
    looks = plan(budget, head=head)
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(budget)]
    verdicts, used = [], np.empty(reps, dtype=int)
    for rep in range(reps):
        reference, quantized = scenario.sample(rng, budget, degradation)

        def evaluate(n: int, fractions: tuple[float, float], reference: np.ndarray = reference,
                     quantized: np.ndarray = quantized, rep: int = rep) -> list[CheckResult]:
            return [check_vs_reference(metric, tolerance, reference[:n], quantized[:n], ids[:n], seed=rep,
                                       n_resamples=resamples, family=family,
                                       fractions=None if naive else fractions)]

        (check,) = run_looks(looks, evaluate, family)
        verdicts.append(check.verdict)
        used[rep] = check.notes["sequential"]["items"]
    return verdicts, used


def main() -> None:
    """Print the tables docs/sequential.md shows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=300)
    args = parser.parse_args()
    print(f"budget {args.budget}, alpha {ALPHA}, {args.reps} runs per cell: false fail at D = b, false pass at "
          "D = 1.1 b; mean items used at D = 0 and D = 4 b (binary: at most the discordant share)\n")
    print("| scenario | false fail | false pass | false fail, fixed-n rule at every look | items at D = 0 (share "
          "passed) | items at D = 4b (share failed) |\n|---|---|---|---|---|---|")
    for scenario in BINARY + CONTINUOUS:
        b = scenario.band
        at_band, _ = sequential_outcomes(scenario, args.budget, b, args.reps, seed=1)
        beyond, _ = sequential_outcomes(scenario, args.budget, 1.1 * b, args.reps, seed=2)
        naive, _ = sequential_outcomes(scenario, args.budget, b, args.reps, seed=1, naive=True)
        zero, used0 = sequential_outcomes(scenario, args.budget, 0.0, args.reps // 4, seed=3)
        passed = [v in ('pass', 'improved') for v in zero]
        far_d = min(4 * b, scenario.discordance) if scenario.kind == "binary" else 4 * b  # within the discordance
        far, used4 = sequential_outcomes(scenario, args.budget, far_d, args.reps // 4, seed=4)
        print(f"| {scenario.label} | {np.mean([v == 'fail' for v in at_band]):.3f} | "
              f"{np.mean([v in ('pass', 'improved') for v in beyond]):.3f} | "
              f"{np.mean([v == 'fail' for v in naive]):.3f} | "
              f"{used0.mean():.0f} ({np.mean(passed):.2f}) | "
              f"{used4.mean():.0f} ({np.mean([v == 'fail' for v in far]):.2f}) |")


if __name__ == "__main__":
    main()
