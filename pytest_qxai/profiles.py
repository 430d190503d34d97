"""Items per suite for each ``--qxai-profile`` (no torch import).

Generation-heavy suites (explanations, counterfactuals, CC-SHAP, attribution, neurons) get fewer items than the
cheap log-likelihood suites. Selections are nested, so a smaller profile's items are a prefix of a larger one's.
"""

from __future__ import annotations

from .errors import QxaiUsageError

SUITES = (
    "task_accuracy", "nle", "nle_faithfulness", "cc_shap", "counterfactual",
    "attribution", "knowledge", "neurons", "multihop", "probes",
)

SIZES: dict[str, dict[str, int]] = {
    "smoke": {
        "task_accuracy": 24, "nle": 16, "nle_faithfulness": 16, "cc_shap": 6, "counterfactual": 16,
        "attribution": 8, "knowledge": 24, "neurons": 16, "multihop": 24, "probes": 24,
    },
    "standard": {
        "task_accuracy": 300, "nle": 120, "nle_faithfulness": 120, "cc_shap": 24, "counterfactual": 48,
        "attribution": 32, "knowledge": 300, "neurons": 60, "multihop": 150, "probes": 300,
    },
    "full": {
        "task_accuracy": 1200, "nle": 400, "nle_faithfulness": 400, "cc_shap": 80, "counterfactual": 300,
        "attribution": 300, "knowledge": 1000, "neurons": 200, "multihop": 500, "probes": 1000,
    },
}


# Seconds per item of each suite, measured on SmolLM2-135M (smoke profile, two CPU cores,
# benchmarks/results/smollm2_cpu_smoke_bench_v2.json). Only their ratios matter: under pytest-xdist the suites
# are handed out costliest first, so the longest one does not start last and leave the other workers idle.
ITEM_COST: dict[str, float] = {
    "nle_faithfulness": 15.0, "attribution": 11.0, "counterfactual": 4.5, "nle": 2.0, "neurons": 1.4,
    "multihop": 1.0, "task_accuracy": 0.75, "probes": 0.5, "knowledge": 0.3,
}


def suite_cost(suite: str, profile: str, samples_override: int | None = None) -> float | None:
    """Estimated relative cost of a standard suite (items x seconds per item); None for a suite of unknown cost."""
    if suite not in ITEM_COST:
        return None
    return ITEM_COST[suite] * suite_size(suite, profile, samples_override)


def suite_size(suite: str, profile: str, samples_override: int | None = None) -> int:
    """Items for ``suite`` under ``profile``; ``samples_override`` (``--qxai-samples``) wins when given."""
    if profile not in SIZES:
        raise QxaiUsageError(f"unknown profile {profile!r}; use one of {', '.join(SIZES)}")
    if suite not in SIZES[profile]:
        raise QxaiUsageError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)}")
    return SIZES[profile][suite] if samples_override is None else samples_override
