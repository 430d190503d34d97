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


@pytest.mark.parametrize("hook", ["build_wheel", "build_editable"])
def test_building_prints_no_setuptools_warning(tmp_path: Path, hook: str) -> None:
    """The wheel and the editable wheel build without warnings, with the one notice filter scripts/setup.sh sets."""
    import re
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("pytest_qxai", "suites"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    filtered = re.search(r'PYTHONWARNINGS="([^"]+)" python -m pip install .* -e ', setup)
    assert filtered, "scripts/setup.sh installs the project editable with its one notice filter"
    code = f"from setuptools import build_meta; build_meta.{hook}({str(tmp_path / 'out')!r})"
    env = {"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": filtered.group(1)}
    done = subprocess.run([sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    warned = re.findall(r"^\S+\.py:\d+: \w+: .*$", done.stderr, re.MULTILINE)  # the warnings module's format
    assert not warned, warned
