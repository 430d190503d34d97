"""A suite's item count and relative cost, by its name, from the suite registry (no torch import).

Each suite declares its item counts per ``--qxai-profile`` (:class:`pytest_qxai.suite.Suite`). Generation-heavy
suites (explanations, counterfactuals, CC-SHAP, attribution, neurons) get fewer items than the cheap
log-likelihood suites; selections are nested, so a smaller profile's items are a prefix of a larger one's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .suite import get_suite

if TYPE_CHECKING:
    from .config import QxaiConfig


def suite_size(suite: str, profile: str, samples_override: int | None = None, budget: str | None = None) -> int:
    """Items for ``suite`` (its ``budget`` part when named) under ``profile``; ``samples_override`` wins."""
    return get_suite(suite).size(profile, samples_override, budget)


def suite_items(suite: str, config: "QxaiConfig", part: str | None = None) -> int:
    """Items this run gives ``suite`` (its ``part`` when named): see :meth:`pytest_qxai.suite.Suite.items`."""
    return get_suite(suite).items(config, part)


def suite_cost(suite: str, profile: str, samples_override: int | None = None) -> float | None:
    """Estimated relative cost of a registered suite (items x seconds per item); None when it states none."""
    return get_suite(suite).cost(profile, samples_override)
