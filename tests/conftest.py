"""Shared fixtures: pytester, the three ways every integration test runs, and a QxaiConfig factory."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_qxai.models.loading import worker_cpu_share
from pytest_qxai.options import QxaiConfig
from pytest_qxai.specs import parse_spec

pytest_plugins = ["pytester"]
PASSED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, each test worker and every pytest process it starts take their share of the CPUs.

    torch otherwise starts one thread per core in every worker; two workers on two cores ran the real-model
    tests about three times slower than one thread each. An explicit ``OMP_NUM_THREADS`` is left alone.
    """
    threads = worker_cpu_share()
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the pytester subprocesses
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember whether the test body passed, for the folder clean-up below."""
    report = yield
    if report.when == "call":
        item.stash[PASSED] = report.passed
    return report


@pytest.fixture(autouse=True)
def pytester_folder_kept_only_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete a passed test's pytester folder: each real-model run converts the embedded GGUF there (about
    0.5 GB), and pytest keeps every pytester folder until the session ends (``tmp_path`` has a retention policy)."""
    yield
    pytester = request.node.funcargs.get("pytester") if isinstance(request.node, pytest.Function) else None
    if pytester is not None and request.node.stash.get(PASSED, False):
        shutil.rmtree(pytester.path, ignore_errors=True)


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
