"""Hooks a conftest file or plugin implements to extend qxai runs (registered by ``pytest_addhooks``).

Implement them like any pytest hook, by name, in a ``conftest.py`` or an installed plugin (docs/extending.md).
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_qxai_metadata(metadata: dict[str, Any], config: pytest.Config) -> None:
    """Add keys to the run's metadata (e.g. the release's commit) when the session starts, in every process.

    What the plugin sets later (the model, the spec, library versions) wins on a clash. The keys reach the
    reports and the baseline file; a changed value is named when a check's reference drifts from its baseline.
    """


@pytest.hookspec
def pytest_qxai_report(report: dict[str, Any], config: pytest.Config) -> None:
    """Amend the report document before it is written (once, on the xdist controller); verdicts are final by then.

    ``report`` is the JSON report (``schema``, ``metadata``, ``checks``, ``summary``, ``notes``); the Markdown and
    HTML reports are rendered from it.
    """
