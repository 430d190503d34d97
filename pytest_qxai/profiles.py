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


def suite_size(suite: str, profile: str, samples_override: int | None = None) -> int:
    """Items for ``suite`` under ``profile``; ``samples_override`` (``--qxai-samples``) wins when given."""
    if profile not in SIZES:
        raise QxaiUsageError(f"unknown profile {profile!r}; use one of {', '.join(SIZES)}")
    if suite not in SIZES[profile]:
        raise QxaiUsageError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)}")
    return SIZES[profile][suite] if samples_override is None else samples_override
