"""The package's layers import one way, and only the plugin layer imports pytest (import-linter contracts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
grimp = pytest.importorskip("grimp")
pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_LAYER = {"pytest_qxai.plugin", "pytest_qxai.options", "pytest_qxai.session", "pytest_qxai.testing",
                "pytest_qxai.hookspecs"}
"""The modules that may import pytest: the hooks, the option glue, the session and the user harness."""


def _settings() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]  # type: ignore[no-any-return]


def _lint(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the copy of ``pytest_qxai`` found in ``package_parent``, with this project's contracts."""
    script = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(script), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=package_parent,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_core_module_importing_the_plugin_breaks_both_contracts(tmp_path: Path) -> None:
    """The contracts bite: an upward import (config → plugin, and so pytest) is reported, naming the import."""
    shutil.copytree(ROOT / "pytest_qxai", tmp_path / "pytest_qxai", ignore=shutil.ignore_patterns("data"))
    config = tmp_path / "pytest_qxai" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _upward() -> None:\n    from . import plugin  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "0 kept, 2 broken" in result.stdout
    assert "pytest_qxai.config -> pytest_qxai.plugin" in result.stdout


def test_every_module_belongs_to_a_layer() -> None:
    """A new module must be placed in the contract, or it would escape it."""
    layers = [name.strip() for line in _settings()["contracts"][0]["layers"]
              for name in line.replace("|", ":").split(":")]
    graph = grimp.build_graph("pytest_qxai", cache_dir=None)
    unplaced = sorted(
        module for module in graph.modules
        if module != "pytest_qxai"
        and not any(module == layer or module.startswith(layer + ".") for layer in layers)
        # a package whose layers are its modules: its __init__ must import nothing of the package
        and not (any(layer.startswith(module + ".") for layer in layers)
                 and not graph.find_modules_directly_imported_by(module))
    )
    assert unplaced == []


def test_only_the_plugin_layer_imports_pytest() -> None:
    """The core (config, models, backends, runtime, methods, metrics, gate, report, cli) runs without pytest."""
    graph = grimp.build_graph("pytest_qxai", include_external_packages=True, cache_dir=None,
                              exclude_type_checking_imports=True)
    importers = {m for m in graph.find_downstream_modules("pytest") if m.startswith("pytest_qxai")}
    assert importers and importers <= PLUGIN_LAYER
    forbidden = _settings()["contracts"][1]["source_modules"]
    assert not any(m == s or m.startswith(s + ".") for m in PLUGIN_LAYER for s in forbidden)
