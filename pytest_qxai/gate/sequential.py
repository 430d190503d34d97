"""Sequential item budgets (``--qxai-budget``): a suite is checked at planned looks and each check stops as soon
as it is decided.

Group-sequential testing with Lan-DeMets alpha spending, O'Brien-Fleming type (:mod:`.spending`), over looks
at equal fractions of the budget. At look j a check's fail test spends the increment of the spending function
of its own alpha (the Bonferroni share ``alpha / family``) and its pass test the increment of the band's alpha;
the look rejects when its fixed-n p-value is below that increment. The guarantee is the union bound over looks:
whatever the stopping rule, a check whose true D is within its band fails with probability at most
``sum_j (alpha(t_j) - alpha(t_{j-1})) = alpha``, and likewise for a false pass; it holds whenever each look's
test is valid on its own, with no assumption on how the looks are correlated (the gate's tests are a score test
and a bootstrap-t, not the normal statistics exact boundaries assume). The check's p-value is the repeated one,
``min_j p_j / w_j`` with ``w_j`` the fail test's share, valid under optional stopping, so the run's Holm or BH
adjustment composes with it unchanged. docs/sequential.md measures both guarantees and what the bound costs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..config import LOOKS, look_counts
from ..metrics import AT_CHANCE, NOT_APPLICABLE
from .check import CheckResult, decide
from .spending import Fractions

STOPS = {"fail": "fail shown", "pass": "non-inferiority shown", "improved": "improvement shown"}
"""Why a check stopped, by verdict, when it was decided; otherwise it ran to the budget or out of time."""


@dataclass(frozen=True)
class Plan:
    """The items at each look of a budget (nested prefixes of the suite's seeded item order)."""

    budget: int
    looks: tuple[int, ...]

    def fractions(self, look: int) -> Fractions:
        """Information fractions ``(t_previous, t)`` of look ``look`` (0-based)."""
        before = self.looks[look - 1] / self.budget if look else 0.0
        return before, self.looks[look] / self.budget


def plan(budget: int, looks: int = LOOKS, first: int = 2, head: int | None = None) -> Plan:
    """``looks`` equal steps up to ``budget`` items, each look at least ``first`` items (a paired test's minimum),
    after an earlier look of ``head`` items when that is below the first step (:func:`~pytest_qxai.config.look_counts`)."""
    if budget < first:
        raise ValueError(f"a budget of {budget} items is below the {first} items a paired test needs")
    return Plan(budget, look_counts(budget, looks, first, head))


def batches(n: int, looks: Sequence[int] | None) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``n`` items cut at the sequential looks' item counts (``looks``), for a method that
    caches them one batch at a time so that a look does not recompute the earlier ones; one batch of all ``n``
    items outside sequential mode (``looks`` None)."""
    if looks is None:
        return [(0, n)]
    stops = [look for look in sorted(set(looks)) if 0 < look < n] + [n]
    return list(zip([0, *stops[:-1]], stops))


def decided(result: CheckResult, scale: float = 1.0) -> bool:
    """Whether a check is settled at this look: fail, pass or improved shown, or not a test that more items
    could change (a stale or missing baseline; a metric that does not apply to the run's data). A metric skipped
    on the items seen so far (too few valid items, or a reference not yet shown above chance) may become
    testable later, unless its competence test already ran on the whole budget's items or is futile
    (:func:`futile`; ``scale``: the budget's items over the items seen)."""
    if result.kind == "reference_drift":  # a note on the baseline comparison, not a decision of its own
        return True
    if result.verdict == "skipped":
        if result.kind == "vs_reference":
            if result.reason.startswith(AT_CHANCE):  # settled: tested on the whole budget's items, or futile
                test = result.notes.get("precondition")
                return test is not None and (bool(test.get("settled")) or futile(test, scale))
            return result.reason.startswith(NOT_APPLICABLE)
        # a baseline being recorded: no test either way; too few items matched in it: more may match
        return not result.reason.startswith("no test: only")
    return result.verdict != "inconclusive"


FUTILITY = 0.01
"""A reference at chance settles its metrics' skip once, at its accuracy so far, the competence test on the
budget's items would find it above chance less often than this (what it costs and saves: docs/sequential.md)."""


def futile(test: dict[str, Any], scale: float) -> bool:
    """Whether a competence test that failed on the items seen would succeed on ``scale`` times as many items with
    predictive probability below :data:`FUTILITY`: the remaining items' correct count drawn from the beta-binomial
    that a uniform prior and the items seen give (predictive power, Spiegelhalter, Freedman & Blackburn 1986; it
    carries the uncertainty of a few items' accuracy, which a plug-in conditional power would not)."""
    from scipy.stats import betabinom, binom

    correct, n, chance, alpha = int(test["correct"]), int(test["n"]), float(test["chance"]), float(test["alpha"])
    final = math.ceil(n * scale - 1e-9)
    if n == 0 or final <= n:
        return final <= n
    needed = int(binom.isf(alpha, final, chance)) + 1  # the fewest correct the test at the budget calls above chance
    power = float(betabinom.sf(needed - correct - 1, final - n, correct + 1, n - correct + 1))
    return power < FUTILITY


def combine(previous: CheckResult | None, current: CheckResult, plan_: Plan, look: int, family: int,
            exhausted: bool = False) -> CheckResult:
    """This look's check, its p-value made the repeated one over looks so far (``min_j p_j / w_j``), decided
    again, with what it used and why it stopped (``notes["sequential"]``, also said in the reason).
    ``exhausted``: the data had no more items than the previous look, so this look was tested as the last."""
    if current.p_value is None or current.ci is None:  # no test (a missing or stale baseline, too few items)
        return current
    if previous is not None and previous.p_value is not None and previous.p_value < current.p_value:
        current.p_value = previous.p_value
    current.p_adjusted = min(1.0, current.p_value * family)
    decide(current)
    final = exhausted or look == len(plan_.looks) - 1
    current.notes["sequential"] = current.notes.get("sequential", {}) | {
        "items": plan_.looks[look], "budget": plan_.budget, "look": look + 1, "looks": len(plan_.looks),
        "stopped": STOPS.get(current.verdict, "") or (
            "the data has no more items" if exhausted else "budget spent" if final else ""),
    } | ({"used": len(current.item_ids)} if exhausted and current.item_ids else {})
    decide(current)  # again, so that the reason says why the check stopped
    return current


def run_looks(
    plan_: Plan, evaluate: Callable[[int, Fractions], Sequence[CheckResult]], family: int,
    seconds: float | None = None, *, stop_at_fail: bool = False,
) -> list[CheckResult]:
    """Evaluate the checks at each look until all are decided, the budget is spent, with ``seconds`` the next
    look would end past that many seconds at the pace of the latest one (a look recomputes the earlier items, so
    its time is taken to grow with its items), or with ``stop_at_fail`` (``-x``) a check has failed.

    ``evaluate(n, fractions)`` returns the checks on the first ``n`` items, tested at that look's share of alpha.
    Returns each check as it was when it stopped (``notes["sequential"]`` says where), in the order first seen.
    """
    frozen: dict[tuple[str, str], CheckResult] = {}
    latest: dict[tuple[str, str], CheckResult] = {}
    started = look_started = time.perf_counter()

    def stop(why: str) -> None:
        for key, check in latest.items():
            if key not in frozen and "look" in check.notes.get("sequential", {}):  # undecided: says why it stopped
                check.notes["sequential"]["stopped"] = why
                decide(check)

    seen: dict[tuple[str, str], list[str]] | None = None
    for look, n in enumerate(plan_.looks):
        if look and seconds is not None:
            now = time.perf_counter()
            if now - started + (now - look_started) * n / plan_.looks[look - 1] > seconds:
                stop("time spent")
                break
        look_started = time.perf_counter()
        checks = evaluate(n, plan_.fractions(look))
        items = {(check.key, check.kind): check.item_ids for check in checks}
        exhausted = items == seen and look < len(plan_.looks) - 1
        if exhausted:  # the data ran out before the budget: no later look adds an item, so this one spends the rest
            checks = evaluate(n, (plan_.fractions(look)[0], 1.0))
        seen = items
        for check in checks:
            key = (check.key, check.kind)
            if key not in frozen:
                latest[key] = combine(latest.get(key), check, plan_, look, family, exhausted)
                if decided(latest[key], plan_.budget / n):
                    frozen[key] = latest[key]
        if len(frozen) == len(latest) or exhausted:
            break
        if stop_at_fail and any(check.failed for check in frozen.values()):
            stop("the run stops at its first failure (-x)")
            break
    return [frozen.get(key, last) for key, last in latest.items()]
