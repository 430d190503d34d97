"""Shared fixtures: pytester, the three ways every integration test runs, and a QxaiConfig factory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_qxai.options import QxaiConfig
from pytest_qxai.specs import parse_spec

pytest_plugins = ["pytester"]


@pytest.fixture(params=[(), ("-n", "0"), ("-n", "2")], ids=["no-xdist", "xdist-n0", "xdist-n2"])
def plugin_args(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Command-line arguments for running a pytester session without xdist, with ``-n 0`` and ``-n 2``."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., QxaiConfig]:
    """Build a :class:`QxaiConfig` with test defaults (baselines and reports under ``tmp_path``)."""

    def make(**changes: Any) -> QxaiConfig:
        config = QxaiConfig(
            model=None, quant=parse_spec("bnb4"), quantized=None, revision=None, device="cpu", dtype="auto",
            profile="smoke", samples=None, seed=0, batch_size=None, cache_dir=None, trust_remote_code=False,
            judge=None, offload=False, data={}, baseline_dir=tmp_path / "baselines", baseline_name="bnb4",
            update_baselines=None, prune_baselines=False, tolerances=(), report_json=None, report_md=None,
            report_html=None, shard=None, ci=False, rootdir=tmp_path,
        )
        return dataclasses.replace(config, **changes)

    return make
