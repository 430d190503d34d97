"""Monte-Carlo validation of the gate's decision rule: false-fail and false-pass rates at the band, the
family-wise false-fail rate of a whole run under Holm, and power at twice the band per profile.

The tests (tests/test_gate_validity.py) run a small seeded grid; docs/gate.md reports the larger one::

    python benchmarks/gate_simulation.py --reps 1000
    python benchmarks/gate_simulation.py --reps 300 --compare-methods

Every scenario is a metric where higher is better with degradation D (quantized worse by D on average).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pytest_qxai.gate.stats import margin_test
from pytest_qxai.config import PROFILES
from pytest_qxai.methods import standard_suites

ALPHA = 0.05
BINARY_BAND = 0.03
CONTINUOUS_BAND = 0.05
CONTINUOUS_SD = 0.2


def _standard(draw: Callable[[np.random.Generator, int], np.ndarray], mean: float, sd: float
              ) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: (draw(rng, n) - mean) / sd


SHAPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "skewed right (exponential)": _standard(lambda rng, n: rng.exponential(1.0, n), 1.0, 1.0),
    "skewed left (exponential)": _standard(lambda rng, n: -rng.exponential(1.0, n), -1.0, 1.0),
    "heavy tails (t, 3 df)": _standard(lambda rng, n: rng.standard_t(3, n), 0.0, math.sqrt(3.0)),
    "70% unchanged, skewed rest": _standard(
        lambda rng, n: np.where(rng.random(n) < 0.7, 0.0, rng.exponential(1.0, n)), 0.3, math.sqrt(0.51)),
}
"""Standardized shapes (mean 0, sd 1) of the per-item differences of a continuous metric."""


@dataclass(frozen=True)
class Scenario:
    """A metric's per-item behaviour: binary with a discordant share, or continuous with a difference shape."""

    kind: str
    shape: str = "normal"
    discordance: float = 0.1

    @property
    def band(self) -> float:
        """The band the scenario is tested against."""
        return BINARY_BAND if self.kind == "binary" else CONTINUOUS_BAND

    @property
    def label(self) -> str:
        """A short name for tables."""
        return f"binary, {self.discordance:.0%} discordant" if self.kind == "binary" else self.shape

    def sample(self, rng: np.random.Generator, n: int, degradation: float) -> tuple[np.ndarray, np.ndarray]:
        """Reference and quantized per-item values with true degradation ``degradation``."""
        if self.kind == "binary":
            lost, gained = (self.discordance + degradation) / 2, (self.discordance - degradation) / 2
            cell = rng.choice(3, size=n, p=[lost, gained, 1 - lost - gained])
            reference = np.where(cell == 1, 0.0, 1.0)
            quantized = np.where(cell == 0, 0.0, 1.0)
            return reference, quantized
        return np.zeros(n), -(degradation + CONTINUOUS_SD * SHAPES[self.shape](rng, n))


BINARY = [Scenario("binary", discordance=d) for d in (0.05, 0.1, 0.3, 0.6)]
CONTINUOUS = [Scenario("continuous", shape=s) for s in SHAPES]


def outcomes(scenario: Scenario, n: int, degradation: float, reps: int, seed: int = 0, resamples: int = 499,
             alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate: the fail test's p-value and whether non-inferiority was shown (upper bound of D < b)."""
    rng = np.random.default_rng(seed)
    p_fail, passed = np.empty(reps), np.empty(reps, dtype=bool)
    for rep in range(reps):
        reference, quantized = scenario.sample(rng, n, degradation)
        test = margin_test(reference, quantized, scenario.kind, n_resamples=resamples, seed=rep, span=(-1.0, 1.0))
        p_fail[rep] = test.p_below(-scenario.band)
        passed[rep] = test.p_above(-scenario.band) < alpha  # the lower bound of delta lies above -b
    return p_fail, passed


def familywise(reps: int, checks: int = 47, n: int = 100, method: str = "holm", seed: int = 0,
               resamples: int = 199) -> float:
    """Share of simulated runs of ``checks`` checks, every true D at its band, in which any check fails."""
    from statsmodels.stats.multitest import multipletests

    scenarios = [(BINARY + CONTINUOUS)[i % (len(BINARY) + len(CONTINUOUS))] for i in range(checks)]
    rng = np.random.default_rng(seed)
    any_fail = 0
    for rep in range(reps):
        p = []
        for scenario in scenarios:
            reference, quantized = scenario.sample(rng, n, scenario.band)
            test = margin_test(reference, quantized, scenario.kind, n_resamples=resamples, seed=rep,
                               span=(-1.0, 1.0))
            p.append(test.p_below(-scenario.band))
        adjusted = p if method == "none" else multipletests(p, method={"holm": "holm", "bh": "fdr_bh"}[method])[1]
        any_fail += bool(np.min(adjusted) < ALPHA)
    return any_fail / reps


def mc_limit(rate: float, reps: int, z: float = 3.0) -> float:
    """``rate`` plus z Monte-Carlo standard errors: the most a simulated rate may show when the truth is ``rate``."""
    return rate + z * math.sqrt(rate * (1 - rate) / reps)


def _table(reps: int) -> None:
    """Print the markdown tables that docs/gate.md shows."""
    ns = (10, 30, 100, 300)
    print(f"False-fail rate at D = b (one check, alpha {ALPHA}, {reps} runs per cell)\n")
    print("| scenario | " + " | ".join(f"n={n}" for n in ns) + " |\n|---|" + "---|" * len(ns))
    for scenario in BINARY + CONTINUOUS:
        cells = [np.mean(outcomes(scenario, n, scenario.band, reps)[0] < ALPHA) for n in ns]
        print(f"| {scenario.label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print(f"\nFalse-pass rate at D = 1.1 b\n\n| scenario | " + " | ".join(f"n={n}" for n in ns)
          + " |\n|---|" + "---|" * len(ns))
    for scenario in BINARY + CONTINUOUS:
        cells = [np.mean(outcomes(scenario, n, 1.1 * scenario.band, reps)[1]) for n in ns]
        print(f"| {scenario.label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print("\nFamily-wise false-fail rate, 47 checks at their bands, n = 100:",
          {m: familywise(max(100, reps // 10), method=m) for m in ("holm", "none")})
    print("\nPower at D = 2b, one check (and under Bonferroni over 94 planned decisions)\n")
    profiles = list(PROFILES)
    print("| suite | " + " | ".join(profiles) + " |\n|---|" + "---|" * len(profiles))
    for suite, budget in [(s, b) for s in standard_suites() for b in (None, *s.budgets)]:
        cells = []
        for profile in profiles:
            n = suite.size(profile, budget=budget)
            scenario = Scenario("binary", discordance=0.1)
            p = outcomes(scenario, n, 2 * scenario.band, reps // 4)[0]
            cells.append(f"n={n}: {np.mean(p < ALPHA):.2f} ({np.mean(p < ALPHA / 94):.2f})")
        print(f"| {budget or suite.name} | " + " | ".join(cells) + " |")


def compare_methods(reps: int) -> None:
    """False-fail rates at D = b of BCa, Student's t, the bootstrap-t alone and the gate's combination."""
    import warnings

    from scipy import stats

    shapes = {**SHAPES, "skewed left (lognormal, sigma 1)": _standard(
        lambda rng, n: -rng.lognormal(0.0, 1.0, n), -math.exp(0.5), math.sqrt((math.e - 1) * math.e))}
    print(f"False-fail rate at D = b by method ({reps} runs per cell): BCa / t / bootstrap-t / gate\n")
    for shape, draw in shapes.items():
        for n in (10, 30, 100):
            hits = np.zeros(4)
            for rep in range(reps):
                rng = np.random.default_rng(rep)
                diff = -(CONTINUOUS_BAND + CONTINUOUS_SD * draw(rng, n))  # delta; fail when delta < -b is shown
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    bca = stats.bootstrap((diff,), np.mean, confidence_level=1 - 2 * ALPHA, n_resamples=499,
                                          method="BCa", rng=rng).confidence_interval.high
                gate = margin_test(np.zeros(n), diff, "continuous", n_resamples=499, seed=rep, span=(-1.0, 1.0))
                t_only = stats.ttest_1samp(diff, -CONTINUOUS_BAND, alternative="less").pvalue
                boot_only = gate.p_below(-CONTINUOUS_BAND) if gate.sd == 0 else (1 + np.count_nonzero(
                    gate.t_star <= (gate.estimate + CONTINUOUS_BAND) / gate.se)) / (gate.t_star.size + 1)  # type: ignore[attr-defined]
                hits += [bca < -CONTINUOUS_BAND, t_only < ALPHA, boot_only < ALPHA,
                         gate.p_below(-CONTINUOUS_BAND) < ALPHA]
            print(f"| {shape} | n={n} | " + " | ".join(f"{h / reps:.3f}" for h in hits) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="Simulated runs per cell (default: 2000)")
    parser.add_argument("--compare-methods", action="store_true",
                        help="Compare the continuous methods instead (BCa, Student's t, bootstrap-t, the gate's)")
    args = parser.parse_args()
    if args.compare_methods:
        compare_methods(args.reps)
    else:
        _table(args.reps)
