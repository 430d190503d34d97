"""Your own data: the classification format, optional gold explanations, several datasets, and bad input.

The worked example of docs/data.md is ``docs/examples/sentiment.jsonl``: it is loaded and every suite is run on
it here (tiny random model: evidence that the suites run and say what does not apply, not that a metric means
anything). Under the tiny tokenizer " positive" and " negative" are several tokens each, so this is also the
multi-token label test of the task and attribution suites.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_qxai.datasets import ClassItem, load_classification, load_ecqa, load_esnli, run_datasets
from pytest_qxai.errors import DatasetError

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "sentiment.jsonl"


def write(tmp_path: Path, records: list[Any], name: str = "data.jsonl") -> Path:
    """A JSONL file of these records (strings are written as they are)."""
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --- the format ---------------------------------------------------------------------------------------------

def test_the_worked_example_loads_with_its_label_set() -> None:
    items = load_classification(None, 0, EXAMPLE)
    assert len(items) == 40 and {it.label for it in items} == {"positive", "negative"}
    assert all(it.label_set == ("positive", "negative") and it.explanations == () for it in items)
    assert [it.label for it in load_classification(4, 0, EXAMPLE)].count("positive") == 2  # labels take turns


def test_the_label_set_defaults_to_the_labels_seen_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, [{"id": 1, "text": "a", "label": "spam"}, {"id": 2, "text": "b", "label": "ham"},
                            {"id": 3, "text": "c", "label": "spam", "explanations": ["an offer"]}])
    items = {it.id: it for it in load_classification(None, 0, path)}
    assert items["1"] == ClassItem("1", "a", "spam", ("spam", "ham"))
    assert items["3"].explanations == ("an offer",)


def test_a_label_typed_in_two_unicode_forms_is_one_label(tmp_path: Path) -> None:
    """Composed "café" and "cafe" + a combining accent look alike: one label (NFC), not two that halve chance."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    path = write(tmp_path, [{"id": 1, "text": "a", "label": composed}, {"id": 2, "text": "b", "label": decomposed},
                            {"id": 3, "text": "c", "label": "bar"}])
    assert {it.label_set for it in load_classification(None, 0, path)} == {(composed, "bar")}
    declared = write(tmp_path, [{"id": 1, "text": "a", "label": decomposed, "label_set": [composed, "bar"]}],
                     "declared.jsonl")
    assert load_classification(None, 0, declared)[0].label == composed


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.sampled_from("ae\u00e9\u00f1\u00fc\u00c5\u1ec7 "), min_size=1, max_size=6).filter(str.strip))
def test_an_ecqa_answer_typed_in_another_unicode_form_is_its_option(tmp_path: Path, word: str) -> None:
    """An answer in decomposed form (NFD) prints as its composed option (NFC): it is that option, as labels are."""
    composed, decomposed = (unicodedata.normalize(form, " ".join(word.split())) for form in ("NFC", "NFD"))
    path = write(tmp_path, [{"id": "q", "question": "Which?", "options": [composed, "zzz"], "answer": decomposed},
                            {"id": "r", "question": "Which?", "options": [decomposed, "zzz"], "answer": composed}])
    assert [(it.options, it.answer) for it in load_ecqa(None, 0, path)] == [((composed, "zzz"), composed)] * 2
    twice = write(tmp_path, [{"id": "q", "question": "Which?", "options": [composed, decomposed, "zzz"],
                              "answer": "zzz"}], "twice.jsonl")
    if composed != decomposed:
        with pytest.raises(DatasetError, match="'options' has duplicates"):
            load_ecqa(None, 0, twice)


def test_gold_explanations_are_optional_in_every_format(tmp_path: Path) -> None:
    nli = write(tmp_path, [{"id": "n", "premise": "A dog runs.", "hypothesis": "An animal moves.",
                            "label": "entailment"}], "nli.jsonl")
    mcq = write(tmp_path, [{"id": "q", "question": "Where?", "options": ["here", "there"], "answer": "here"}],
                "mcq.jsonl")
    assert load_esnli(None, 0, nli)[0].explanations == ()
    assert load_ecqa(None, 0, mcq)[0].explanation == ""


@pytest.mark.parametrize(("records", "message"), [
    ([{"id": 1, "text": "a", "label": "good", "label_set": ["good", "bad"]}, {"id": 2, "text": "b", "label": "meh"}],
     "{path}:2: label 'meh' is not in the label set (good, bad)"),
    ([{"id": 1, "text": "a", "label": "good", "label_set": ["good"]}],
     "{path}:1: the label set has one label ('good'): a classification needs at least two"),
    ([{"id": 1, "text": "a", "label": "good"}, {"id": 2, "text": "b", "label": "good"}],
     "{path}:1: every item has the label 'good': a classification needs at least two labels (add items of another "
     "label, or a label_set)"),
    ([{"id": 1, "text": "a", "label": "good", "label_set": ["good", "bad"]},
      {"id": 2, "text": "b", "label": "bad", "label_set": ["bad", "good"]}],
     "{path}:2: label_set ['bad', 'good'] differs from line 1's ['good', 'bad']: one label set per file"),
    ([{"id": 1, "text": "a", "label": "good"},
      {"id": 2, "premise": "p", "hypothesis": "h", "label": "entailment", "explanations": ["x"]}],
     "{path}:2: an NLI record (premise, hypothesis) after classification records (line 1): one format per file"),
    ([{"id": 1, "question": "q?", "options": ["a", "b"], "answer": "a"}],
     "{path}:1: a multiple-choice record (question, options) in a file read as classification data"),
    ([{"id": 1, "text": "a", "label": 1}], "{path}:1: field 'label' must be a non-empty string, got 1"),
    (['{"id": 1, "text": "a", "label": "good", "label": "bad"}'], "{path}:1: key 'label' appears twice in one object"),
    (['{"id": 1, "text": "a\\ud800", "label": "good"}'],
     "{path}:1: field 'text' is not valid Unicode: lone surrogate '\\ud800' at character 2"),
])
def test_bad_classification_files_are_one_line_naming_file_and_line(
        tmp_path: Path, records: list[Any], message: str) -> None:
    path = write(tmp_path, records)
    with pytest.raises(DatasetError) as caught:
        load_classification(None, 0, path)
    assert str(caught.value) == message.format(path=path)


def test_a_run_uses_the_named_datasets_only(pytester: pytest.Pytester) -> None:
    from pytest_qxai.options import QxaiConfig

    reviews = write(pytester.path, [{"id": 1, "text": "a", "label": "x"}, {"id": 2, "text": "b", "label": "y"}])
    config = QxaiConfig.from_pytest(pytester.parseconfig(f"--qxai-data=reviews={reviews}", "--qxai-data=lre",
                                                         f"--qxai-data=tickets={reviews}"))
    assert config.data == {"reviews": reviews, "lre": None, "tickets": reviews}
    assert run_datasets(config.data) == config.data
    assert run_datasets({}) == {"esnli": None, "ecqa": None, "lre": None}


@pytest.mark.parametrize(("argument", "message"), [
    ("mixed=mixed.jsonl", "--qxai-data mixed: {root}/mixed.jsonl:2: an NLI record (premise, hypothesis) after "
                          "classification records (line 1): one format per file"),
    ("one=one.jsonl", "--qxai-data one: {root}/one.jsonl:1: every item has the label 'good': a classification "
                      "needs at least two labels (add items of another label, or a label_set)"),
    ("meh=meh.jsonl", "--qxai-data meh: {root}/meh.jsonl:2: label 'meh' is not in the label set (good, bad)"),
    ("reviews", "--qxai-data 'reviews': write NAME=PATH (e.g. sentiment=reviews.jsonl), or a bundled name alone "
                "(esnli, ecqa, lre)"),
    ("lre=few.jsonl", "--qxai-data lre: {root}/few.jsonl:1: relation 'capital': 3 sample(s) with distinct subjects, "
                      "but at least 4 are needed: the knowledge suites show 3 as in-context demonstrations and test "
                      "the others"),
    ("lre=field.jsonl", "--qxai-data lre: {root}/field.jsonl:1: relation 'capital': field 'prompt_templates': "
                        "template '{{}} is in {{country}}' must contain '{{}}' exactly once and no other format "
                        "field (write '{{{{' and '}}}}' for literal braces)"),
])
def test_bad_data_stops_the_run_before_any_model_loads(pytester: pytest.Pytester, argument: str, message: str) -> None:
    write(pytester.path, [{"id": 1, "text": "a", "label": "good"},
                          {"id": 2, "premise": "p", "hypothesis": "h", "label": "entailment"}], "mixed.jsonl")
    write(pytester.path, [{"id": 1, "text": "a", "label": "good"}], "one.jsonl")
    write(pytester.path, [{"id": 1, "text": "a", "label": "good", "label_set": ["good", "bad"]},
                          {"id": 2, "text": "b", "label": "meh"}], "meh.jsonl")
    relation = {"name": "capital", "prompt_templates": ["The capital of {} is"], "samples": [
        {"subject": s, "object": o} for s, o in (("Peru", "Lima"), ("Chile", "Santiago"), ("Peru", "Cusco"),
                                                 ("Cuba", "Havana"))],
                "properties": {"relation_type": "factual", "domain_name": "country", "range_name": "city"}}
    write(pytester.path, [relation], "few.jsonl")
    write(pytester.path, [{**relation, "prompt_templates": ["{} is in {country}"]}], "field.jsonl")
    pytester.makepyfile(test_x="def test_x(): pass")
    run = pytester.runpytest_inprocess(f"--qxai-data={argument}", "--qxai-device=cpu", "-p", "no:cacheprovider")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert message.format(root=pytester.path) in run.stderr.str()


# --- every suite on the worked example ----------------------------------------------------------------------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_runtime(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from test_arch import tiny_runtime_at

    return tiny_runtime_at(tmp_path_factory.mktemp("tiny"))


def test_every_suite_runs_on_the_worked_example_or_says_why_not(
        tiny_runtime: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_arch import tiny_pair
    from tiny import shorten_suites

    shorten_suites(monkeypatch)
    from pytest_qxai.methods import (attribution, counterfactual, faithfulness, knowledge, multihop, neurons, nle,
                                     probes, task)

    labels = tiny_runtime.encode([" positive", " negative"], add_special_tokens=False)
    assert all(len(ids) > 1 for ids in labels)  # several tokens per label under the tiny tokenizer
    pair = tiny_pair(tiny_runtime, make_config(samples=4, data={"sentiment": EXAMPLE}))
    ids = [f"sentiment:{it.id}" for it in load_classification(4, 0, EXAMPLE)]
    found = task.run_task_accuracy(pair)
    assert found.item_ids == ids and set(found.reference) == {"label_accuracy", "label_agreement"}
    assert found.skipped["esnli_accuracy"] == "not applicable: no e-SNLI data in this run (sentiment)"
    assert found.quantized["label_agreement"].tolist() == [1.0] * 4
    plain = [it.id for it in load_classification(4, 0, EXAMPLE)]  # one labelled dataset: plain ids
    explained = attribution.run_attribution(pair)
    assert explained.item_ids == plain
    for metric in attribution.OCCLUSION_METRICS:
        if metric.name not in explained.skipped:
            np.testing.assert_allclose(*explained.values(metric.name), atol=1e-6, err_msg=metric.name)
    at_chance = "not applicable: reference at chance on sentiment"  # 4 items: even 4 correct has p = 1/16 > 0.05
    absent = {"": "not applicable: no e-SNLI data in this run (sentiment)",
              "ecqa_": "not applicable: no multiple-choice (ECQA) data in this run (sentiment)"}
    results = {}
    for run, suite_metrics, label_metrics, dependent in (
            (nle.run_nle, nle.NLE_METRICS, nle.LABEL_METRICS, []),
            (faithfulness.run_nle_faithfulness, faithfulness.NLE_FAITHFULNESS_METRICS, faithfulness.LABEL_METRICS,
             faithfulness.TASK_DEPENDENT),
            (counterfactual.run_counterfactual, counterfactual.COUNTERFACTUAL_METRICS, counterfactual.LABEL_METRICS,
             ["self_flip", "validity"]),
            (probes.run_probes, probes.PROBES_METRICS, probes.LABEL_METRICS, [])):
        result = results[run.__name__] = run(pair)
        assert result.item_ids == ids, run
        ours = {m.name for m in label_metrics.values()}
        for metric in suite_metrics:  # the e-SNLI and ECQA metrics say why not, in one line each
            if metric.name not in ours:
                prefix = "ecqa_" if metric.name.startswith("ecqa_") else ""
                assert result.skipped[metric.name] == absent[prefix], (run, metric.name)
        gated = ours - set(result.skipped)
        assert gated and set(result.reference) <= ours, run
        for name in gated:  # identical models: identical per-item values on every unit
            np.testing.assert_allclose(*result.values(name), atol=1e-5, err_msg=f"{run} {name}")
        for metric in dependent:  # metrics that explain a label: only with a reference above chance
            assert result.skipped[label_metrics[metric].name].startswith(at_chance), (run, metric)
    assert results["run_nle"].skipped["label_gold_similarity"] == "not applicable: no gold explanations in sentiment"
    reason = ("not applicable: this run's datasets (sentiment) have no relations (subject-object facts); the suite "
              "needs LRE relations (--qxai-data lre for the bundled ones, or lre=PATH)")
    for run, metrics in ((knowledge.run_knowledge, knowledge.KNOWLEDGE_METRICS),
                         (neurons.run_neurons, neurons.NEURONS_METRICS),
                         (multihop.run_multihop, multihop.MULTIHOP_METRICS)):
        assert run(pair).skipped == dict.fromkeys([m.name for m in metrics], reason)


def test_several_labelled_datasets_share_a_suite_with_prefixed_ids(
        tiny_runtime: Any, make_config: Any, tmp_path: Path) -> None:
    from test_arch import tiny_pair

    from pytest_qxai.methods import attribution

    tickets = write(tmp_path, [{"id": i, "text": t, "label": lab, "explanations": ["gold"]} for i, (t, lab) in
                               enumerate([("The printer is broken.", "hardware"), ("I forgot my password.", "account"),
                                          ("The screen flickers.", "hardware"), ("Reset my login.", "account")])])
    pair = tiny_pair(tiny_runtime, make_config(samples=2, data={"sentiment": EXAMPLE, "tickets": tickets}))
    result = attribution.run_attribution(pair)
    assert [i.split(":")[0] for i in result.item_ids] == ["sentiment"] * 2 + ["tickets"] * 2
    assert result.notes["datasets"] == ["sentiment", "tickets"]


def test_gold_explanations_of_some_files_are_compared_and_e_snli_keeps_its_own_metrics(
        tiny_runtime: Any, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Classification files share the ``label_`` metrics; gold metrics are units only where a file has gold."""
    from test_arch import tiny_pair
    from tiny import shorten_suites

    from pytest_qxai.methods import nle, probes

    shorten_suites(monkeypatch)
    tickets = write(tmp_path, [{"id": i, "text": t, "label": lab, "explanations": ["The device is faulty."]}
                               for i, (t, lab) in enumerate([("The printer is broken.", "hardware"),
                                                             ("I forgot my password.", "account")])])
    pair = tiny_pair(tiny_runtime, make_config(samples=2, data={"esnli": None, "sentiment": EXAMPLE,
                                                                "tickets": tickets}))
    result = nle.run_nle(pair)
    assert [i.split(":")[0] for i in result.item_ids[2:]] == ["sentiment"] * 2 + ["tickets"] * 2
    gold = result.reference["label_gold_similarity"], result.quantized["label_gold_similarity"]
    for side in gold:  # NaN (not a unit) on the file without gold, a value on the one with it
        assert np.isnan(side[:4]).all() and not np.isnan(side[4:]).any()
    assert np.isnan(result.reference["gold_similarity"][2:]).all() and not np.isnan(
        result.reference["gold_similarity"][:2]).any()  # e-SNLI's own metric: its items only
    assert set(result.notes["precondition"]) == {"e-SNLI", "sentiment, tickets"}
    found = probes.run_probes(pair)  # one item per label in each file: no cross-validated probe, one line why
    assert found.skipped["label_probe_transfer_accuracy"] == (
        "2 sentiment items give too few per label for cross-validated probes (smallest label count 1, "
        "at least 2 of two labels needed); 2 tickets items give too few per label for cross-validated probes "
        "(smallest label count 1, at least 2 of two labels needed)")
    assert not np.isnan(found.quantized["label_representation_cosine"][2:]).any()


def test_a_run_on_a_classification_file_gates_label_checks_and_says_why_not_for_the_rest(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    """End to end (probes suite, tiny model): ``label_`` checks gate, the e-SNLI ones are SKIPPED with one reason."""
    from tiny import build_tiny_model

    from pytest_qxai.models import pair

    model = build_tiny_model(tmp_path)
    suite = Path(__file__).resolve().parents[1] / "suites" / "test_probes.py"
    pair._PAIRS.clear()
    result = pytester.runpytest(
        str(suite), f"--qxai-model={model}", "--quant=none", "--qxai-device=cpu", "--qxai-skip-sanity",
        f"--qxai-cache-dir={tmp_path / 'cache'}", f"--qxai-data=sentiment={EXAMPLE}", "--qxai-samples=8",
        f"--qxai-baseline-dir={tmp_path / 'baselines'}", "--qxai-update-baselines",
        f"--qxai-report-json={tmp_path / 'r.json'}", "-p", "no:cacheprovider", "-p", "no:randomly", "-rs")
    pair._PAIRS.clear()
    # 8 items cannot show equivalence within the bands: a check may be inconclusive, never a usage error
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*SKIPPED*not applicable: no e-SNLI data in this run (sentiment)"])
    checks = {c["metric"]: c for c in json.loads((tmp_path / "r.json").read_text())["checks"]
              if c["suite"] == "probes" and c["kind"] == "vs_reference"}
    assert {m for m, c in checks.items() if c["verdict"] != "skipped"} == {
        "label_probe_transfer_accuracy", "label_probe_retrained_accuracy", "label_representation_cosine",
        "label_worst_layer_cosine"}
    assert all(c["n"] == 8 for m, c in checks.items() if m.startswith("label_"))


def test_ecqa_chance_is_one_over_each_items_own_option_count(
        tiny_runtime: Any, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of two-option questions is tested against chance 0.5 (was 1/5 whatever the file held)."""
    from test_arch import tiny_pair
    from tiny import shorten_suites

    from pytest_qxai.methods import nle, task

    shorten_suites(monkeypatch)
    questions = write(tmp_path, [{"id": i, "question": f"Is {i} even?", "options": ["yes", "no"],
                                  "answer": ["yes", "no"][i % 2]} for i in range(6)]
                      + [{"id": 6, "question": "Which?", "options": ["a", "b", "c", "d"], "answer": "a"}])
    pair = tiny_pair(tiny_runtime, make_config(samples=4, data={"ecqa": questions}))
    assert task.ecqa_chance(pair, 7) == pytest.approx((6 * 0.5 + 0.25) / 7)
    assert task.run_task_accuracy(pair).notes["chance"]["ecqa"] == task.ecqa_chance(pair, 4)
    precondition = nle.run_nle(pair).notes["precondition"]["ECQA"]
    assert precondition["chance"] == task.ecqa_chance(pair, precondition["n"])
