"""Every unit counts: degenerate outputs are worst-value outcomes, denominators are pinned, preconditions hold."""

from __future__ import annotations

import copy

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.metrics import Metric, SuiteResult
from pytest_qxai.methods import outcomes as O
from test_attribution import smollm  # noqa: F401 - shared model fixture


def _metric(direction: str, bounds: tuple[float | None, float | None]) -> Metric:
    return Metric("s", "m", "", "continuous", direction=direction, bounds=bounds)  # type: ignore[arg-type]


def test_worst_value_is_the_bound_in_the_bad_direction() -> None:
    assert O.worst_value(_metric("higher", (-1.0, 1.0))) == -1.0
    assert O.worst_value(_metric("lower", (0.0, 1.0))) == 1.0
    with pytest.raises(ValueError, match="no bound in its bad direction"):
        O.worst_value(_metric("lower", (0.0, None)))


@given(st.lists(st.tuples(st.floats(-1, 1), st.booleans()), min_size=1, max_size=30))
def test_scoring_keeps_every_unit_and_never_improves_one(rows: list[tuple[float, bool]]) -> None:
    values, flags = np.array([v for v, _ in rows]), np.array([f for _, f in rows])
    out = O.scored(values, flags, -1.0)
    assert out.shape == values.shape and not np.isnan(out).any()
    assert np.all(out <= values) and np.all(out[flags] == -1.0) and np.array_equal(out[~flags], values[~flags])


def test_competence_is_a_one_sided_binomial_test_against_chance() -> None:
    ok, reason = O.competence(np.array([1.0] * 6 + [0.0] * 10), 1 / 3, "e-SNLI")
    assert not ok and reason.startswith("reference at chance on e-SNLI (0.38 vs chance 0.33, one-sided binomial p=")
    ok, reason = O.competence(np.array([1.0] * 45 + [0.0] * 55), 0.2, "ECQA")
    assert ok and "above chance on ECQA (0.45 vs chance 0.20" in reason


def test_competence_falsely_holds_at_most_alpha_of_the_time_at_chance() -> None:
    rng = np.random.default_rng(0)
    held = [O.competence(rng.random(48) < 1 / 3, 1 / 3, "t")[0] for _ in range(2000)]
    assert np.mean(held) <= O.COMPETENCE_ALPHA + 0.01  # exact test: conservative at a discrete n


def test_an_unmet_precondition_marks_only_the_dependent_metrics_not_applicable() -> None:
    result = SuiteResult("s", ["a"], {}, {}, {})
    dependent, other = _metric("higher", (0.0, 1.0)), dataclasses.replace(_metric("higher", (0, 1)), name="other")
    assert not O.require_competence(result, "e-SNLI", np.zeros(10), 1 / 3, [dependent])
    assert result.skipped == {"m": result.skipped["m"]} and result.skipped["m"].startswith("not applicable: ")
    assert other.name not in result.skipped
    assert result.notes["precondition"]["e-SNLI"]["dependent_metrics"] == ["m"]


def test_the_gate_receives_the_lost_counts_of_each_metric(make_config: Callable[..., Any]) -> None:
    from pytest_qxai.session import QxaiSession

    metric = O.degenerate_metric("integrity_demo", "nothing")
    result = SuiteResult("integrity_demo", list("abcd"), {metric.name: np.zeros(4)}, {metric.name: np.ones(4)}, {},
                         lost={metric.name: {"reference": 0, "quantized": 4}})
    (check, *_) = QxaiSession(make_config()).check_suite(result, metric)
    assert check.notes["lost"] == check.lost == {"reference": 0, "quantized": 4}


def test_items_outside_a_metrics_units_are_not_lost_but_a_dropped_unit_is(make_config: Callable[..., Any]) -> None:
    from pytest_qxai.session import QxaiSession

    metric = O.degenerate_metric("integrity_demo", "nothing")
    nan = np.nan
    result = SuiteResult("integrity_demo", list("abcdef"), {metric.name: np.array([0, 0, 0, 0, nan, nan])},
                         {metric.name: np.array([0, 0, 0, nan, nan, nan])}, {})  # e, f: another task's items
    (check, *_) = QxaiSession(make_config()).check_suite(result, metric)
    assert check.lost == {"reference": 0, "quantized": 1}


# --- the real model: a quantized side that always generates nothing must fail (slow) -------------------

SUITES = ("nle", "counterfactual")


@pytest.fixture(scope="module")
def silent(smollm: Any) -> Any:  # noqa: F811
    """The reference model whose every generation is empty: the worst a quantization can do to text."""
    from pytest_qxai.runtime import Runtime

    class SilentRuntime(Runtime):
        def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n") -> list[str]:
            return [""] * len(prompts)

    return SilentRuntime(copy.deepcopy(smollm.model), smollm.tokenizer)  # a model of its own, as a quantized side has


@pytest.fixture(scope="module")
def real_results(
    smollm: Any, silent: Any, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> dict[str, dict[str, SuiteResult]]:
    """Each generating suite on 6 items: the null pair (the model twice) and a pair with a silent quantized side."""
    from pytest_qxai.methods import counterfactual, nle
    from pytest_qxai.models.pair import ModelPair, ModelSide
    from pytest_qxai.runtime import Runtime
    from pytest_qxai.storage import DiskCache

    config = _config(tmp_path_factory.mktemp("integrity"), samples=6)
    cache = DiskCache(tmp_path_factory.mktemp("cache"))  # the reference side runs once for both pairs
    reference = ModelSide("reference", smollm.model, smollm, "smollm2", backward=(True, "ok"))
    twin = Runtime(copy.deepcopy(smollm.model), smollm.tokenizer, batch_size=smollm.batch_size)  # two models
    sides = {"null": ModelSide("quantized", twin.model, twin, "smollm2", backward=(True, "ok")),
             "silent": ModelSide("quantized", silent.model, silent, "smollm2-silent", backward=(True, "ok"))}
    runs = {"nle": nle.run_nle, "counterfactual": counterfactual.run_counterfactual}
    return {name: {case: run(ModelPair(reference, side, smollm.tokenizer, config, source=None,  # type: ignore[arg-type]
                                       backend=None, cache=cache))  # type: ignore[arg-type]
                   for case, side in sides.items()} for name, run in runs.items()}


def _config(root: Path, **changes: Any) -> Any:
    from pytest_qxai.options import QxaiConfig
    from pytest_qxai.specs import parse_spec

    return QxaiConfig(
        model=None, quant=parse_spec("bnb4"), quantized=None, revision=None, device="cpu", dtype="auto",
        profile="smoke", samples=changes.get("samples"), seed=0, batch_size=None, cache_dir=None,
        trust_remote_code=False, judge=None, offload=False, data={}, baseline_dir=root / "baselines",
        baseline_name="bnb4", update_baselines="all", prune_baselines=False, tolerances=(), report_json=None,
        report_md=None, report_html=None, shard=None, ci=False, rootdir=root,
    )


def _verdicts(result: SuiteResult, root: Path) -> dict[str, str]:
    from pytest_qxai.metrics import get_metric
    from pytest_qxai.session import QxaiSession

    session = QxaiSession(_config(root))
    return {name: session.check_suite(result, get_metric(f"{result.suite}.{name}"))[0].verdict
            for name in result.reference}


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_real_reference_values_do_not_depend_on_the_quantized_model(
    real_results: dict[str, dict[str, SuiteResult]], suite: str, tmp_path: Path
) -> None:
    null, silent = real_results[suite]["null"], real_results[suite]["silent"]
    assert null.item_ids == silent.item_ids
    for name, values in null.reference.items():
        np.testing.assert_array_equal(values, silent.reference[name], err_msg=name)
        np.testing.assert_array_equal(values, null.quantized[name], err_msg=name)  # the null pair's sides agree
    assert null.skipped == silent.skipped  # the precondition is decided on the reference alone
    assert "fail" not in _verdicts(null, tmp_path).values()


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_real_silent_quantized_side_loses_no_unit_and_is_never_passed(
    real_results: dict[str, dict[str, SuiteResult]], suite: str, tmp_path: Path, smollm: Any  # noqa: F811
) -> None:
    """A model that says nothing scores the worst value on every unit, none is dropped, and no check of its text
    passes. At 6 items a check can only fail where the reference was sound on most of them (the reference model
    itself writes degenerate counterfactuals for half of the e-SNLI items): there the honest verdict is
    inconclusive; the run still fails on the checks that have the power."""
    from pytest_qxai.metrics import get_metric

    result = real_results[suite]["silent"]
    for name, values in result.quantized.items():
        assert not (np.isnan(values) & ~np.isnan(result.reference[name])).any(), name  # nothing dropped
    verdicts = _verdicts(result, tmp_path)
    text_metrics = {
        "nle": ["degenerate_rate", "fluency", "judge_coherence", "judge_trust", "ecqa_fluency",
                "ecqa_degenerate_rate"],
        "counterfactual": ["degenerate_rate", "minimality", "similarity", "fluency", "two_step_degenerate_rate",
                           "ecqa_minimality", "ecqa_degenerate_rate"],
    }[suite]
    for name in text_metrics:
        values = result.quantized[name][~np.isnan(result.quantized[name])]
        worst = (1.0 if name.endswith("degenerate_rate") else O.uniform_log_perplexity(smollm)
                 if name.endswith("fluency") else O.worst_value(get_metric(f"{suite}.{name}")))
        if not name.startswith("judge_"):  # the judge scores an empty text itself
            np.testing.assert_array_equal(values, worst, err_msg=name)
    assert {name: verdicts[name] for name in text_metrics if verdicts[name] not in ("fail", "inconclusive")} == {}
    assert [name for name in text_metrics if verdicts[name] == "fail"], verdicts
    assert all(lost["quantized"] >= lost["reference"] for lost in result.lost.values())


@pytest.mark.slow
def test_real_insertion_units_are_pinned_and_a_silent_explainer_is_unfaithful_on_every_flip(
    smollm: Any, silent: Any  # noqa: F811
) -> None:
    from pytest_qxai.datasets import load_esnli
    from pytest_qxai.methods import faithfulness as F
    from pytest_qxai.methods import task

    items = load_esnli(6, 0)
    labels = task.predict_nli(smollm, [(it.premise, it.hypothesis) for it in items])
    reference = F.counterfactual_test(smollm, items, labels, seed=0)
    broken = F.counterfactual_test(silent, items, labels, seed=0)
    assert reference["units"] == broken["units"] and reference["flipped"].any()  # same units, decided up front
    np.testing.assert_array_equal(broken["flipped"], reference["flipped"])
    np.testing.assert_array_equal(broken["unfaithful"], broken["flipped"])  # nothing mentioned on any flip
    assert broken["empty"].sum() == broken["flipped"].sum()
    shares = [F.item_shares(r["units"], r["unfaithful"]) for r in (reference, broken)]
    assert np.all(shares[1] >= shares[0])


@pytest.mark.slow
def test_real_ecqa_attributions_are_pinned_and_a_model_with_blank_embeddings_fails(
    smollm: Any, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> None:
    """The ecqa_ attribution metrics on SmolLM2 (6 ECQA questions): the reference side is the same against a copy
    of the model and against a model whose token embeddings are all zero (no word can matter to it: every
    attribution vector is constant); that side scores its worst on every unit and fails ``ecqa_degenerate_rate``."""
    import torch

    from pytest_qxai.methods import attribution as A
    from pytest_qxai.models.pair import ModelPair, ModelSide
    from pytest_qxai.runtime import Runtime
    from pytest_qxai.storage import DiskCache

    root = tmp_path_factory.mktemp("ecqa-attribution")
    config, cache = _config(root, samples=6), DiskCache(root / "cache")
    reference = ModelSide("reference", smollm.model, smollm, "smollm2", backward=(True, "ok"))
    blank = copy.deepcopy(smollm.model)
    with torch.no_grad():
        blank.get_input_embeddings().weight.zero_()
    results = {}
    for name, model in (("null", copy.deepcopy(smollm.model)), ("blank", blank)):
        side = ModelSide("quantized", model, Runtime(model, smollm.tokenizer), name, backward=(True, "ok"))
        results[name] = A._ecqa_part(ModelPair(reference, side, smollm.tokenizer, config, source=None,  # type: ignore[arg-type]
                                               backend=None, cache=cache))  # type: ignore[arg-type]
    null, broken = results["null"], results["blank"]
    assert len(null.item_ids) == 6 and set(null.reference) == {m.name for m in A.ECQA_METRICS.values()}
    for name, values in null.reference.items():
        np.testing.assert_array_equal(values, broken.reference[name], err_msg=name)  # pinned: same reference
        np.testing.assert_allclose(values, null.quantized[name], atol=1e-6, err_msg=name)  # null pair agrees
    assert null.reference["ecqa_degenerate_rate"].sum() == 0  # SmolLM2 ranks the words of every question
    np.testing.assert_array_equal(broken.quantized["ecqa_degenerate_rate"], 1.0)
    np.testing.assert_array_equal(broken.quantized["ecqa_comprehensiveness"], -1.0)
    np.testing.assert_array_equal(broken.quantized["ecqa_sufficiency"], 1.0)
    assert broken.lost["ecqa_comprehensiveness"] == {"reference": 0, "quantized": 6}
    assert _verdicts(broken, root)["ecqa_degenerate_rate"] == "fail"
    assert "fail" not in _verdicts(null, root).values()
