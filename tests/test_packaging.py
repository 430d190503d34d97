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
    assert config["package-dir"] == {"": "."}  # a simple layout: an editable install needs no import hook


def test_entry_points_name_the_plugin_and_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"]["qxai"] == "pytest_qxai.plugin"
    assert project["scripts"]["qxai"] == "pytest_qxai.cli:main"


def test_an_editable_build_is_a_plain_path_entry(tmp_path: Path) -> None:
    """With the flat layout setuptools installs an editable copy as a path entry, without the import-hook finder
    (and its 'Editable installation' warning) that a renamed package folder needs."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "project"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    code = "import sys; from setuptools import build_meta; print(build_meta.build_editable(sys.argv[1]))"
    built = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=source, capture_output=True,
                           text=True, timeout=300, check=True)
    with zipfile.ZipFile(tmp_path / "dist" / built.stdout.split()[-1]) as wheel:
        names = wheel.namelist()
        [pth] = [n for n in names if n.endswith(".pth")]
        assert wheel.read(pth).decode().strip() == str(source)
    assert not [n for n in names if "finder" in n]
    assert "Editable installation" not in built.stderr
