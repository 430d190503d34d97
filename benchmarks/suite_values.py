"""A pytest plugin for the revision benchmark: times each suite's computation and keeps its per-item values.

Loaded with ``-p suite_values`` (``benchmarks/`` on ``PYTHONPATH``); ``QXAI_VALUES_OUT`` names the folder that
receives, per suite, ``<suite>.npz`` (every metric's per-item values on both sides, the metrics the gate skipped
included) and ``<suite>.json`` (item count, seconds, and the model calls' seconds and tokens, both sides summed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Generator[None, Any, None]:
    """Time ``qxai_suite_result`` (its model pair is set up before, so loading is left out) and save its values."""
    watched = fixturedef.argname == "qxai_suite_result" and "QXAI_VALUES_OUT" in os.environ
    stats = [side.runtime.stats for side in request.getfixturevalue("qxai_pair").sides] if watched else []
    before = _totals(stats)
    started = time.perf_counter()
    outcome = yield
    if not watched:
        return
    seconds = time.perf_counter() - started
    model_s, scored, generated = (a - b for a, b in zip(_totals(stats), before))
    result = outcome.get_result()
    folder = Path(os.environ["QXAI_VALUES_OUT"])
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"{side}/{name}": np.asarray(values, dtype=np.float64)
              for side, table in (("reference", result.reference), ("quantized", result.quantized))
              for name, values in table.items()}
    np.savez(folder / f"{result.suite}.npz", **arrays)
    (folder / f"{result.suite}.json").write_text(json.dumps(
        {"suite": result.suite, "items": len(result.item_ids), "seconds": seconds, "model_seconds": model_s,
         "tokens_scored": scored, "tokens_generated": generated, "skipped": sorted(result.skipped)}))


def _totals(stats: list[Any]) -> tuple[float, int, int]:
    """Model-call seconds, tokens scored and tokens generated, summed over the runtimes' counters."""
    return (sum(s.seconds for s in stats), sum(s.tokens_scored for s in stats), sum(s.tokens_generated for s in stats))
