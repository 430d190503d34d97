"""Each standard suite's measuring code; importing a module registers its suite (:mod:`pytest_qxai.suite`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..suite import Suite

STANDARD_MODULES = ("task", "nle", "faithfulness", "counterfactual", "attribution", "knowledge", "neurons",
                    "multihop", "probes")
"""The modules of the nine standard suites."""


def standard_suites() -> list["Suite"]:
    """The nine standard suites, registered by importing their modules (imports no torch)."""
    from ..suite import registered_suites

    for module in STANDARD_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return [s for s in registered_suites() if s.run.__module__.startswith(f"{__name__}.")]
