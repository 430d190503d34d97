"""Baseline files: layout, byte-stable serialization, clear load errors, update modes, concurrent writers."""

from __future__ import annotations

import json
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai.baselines import SCHEMA, Baseline, BaselineStore, dumps, model_slug, record_of, result_of
from pytest_qxai.errors import BaselineError
from pytest_qxai.gate.check import CheckResult, check_vs_reference
from pytest_qxai.gate.tolerance import parse_tolerance
from pytest_qxai.metrics import Metric
from pytest_qxai.options import QxaiConfig
from pytest_qxai.session import QxaiSession

SIM = Metric("nle", "similarity", "cosine", "continuous")


def result(metric: str = "similarity", shift: float = 0.0, n: int = 20) -> CheckResult:
    ref = np.linspace(0.1, 0.9, n)
    metric_def = Metric("nle", metric, "", "continuous")
    checked = check_vs_reference(metric_def, parse_tolerance("abs:0.05"), ref, ref + shift,
                                 [f"i{k}" for k in range(n)], n_resamples=99)
    checked.fingerprint = {"data": "d1"}
    return checked


@pytest.mark.parametrize(
    ("model", "slug"),
    [("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB_SmolLM2-135M-Instruct"), ("../../etc", "etc"),
     ("/abs/path/model", "abs_path_model"), ("a..b", "a.b"), ("", "model"), ("...", "model")],
)
def test_model_slug(model: str, slug: str) -> None:
    assert model_slug(model) == slug


@given(st.text(max_size=80))
def test_model_slug_is_always_a_safe_folder_name(model: str) -> None:
    slug = model_slug(model)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", slug) and ".." not in slug and slug not in (".", "")


def test_store_path_layout(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, "org/model", "gptq4_group_size_64")
    assert store.path == tmp_path / "org_model" / "gptq4_group_size_64.json"


def test_written_file_is_canonical_and_round_trips_byte_for_byte(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, "org/model", "bnb4")
    summary = store.update([result()], {"seed": 0, "quant": "bnb4"}, mode="all")
    assert summary.written and summary.added == ["nle.similarity"]
    data = store.path.read_bytes()
    doc = json.loads(data)
    assert doc["schema"] == SCHEMA and doc["model"] == "org/model" and doc["baseline"] == "bnb4"
    record = doc["checks"]["nle.similarity"]
    assert record["items"]["i0"] == [0.1, 0.1] and record["fingerprint"] == {"data": "d1"}
    assert doc["runs"][record["run"]] == {"quant": "bnb4", "seed": 0}
    assert data.endswith(b"}\n") and b'"i0": [0.1, 0.1]' in data
    loaded = store.load()
    assert loaded is not None and loaded.to_bytes() == data
    again = store.update([result()], {"seed": 0, "quant": "bnb4"}, mode="all")
    assert not again.written and store.path.read_bytes() == data


finite = st.floats(allow_nan=False, allow_infinity=False)
item_values = st.one_of(finite, st.just(float("nan")))


@settings(max_examples=50, deadline=None)
@given(pairs=st.dictionaries(st.text(min_size=1, max_size=8), st.tuples(item_values, item_values), max_size=10),
       meta=st.dictionaries(st.text(max_size=5), st.one_of(finite, st.text(max_size=5), st.integers())))
def test_serialization_round_trip_byte_for_byte(pairs: dict[str, tuple[float, float]], meta: dict) -> None:
    checked = CheckResult("s", "m", "vs_reference", "pass", "r", item_ids=list(pairs),
                          reference_items=[None if v != v else v for v, _ in pairs.values()],
                          quantized_items=[None if v != v else v for _, v in pairs.values()])
    doc = {"schema": SCHEMA, "model": "m", "baseline": "b", "checks": {"s.m": record_of(checked, "r1")},
           "runs": {"r1": meta}}
    data = dumps(doc)
    parsed = Baseline.parse(Path("x.json"), data)
    assert parsed.doc == doc and parsed.to_bytes() == data
    assert result_of(parsed.checks["s.m"]).items() == checked.items()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"schema": "pytest-qxai/baseline/1", "model": "m", "checks": {', "is not valid JSON"),
        (b"not json", "is not valid JSON"),
        (b"\xff\xfe", "is not UTF-8"),
        (b'{"schema": "pytest-qxai/baseline/9", "model": "m", "checks": {}, "runs": {}}', "unknown schema"),
        (b"[1, 2]", "unknown schema"),
        (b'{"schema": "pytest-qxai/baseline/1", "model": "m", "checks": {"a.b": {}}, "runs": {}}', "malformed"),
        (b'{"schema": "pytest-qxai/baseline/1", "model": "m", "checks": {"a.b": {"items": {"x": [1]}}}, '
         b'"runs": {}}', "expected [reference, quantized]"),
        (b'{"schema": "pytest-qxai/baseline/1", "model": "m", "checks": {"a.b": {"items": {"x": [1, NaN]}}}, '
         b'"runs": {}}', "finite numbers or null"),
        (b'{"schema": "pytest-qxai/baseline/1", "model": "m", "checks": {}, "runs": {"r1": "oops"}}',
         "run 'r1' must be an object"),
        (b'{"schema": "pytest-qxai/baseline/1", "model": "m", "checks": {"a.b": {"items": {}, "run": ["r1"]}}, '
         b'"runs": {}}', "'run' must be a string"),
        (b'{"schema": "pytest-qxai/baseline/1", "model": "other", "checks": {}, "runs": {}}',
         "was recorded for model 'other', not 'm'"),
    ],
)
def test_unusable_files_raise_one_line_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    store = BaselineStore(tmp_path, "m", "bnb4")
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(content)
    with pytest.raises(BaselineError) as excinfo:
        store.load()
    text = str(excinfo.value)
    assert message in text and str(store.path) in text and "\n" not in text


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert BaselineStore(tmp_path, "m", "bnb4").load() is None


def test_missing_mode_adds_only_absent_checks(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, "m", "bnb4")
    store.update([result("a")], {}, mode="all")
    before = store.load()
    assert before is not None
    summary = store.update([result("a", shift=0.1), result("b")], {}, mode="missing")
    after = store.load()
    assert after is not None and summary.added == ["nle.b"] and summary.refreshed == []
    assert after.checks["nle.a"] == before.checks["nle.a"]


def test_all_mode_refreshes_and_keeps_checks_that_did_not_run(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, "m", "bnb4")
    store.update([result("a"), result("b")], {}, mode="all")
    summary = store.update([result("a", shift=0.1)], {"seed": 1}, mode="all")
    loaded = store.load()
    assert loaded is not None and summary.refreshed == ["nle.a"] and set(loaded.checks) == {"nle.a", "nle.b"}
    assert loaded.checks["nle.a"]["quantized"] == pytest.approx(0.6)
    assert len(loaded.doc["runs"]) == 2  # one per recorded metadata; unreferenced runs are dropped


def test_prune_removes_checks_outside_keep(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, "m", "bnb4")
    store.update([result("a"), result("b")], {}, mode="all")
    summary = store.update([result("a")], {"seed": 2}, mode="all", keep={"nle.a"})
    loaded = store.load()
    assert loaded is not None and summary.pruned == ["nle.b"] and set(loaded.checks) == {"nle.a"}
    assert len(loaded.doc["runs"]) == 1


def test_skipped_results_are_not_recorded(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, "m", "bnb4")
    skipped = CheckResult("nle", "x", "vs_reference", "skipped", "no backward")
    assert not store.update([skipped], {}, mode="all").written and store.load() is None


def _write_one(args: tuple[str, str]) -> None:
    root, name = args
    BaselineStore(Path(root), "m", "bnb4").update([result(name)], {"worker": name}, mode="missing")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    names = [f"metric{i}" for i in range(6)]
    with ProcessPoolExecutor(3, mp_context=get_context("fork")) as pool:
        list(pool.map(_write_one, [(str(tmp_path), n) for n in names]))
    loaded = BaselineStore(tmp_path, "m", "bnb4").load()
    assert loaded is not None and set(loaded.checks) == {f"nle.{n}" for n in names}
    assert len(loaded.doc["runs"]) == 6


def test_session_refresh_of_an_unchanged_run_rewrites_nothing(make_config: Callable[..., QxaiConfig]) -> None:
    """Timings in the run metadata differ every run; they stay out of the baseline."""
    ref = np.linspace(0.1, 0.9, 30)
    paths = []
    for seconds in (1.5, 2.5):
        session = QxaiSession(make_config(update_baselines="all"), n_resamples=99)
        session.metadata.update({"model_id": "org/model", "model_hash": "abc", "load_seconds": seconds})
        session.check(SIM, ref, ref - 0.01, fingerprint={"data": "d"})
        session.finish()
        paths.append(session.store.path.read_bytes())
    assert paths[0] == paths[1] and b"load_seconds" not in paths[0] and b'"model_hash": "abc"' in paths[0]
    assert session.store.path.parent.name == "org_model"
