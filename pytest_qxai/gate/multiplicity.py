"""Multiplicity control over a run's fail decisions (``--qxai-multiple-testing``).

A pytest test reports its outcome when its checks are done, before the run's other p-values exist. So a
check first decides with the Bonferroni bound over the run's planned family (``p * m``); at the end of the
run the chosen method adjusts all p-values together. Holm's and Benjamini-Hochberg's adjusted p-values are
never above Bonferroni's, so the end can only add failures while the family is no larger than planned.
What is controlled: with ``holm`` the family-wise rate of false failures, with ``bh`` the expected share of
false failures among the failures, with ``none`` only each check's own rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .check import CheckResult, decide

METHODS = {"holm": "holm", "bh": "fdr_bh"}
"""Our names for statsmodels ``multipletests`` methods."""


def in_family(result: CheckResult) -> bool:
    """Whether a result is one of the run's fail decisions (a statistical test, not a stale file or a skip)."""
    return (result.kind in ("vs_reference", "vs_baseline") and result.verdict != "skipped"
            and result.p_value is not None and result.ci is not None)


def test_time_family(method: str, planned: int) -> int:
    """The Bonferroni multiplier a check uses before the run's other p-values are known."""
    return 1 if method == "none" else max(1, planned)


@dataclass
class Adjustment:
    """What the end-of-run adjustment changed: failures it added and test-time failures it withdrew."""

    method: str
    family: int
    added: list[CheckResult] = field(default_factory=list)
    withdrawn: list[CheckResult] = field(default_factory=list)

    def lines(self, planned: int) -> list[str]:
        """Summary lines naming every verdict the end of the run changed."""
        lines = []
        if self.added:
            lines.append(f"qxai: {self.method} over the run's {self.family} fail decisions failed "
                         f"{len(self.added)} more check(s) at the end (their tests had passed): "
                         + ", ".join(f"{r.key} {r.kind}" for r in self.added))
        if self.withdrawn:
            lines.append(f"qxai: the run made {self.family} fail decisions, more than the {planned} planned at "
                         f"collection; {self.method} does not confirm these test-time failures: "
                         + ", ".join(f"{r.key} {r.kind}" for r in self.withdrawn))
        return lines

    def merge_lines(self) -> list[str]:
        """Summary lines for shards merged into one run: the family is now every shard's fail decisions."""
        lines = []
        if self.added:
            lines.append(f"qxai merge: {self.method} over all shards' {self.family} fail decisions fails "
                         f"{len(self.added)} more check(s): " + ", ".join(f"{r.key} {r.kind}" for r in self.added))
        if self.withdrawn:
            lines.append(f"qxai merge: {self.method} over all shards' {self.family} fail decisions does not confirm "
                         "these shard failures (each shard corrected for its own checks only): "
                         + ", ".join(f"{r.key} {r.kind}" for r in self.withdrawn))
        return lines


def adjust(results: Sequence[CheckResult], method: str) -> Adjustment:
    """Set every fail decision's final ``p_adjusted`` by ``method`` and decide it again."""
    members = [r for r in results if in_family(r)]
    done = Adjustment(method, len(members))
    if not members:
        return done
    p_values = [float(r.p_value) for r in members]  # type: ignore[arg-type]
    if method == "none":
        adjusted = p_values
    else:
        from statsmodels.stats.multitest import multipletests

        adjusted = [float(p) for p in multipletests(p_values, method=METHODS[method])[1]]
    for result, p in zip(members, adjusted, strict=True):
        before = result.verdict
        result.p_adjusted = p
        decide(result)
        if result.verdict == "fail" and before != "fail":
            done.added.append(result)
        elif before == "fail" and result.verdict != "fail":
            done.withdrawn.append(result)
    return done
