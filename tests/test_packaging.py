"""The wheel ships every package of the source tree, the suites, and the bundled data."""

from __future__ import annotations

import pytest

tomllib = pytest.importorskip("tomllib")
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_in_pyproject() -> None:
    """Code packages and bundled-data folders alike: an unlisted data folder makes setuptools warn at install."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(p.relative_to(ROOT).parts)
        for p in [ROOT / "pytest_qxai", *(ROOT / "pytest_qxai").rglob("*")]
        if p.is_dir() and "__pycache__" not in p.parts
    }
    assert found | {"pytest_qxai_suites"} == listed
    assert config["package-dir"]["pytest_qxai_suites"] == "suites"  # the repository's fixed layout


def test_entry_points_name_the_plugin_and_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"]["qxai"] == "pytest_qxai.plugin"
    assert project["scripts"]["qxai"] == "pytest_qxai.cli:main"
