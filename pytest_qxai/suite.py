"""The suite registry: one :class:`Suite` object says everything about a suite (no torch import).

A suite's name, metrics, item counts per profile, cost, preconditions and run function live together; the
standard suites register theirs when their ``methods`` module is imported, a user's suite the same way
(docs/extending.md). A test module named ``test_<name>.py`` runs a registered suite with
:func:`pytest_qxai.testing.suite_test`, and one generic path gates and stores its metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Mapping

from .config import PROFILES, look_counts
from .errors import QxaiUsageError
from .metrics import Metric, SuiteResult, not_applicable, register_metric

if TYPE_CHECKING:
    from .config import QxaiConfig
    from .models.pair import ModelPair

Precondition = Callable[["ModelPair"], "str | None"]
"""Returns why the suite does not apply to this run (e.g. the run has no labelled dataset), or None."""


@dataclass(frozen=True)
class Suite:
    """One check suite, whole: what it measures, on how many items, at what cost, when it applies, how it runs."""

    name: str
    description: str
    metrics: tuple[Metric, ...]
    run: Callable[["ModelPair"], SuiteResult]
    """Measures both models on the same items; its result holds every metric of :attr:`metrics`."""
    sizes: Mapping[str, int]
    """Items per ``--qxai-profile`` (``smoke``, ``standard``, ``full``); ``--qxai-samples`` overrides them."""
    budgets: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Further item counts per profile for a part of the suite (``cc_shap`` within ``nle_faithfulness``)."""
    item_cost: float | None = None
    """Seconds per item, both sides, cold cache, on a two-core CPU (measured): xdist workers and ``-x`` runs order
    the suites by it, and a time budget sizes the suite's first look with it."""
    preconditions: tuple[Precondition, ...] = ()
    """Checked before :attr:`run`: the first reason makes every metric not applicable (a skipped check)."""

    def size(self, profile: str, samples: int | None = None, budget: str | None = None,
             share: Fraction | None = None) -> int:
        """Items under ``profile`` (of ``budget`` when named); ``samples`` (``--qxai-samples``) wins when given;
        ``share`` takes that share of the profile's count (a sequential look, at least 2 items)."""
        counts = self.sizes if budget is None else self.budgets[budget]
        if profile not in counts:
            raise QxaiUsageError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
        if samples is not None:
            return samples
        return counts[profile] if share is None else max(2, math.ceil(counts[profile] * share))

    def items(self, config: "QxaiConfig", part: str | None = None) -> int:
        """Items this run gives the suite (or its ``part``): the profile's count, ``--qxai-samples``, or the
        share of a sequential look."""
        return self.size(config.profile, config.samples, part, config.share)

    def budget(self, config: "QxaiConfig") -> int | None:
        """The most items sequential mode gives this suite: ``--qxai-budget``'s number or the suite's count in its
        profile; None outside sequential mode."""
        if config.budget is None:
            return None
        return config.budget.items if config.budget.items is not None else self.sizes[config.budget.profile]

    def look_items(self, config: "QxaiConfig", part: str | None = None) -> tuple[int, ...] | None:
        """The suite's (or its ``part``'s) item counts at each sequential look, None outside sequential mode: where a
        method that caches per-item results cuts them, so that a look computes only its new items."""
        looks = self.looks(config)
        if looks is None or config.budget is None:
            return None
        if config.budget.items is not None:  # a look of n items runs as --qxai-samples=n, its parts included
            return looks
        return tuple(self.size(config.budget.profile, None, part, Fraction(n, looks[-1])) for n in looks)

    def looks(self, config: "QxaiConfig") -> tuple[int, ...] | None:
        """The suite's items at each sequential look, None outside sequential mode."""
        limit = self.budget(config)
        return None if limit is None else look_counts(limit, head=self.first_look(config))

    def first_look(self, config: "QxaiConfig") -> int | None:
        """Under a time budget, the items :attr:`item_cost` says fit in it (at least a paired test's two): the first
        look when fewer than a fifth of the budget. Planned from the budget and the cost estimate alone, never from
        the items' values, so the guarantees hold as for equal looks (docs/sequential.md)."""
        seconds = None if config.budget is None else config.budget.seconds
        return None if seconds is None or not self.item_cost else max(2, int(seconds / self.item_cost))

    def cost(self, profile: str, samples: int | None = None) -> float | None:
        """Estimated relative cost (items x seconds per item), None when the suite states no cost."""
        return None if self.item_cost is None else self.item_cost * self.size(profile, samples)

    def result(self, pair: "ModelPair") -> SuiteResult:
        """Run the suite on ``pair``, or say why it does not apply (every metric skipped) when a precondition fails."""
        for precondition in self.preconditions:
            reason = precondition(pair)
            if reason is not None:
                return not_applicable(self.name, self.metrics, f"not applicable: {reason}")
        return self.run(pair)


_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    """Register ``suite`` and its metrics and return it; registering a name again replaces it (a re-imported module)."""
    for counts in (suite.sizes, *suite.budgets.values()):
        if set(counts) != set(PROFILES) or not all(isinstance(n, int) and n >= 2 for n in counts.values()):
            raise QxaiUsageError(f"suite {suite.name!r}: give at least 2 items for each profile "
                                 f"({', '.join(PROFILES)}), got {dict(counts)}")
    others = [m.key for m in suite.metrics if m.suite != suite.name]
    if not suite.metrics or others:
        raise QxaiUsageError(f"suite {suite.name!r}: its metrics must belong to it "
                             f"({', '.join(others) or 'none given'})")
    for metric in suite.metrics:
        register_metric(metric)
    _SUITES[suite.name] = suite
    return suite


def get_suite(name: str) -> Suite:
    """The suite registered under ``name``; a usage error naming the registered ones otherwise."""
    if name not in _SUITES:
        raise QxaiUsageError(f"unknown suite {name!r}; registered: {', '.join(sorted(_SUITES)) or 'none'}")
    return _SUITES[name]


def registered_suites() -> list[Suite]:
    """Every registered suite, by name."""
    return [_SUITES[name] for name in sorted(_SUITES)]
