"""How often the futility rule of ``--qxai-budget`` settles a competence precondition as "at chance" early.

For a reference whose true accuracy gives the competence test on the budget's items 80 % or 95 % power, and for
one exactly at chance, each run draws the budget's items once and looks at the sequential looks' prefixes, as a
suite does; the rule (``pytest_qxai.gate.sequential.futile``) settles the precondition at the first look where
the test has not yet passed and its conditional power is below ``FUTILITY``. Prints, per budget, the share of
runs settled early and the mean share of the budget they used. ``python benchmarks/futility_simulation.py``
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import binom

from pytest_qxai.config import look_counts
from pytest_qxai.gate.sequential import futile

ALPHA = 0.05
"""The competence test's level (``COMPETENCE_ALPHA``)."""


def accuracy_for_power(budget: int, chance: float, power: float) -> float:
    """The smallest accuracy at which the one-sided binomial test on ``budget`` items has ``power``."""
    needed = int(binom.isf(ALPHA, budget, chance)) + 1
    grid = np.linspace(chance, 1.0, 4001)
    return float(grid[np.argmax(binom.sf(needed - 1, budget, grid) >= power)])


def settled_early(budget: int, chance: float, accuracy: float, reps: int, seed: int) -> tuple[float, float]:
    """Share of runs the rule settles before the last look, and the mean share of the budget used."""
    rng = np.random.default_rng(seed)
    looks = look_counts(budget)
    settled, used = 0, []
    for _ in range(reps):
        correct = rng.random(budget) < accuracy
        stop = budget
        for n in looks[:-1]:
            k = int(correct[:n].sum())
            above = binom.sf(k - 1, n, chance) < ALPHA
            if not above and futile({"correct": k, "n": n, "chance": chance, "alpha": ALPHA}, budget / n):
                settled, stop = settled + 1, n
                break
        used.append(stop / budget)
    return settled / reps, float(np.mean(used))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    print("budget | chance | accuracy | power at the budget | settled early | budget used")
    for budget, chance in ((32, 0.2), (120, 1 / 3), (300, 1 / 3)):
        for power in (0.8, 0.95, None):
            accuracy = chance if power is None else accuracy_for_power(budget, chance, power)
            share, used = settled_early(budget, chance, accuracy, args.reps, seed=budget)
            label = "at chance" if power is None else f"{power:.0%}"
            print(f"{budget} | {chance:.3f} | {accuracy:.3f} | {label} | {share:.3f} | {used:.2f}")


if __name__ == "__main__":
    main()
