"""Bundled datasets, their loaders, user-file validation and profile sizes."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_qxai import datasets as ds
from pytest_qxai.errors import DatasetError, QxaiUsageError
from pytest_qxai.config import PROFILES
from pytest_qxai.methods import standard_suites
from pytest_qxai.profiles import suite_size

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

NLI = {"id": "a", "premise": "A dog runs.", "hypothesis": "An animal moves.", "label": "entailment",
       "explanations": ["A dog is an animal."]}
MCQ = {"id": "q1", "question": "Where is a fish?", "options": ["water", "sky", "desk", "car", "moon"],
       "answer": "water", "explanation": "Fish live in water."}
RELATION = {"name": "country capital city", "prompt_templates": ["The capital of {} is"],
            "prompt_templates_zs": ["What is the capital of {}? It is"],
            "properties": {"relation_type": "factual", "domain_name": "country", "range_name": "city",
                           "symmetric": False},
            "samples": [{"subject": "Brazil", "object": "Bras\\u00edlia"}, {"subject": "Peru", "object": "Lima"},
                        {"subject": "Chile", "object": "Santiago"}, {"subject": "Ecuador", "object": "Quito"}]}


def jsonl(*records: Any) -> str:
    """JSONL text of the given records."""
    return "".join(json.dumps(r) + "\n" for r in records)


def write(tmp_path: Path, content: str | bytes, name: str = "data.jsonl") -> Path:
    """Write ``content`` to a file under ``tmp_path`` and return its path."""
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


# --- bundled data --------------------------------------------------------------------------------------------

def test_bundled_types_and_counts() -> None:
    nli = ds.load_esnli(None, 0)
    assert len(nli) == 1200 and all(isinstance(it, ds.NLIItem) for it in nli)
    assert Counter(it.label for it in nli) == {label: 400 for label in ds.NLI_LABELS}
    assert all(len(it.explanations) == 3 and it.id.startswith("esnli-test-") for it in nli)
    mcq = ds.load_ecqa(None, 0)
    assert len(mcq) == 800 and all(isinstance(it, ds.MCQItem) for it in mcq)
    assert all(len(it.options) == 5 == len(set(it.options)) and it.answer in it.options for it in mcq)
    assert all(it.explanation and it.positives for it in mcq)
    relations = ds.load_relations()
    assert len(relations) == 40
    assert Counter(r.relation_type for r in relations) == {"factual": 26, "commonsense": 8, "linguistic": 6}
    assert all(isinstance(f, ds.Fact) for r in relations for f in r.samples)
    calibration = ds.load_calibration(None, 0)
    assert len(calibration) == 256 and all(60 <= len(text.split()) <= 120 for text in calibration)


def test_bundled_ids_unique_and_relations_unique() -> None:
    for path in (ds.ESNLI_PATH, ds.ECQA_PATH, ds.CALIBRATION_PATH):
        ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(ids) == len(set(ids)), path
    relations = ds.load_relations()
    assert len({r.key for r in relations}) == len({r.name for r in relations}) == len(relations)
    for relation in relations:
        subjects = [f.subject for f in relation.samples]
        assert len(subjects) == len(set(subjects)), relation.key


def test_every_bundled_dir_has_license_and_attribution() -> None:
    folders = [p for p in ds.DATA_DIR.iterdir() if p.is_dir()]
    assert {p.name for p in folders} == {"esnli", "ecqa", "lre", "calibration", "twohop"}
    for folder in folders:
        assert (folder / "LICENSE").stat().st_size > 500, folder
        attribution = (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")
        if folder.name == "twohop":  # hand-written compositions of the bundled LRE relations
            assert "LRE" in attribution, folder
        else:
            assert "tools/build_data.py" in attribution and "commit" in attribution, folder


def test_bundled_data_is_small() -> None:
    assert sum(p.stat().st_size for p in ds.DATA_DIR.rglob("*") if p.is_file()) < 6_000_000


def test_calibration_is_disjoint_from_evaluation_data() -> None:
    calibration = " ".join(ds.load_calibration(None, 0))
    assert all(it.premise not in calibration and it.explanations[0] not in calibration
               for it in ds.load_esnli(None, 0))
    assert all(it.explanation not in calibration for it in ds.load_ecqa(None, 0))


def test_brasilia_repair() -> None:
    raw = (ds.LRE_DIR / "factual" / "country_capital_city.json").read_text(encoding="utf-8")
    assert "Brasília" in raw and "Bogotá" in raw and "\\u" not in raw
    capitals = {f.subject: f for f in ds.load_relations(["country_capital_city"])[0].samples}
    assert capitals["Brazil"].object == "Brasília" and capitals["Brazil"].names == ("Brasília", "Brasilia")
    assert capitals["Colombia"].object == "Bogotá"
    assert not any("\\u" in name for r in ds.load_relations() for f in r.samples for name in (f.subject, *f.names))


def test_user_relation_files_are_repaired_and_merged(tmp_path: Path) -> None:
    relation = {**RELATION, "samples": [*RELATION["samples"], {"subject": "Peru ", "object": "Lima "},
                                        {"subject": "Bolivia", "object": "Sucre"},
                                        {"subject": "Bolivia", "object": "La Paz"}]}
    for path in (write(tmp_path, jsonl(relation)), write(tmp_path, json.dumps(relation, indent=2), "capitals.json")):
        (loaded,) = ds.load_relations(path=path)
        facts = {f.subject: f for f in loaded.samples}
        assert facts["Brazil"].object == "Brasília"
        assert facts["Peru"] == ds.Fact("Peru", "Lima")
        assert facts["Bolivia"].names == ("Sucre", "La Paz")
    assert ds.load_relations(path=tmp_path / "data.jsonl")[0].key == "country_capital_city"
    assert ds.load_relations(path=tmp_path / "capitals.json")[0].key == "capitals"


def test_relation_lookup_by_key_or_name() -> None:
    by_key = ds.load_relations(["country_capital_city", "adj_antonym"])
    assert [r.key for r in by_key] == ["country_capital_city", "adj_antonym"]
    assert ds.load_relations(["adjective antonym"]) == by_key[1:]
    with pytest.raises(DatasetError, match="unknown relation.*'no_such'"):
        ds.load_relations(["no_such"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="source datasets not available")
def test_bundled_subsets_are_reproducible(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_data", ROOT / "tools" / "build_data.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.main(["--src", str(SHARED), "--out", str(tmp_path)])
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    bundled = sorted(p.relative_to(ds.DATA_DIR) for p in ds.DATA_DIR.rglob("*")
                     if p.is_file() and p.name not in ("LICENSE", "ATTRIBUTION.md")
                     and p.relative_to(ds.DATA_DIR).parts[0] != "twohop")  # hand-written compositions
    assert built == bundled
    assert all((tmp_path / p).read_bytes() == (ds.DATA_DIR / p).read_bytes() for p in built)


# --- selection ---------------------------------------------------------------------------------------------

@functools.cache
def relations() -> list[ds.Relation]:
    """The bundled relations, loaded once."""
    return ds.load_relations()


LOADERS: dict[str, Callable[[int | None, int], list[Any]]] = {
    "esnli": ds.load_esnli,
    "ecqa": ds.load_ecqa,
    "calibration": ds.load_calibration,
    "facts": lambda n, seed: [(r.key, f) for r, f in ds.select_facts(relations(), n, seed)],
}


@pytest.mark.parametrize("name", LOADERS)
def test_selection_is_deterministic_and_nested(name: str) -> None:
    load = LOADERS[name]
    for seed in (0, 1, 12345):
        large = load(None, seed)
        assert load(None, seed) == large
        for n in (1, 6, 16, 24, 120, 300):
            assert load(n, seed) == large[:n]
    assert load(50, 0) != load(50, 1)
    assert sorted(map(repr, load(None, 0))) == sorted(map(repr, load(None, 7)))


def test_profiles_are_nested_for_every_suite() -> None:
    items = ds.load_esnli(None, 3)
    for suite, budget in [(s.name, b) for s in standard_suites() for b in (None, *s.budgets)]:
        sizes = [suite_size(suite, profile, budget=budget) for profile in PROFILES]
        selections = [ds.load_esnli(n, 3) for n in sizes]
        assert selections[0] == selections[1][: sizes[0]] and selections[1] == selections[2][: sizes[1]]
        assert selections[2] == items[: sizes[2]]


@pytest.mark.parametrize("n", [1, 2, 3, 6, 16, 24, 100, 300, 1200])
def test_nli_selection_is_label_stratified(n: int) -> None:
    counts = Counter(it.label for it in ds.load_esnli(n, 5))
    assert sum(counts.values()) == n
    assert max(counts.values()) - min(counts.get(label, 0) for label in ds.NLI_LABELS) <= 1


def test_calibration_alternates_sources() -> None:
    texts = ds.load_calibration(10, 0)
    bundled = {json.loads(line)["text"]: json.loads(line)["source"]
               for line in ds.CALIBRATION_PATH.read_text(encoding="utf-8").splitlines()}
    assert Counter(bundled[text] for text in texts) == {"esnli-dev": 5, "ecqa-val": 5}


def test_facts_selection_takes_turns_across_relations() -> None:
    relations = ds.load_relations()
    pairs = ds.select_facts(relations, len(relations), 0)
    assert len({relation.key for relation, _ in pairs}) == len(relations)


def test_n_beyond_supply_and_negative_n() -> None:
    assert len(ds.load_ecqa(5000, 0)) == 800
    assert ds.load_esnli(0, 0) == []
    with pytest.raises(ValueError):
        ds.load_esnli(-1, 0)


def test_user_file_order_does_not_change_selection(tmp_path: Path) -> None:
    records = [{**NLI, "id": f"x{i}", "label": ds.NLI_LABELS[i % 3]} for i in range(30)]
    forward = ds.load_esnli(9, 4, write(tmp_path, jsonl(*records), "a.jsonl"))
    backward = ds.load_esnli(9, 4, write(tmp_path, jsonl(*reversed(records)), "b.jsonl"))
    assert forward == backward


# --- fingerprints ------------------------------------------------------------------------------------------

def test_fingerprint_is_stable_and_tracks_content() -> None:
    items = ds.load_esnli(24, 0)
    base = ds.dataset_fingerprint(items)
    assert base == ds.dataset_fingerprint(ds.load_esnli(24, 0)) == ds.dataset_fingerprint(list(items))
    assert len(base) == 16
    changed = [dataclasses.replace(items[0], explanations=(*items[0].explanations[:2], "other")), *items[1:]]
    assert ds.dataset_fingerprint(changed) != base
    assert ds.dataset_fingerprint([dataclasses.replace(items[0], label="neutral"), *items[1:]]) != base
    assert ds.dataset_fingerprint(items[::-1]) != base
    assert ds.dataset_fingerprint(items[:23]) != base
    assert ds.dataset_fingerprint(ds.load_esnli(24, 1)) != base


def test_fingerprint_of_facts_and_texts() -> None:
    relations = ds.load_relations()
    pairs = ds.select_facts(relations, 50, 0)
    assert ds.dataset_fingerprint(pairs) == ds.dataset_fingerprint(ds.select_facts(ds.load_relations(), 50, 0))
    relation, fact = pairs[0]
    edited = dataclasses.replace(relation, templates=("{} is",))
    assert ds.dataset_fingerprint([(edited, fact), *pairs[1:]]) != ds.dataset_fingerprint(pairs)
    texts = ds.load_calibration(8, 0)
    assert ds.dataset_fingerprint(texts) != ds.dataset_fingerprint([texts[0] + " ", *texts[1:]])


def test_fingerprint_changes_when_a_user_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, jsonl(NLI, {**NLI, "id": "b"}))
    before = ds.dataset_fingerprint(ds.load_esnli(None, 0, path))
    write(tmp_path, jsonl(NLI, {**NLI, "id": "b", "hypothesis": "A cat sleeps."}))
    assert ds.dataset_fingerprint(ds.load_esnli(None, 0, path)) != before


# --- user files --------------------------------------------------------------------------------------------

def test_user_files_load(tmp_path: Path) -> None:
    nli = ds.load_esnli(None, 0, write(tmp_path, "\n" + jsonl(NLI, {**NLI, "id": 7}) + "  \n\n"))
    assert sorted(it.id for it in nli) == ["7", "a"]
    crlf_bom = b"\xef\xbb\xbf" + jsonl(MCQ, {**MCQ, "id": "q2", "positives": ["x"]}).replace("\n", "\r\n").encode()
    mcq = ds.load_ecqa(None, 0, write(tmp_path, crlf_bom))
    assert {it.id: it.positives for it in mcq} == {"q1": (), "q2": ("x",)}
    spaced = {**MCQ, "question": "  Where\n is a  fish? ", "answer": " water"}
    assert ds.load_ecqa(None, 0, write(tmp_path, jsonl(spaced)))[0].question == "Where is a fish?"


BAD_NLI = [
    ("", 0, "no items"),
    ("\n  \n\r\n", 0, "no items"),
    (jsonl(NLI) + '{"id": "b", "premise": \n', 2, "invalid JSON"),
    (jsonl(NLI) + "\n" + "[1, 2]\n", 3, "expected a JSON object, got list"),
    (jsonl({k: v for k, v in NLI.items() if k != "hypothesis"}), 1, "missing field(s) hypothesis"),
    (jsonl(NLI, {**NLI, "id": "b", "label": "Entailment"}), 2, "'label' must be one of entailment, neutral"),
    (jsonl({**NLI, "label": 0}), 1, "'label' must be one of"),
    (jsonl({**NLI, "explanations": "because"}), 1, "'explanations' must be a list"),
    (jsonl({**NLI, "premise": "  "}), 1, "'premise' must be a non-empty string"),
    (jsonl({**NLI, "id": None}), 1, "'id' must be a non-empty string"),
    (jsonl(NLI, NLI), 2, "duplicate id 'a' (first on line 1)"),
    ("[" * 100_000 + "\n", 1, "invalid JSON"),
    (jsonl(NLI) + jsonl(NLI)[:-2].replace('"id": "a"', '"id": "b"') + ', "label": "neutral"}\n', 2,
     "key 'label' appears twice in one object"),
]


@pytest.mark.parametrize(("content", "line", "message"), BAD_NLI)
def test_user_nli_validation(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DatasetError) as info:
        ds.load_esnli(10, 0, path)
    text = str(info.value)
    assert "\n" not in text and message in text
    assert text.startswith(f"{path}:{line}: " if line else f"{path}: ")


BAD_MCQ = [
    (jsonl({**MCQ, "answer": "land"}), 1, "answer 'land' is not one of the options"),
    (jsonl({**MCQ, "options": ["water", "water", "sky"]}), 1, "'options' has duplicates"),
    (jsonl({**MCQ, "options": ["water"]}), 1, "'options' must be a list of at least 2"),
    (jsonl({**MCQ, "positives": "x"}), 1, "'positives' must be a list"),
    (jsonl({k: v for k, v in MCQ.items() if k not in ("explanation", "answer")}), 1,
     "missing field(s) answer (required: id, question, options, answer)"),
]


@pytest.mark.parametrize(("content", "line", "message"), BAD_MCQ)
def test_user_mcq_validation(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DatasetError) as info:
        ds.load_ecqa(10, 0, path)
    assert str(info.value).startswith(f"{path}:{line}: ") and message in str(info.value)


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, jsonl(NLI).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DatasetError, match=r":3: not valid UTF-8 \(byte 0xff at column 9\)$"):
        ds.load_esnli(None, 0, path)


def test_missing_file_and_multiline_values_stay_on_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read the file"):
        ds.load_esnli(None, 0, tmp_path / "absent.jsonl")
    path = write(tmp_path, jsonl({**NLI, "label": "ent\nailment"}))
    with pytest.raises(DatasetError) as info:
        ds.load_esnli(None, 0, path)
    assert "\n" not in str(info.value) and "'ent\\nailment'" in str(info.value)


BAD_RELATIONS = [
    ({**RELATION, "prompt_templates": ["The capital is"]}, "must contain '{}' exactly once"),
    ({**RELATION, "prompt_templates": ["{} is part of {country}"]}, "relation 'country capital city': field "
     "'prompt_templates': template '{} is part of {country}' must contain '{}' exactly once and no other format field"),
    ({**RELATION, "prompt_templates_zs": ["{{}} is the capital"]},
     "field 'prompt_templates_zs': template '{{}} is the capital' must contain '{}' exactly once"),
    *(({**RELATION, "prompt_templates": [template]}, f"template {template!r} must contain '{{}}' exactly once")
      for template in ("{0} is", "{!r} is", "{:>9} is", "{} and {}", "{} is {", "{} is }")),
    ({**RELATION, "samples": RELATION["samples"][: ds.DEMONSTRATIONS]},
     f"relation 'country capital city': {ds.DEMONSTRATIONS} sample(s) with distinct subjects, but at least "
     f"{ds.DEMONSTRATIONS + 1} are needed: the knowledge suites show {ds.DEMONSTRATIONS} as in-context "
     "demonstrations"),
    ({**RELATION, "samples": [*RELATION["samples"][:1] * 5, *RELATION["samples"][1: ds.DEMONSTRATIONS]]},
     f"{ds.DEMONSTRATIONS} sample(s) with distinct subjects"),
    ({**RELATION, "samples": [*RELATION["samples"][:-1], {"subject": "Ecuador", "object": "Qui\ud800to"}]},
     "samples[3]: field 'object' is not valid Unicode: lone surrogate '\\ud800' at character 4"),
    ({**RELATION, "properties": None}, "'properties' must be an object"),
    ({**RELATION, "samples": []}, "'samples' must be a non-empty list"),
    ({**RELATION, "samples": [{"subject": "Peru"}]}, "samples[0]: field 'object' must be a non-empty string"),
    ({k: v for k, v in RELATION.items() if k != "name"}, "field 'name' must be a non-empty string"),
]


@pytest.mark.parametrize(("relation", "message"), BAD_RELATIONS)
def test_user_relation_validation(tmp_path: Path, relation: dict[str, Any], message: str) -> None:
    path = write(tmp_path, "\n" + jsonl(relation))
    with pytest.raises(DatasetError) as info:
        ds.load_relations(path=path)
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)
    json_path = write(tmp_path, json.dumps(relation), "relation.json")
    with pytest.raises(DatasetError, match=f"^{re.escape(str(json_path))}: .*{re.escape(message)}"):
        ds.load_relations(path=json_path)


def test_relation_file_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    text = json.dumps(RELATION).replace('"object": "Lima"', '"object": "Lima", "object": "Cusco"')
    for path in (write(tmp_path, text + "\n"), write(tmp_path, text, "relation.json")):
        with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}(:1)?: key 'object' appears twice in one object$"):
            ds.load_relations(path=path)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["{}", "{", "}", "{{", "}}", "{x}", "{0}", "{!r}", "{:>3}", " is ", "x"]),
                         min_size=1, max_size=4).map("".join), min_size=1, max_size=2),
       st.integers(0, 6))
def test_accepted_relations_give_knowledge_items(templates: list[str], extra: int) -> None:
    """A relation the loader accepts has facts left beside the demonstrations, and templates that place the subject."""
    from pytest_qxai.methods.knowledge import recall_items

    samples = [{"subject": f"S{i}", "object": f"O{i}"} for i in range(ds.DEMONSTRATIONS - 2 + extra)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lre.jsonl"
        path.write_text(jsonl({**RELATION, "prompt_templates": templates, "samples": samples}), encoding="utf-8")
        try:
            (relation,) = ds.load_relations(path=path)
        except DatasetError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(f"{path}:1: ")
            return
        tested = len(relation.samples) - ds.DEMONSTRATIONS
        assert tested > 0
        pair = SimpleNamespace(config=SimpleNamespace(seed=0, data={"lre": path}))
        assert len(recall_items(pair, tested)) == tested  # type: ignore[arg-type]
    for template in relation.templates:
        assert template.format("\x00S\x00").count("\x00S\x00") == 1


LONE_SURROGATE = st.tuples(st.text(max_size=3), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                           st.text(max_size=3)).map("".join)
CLASS = {"id": "a", "text": "t", "label": "x", "label_set": ["x", "y"], "explanations": ["e"]}
STRING_FIELDS = [  # (loader, a valid record, the field given a lone surrogate, how the message names it)
    *(("classification", CLASS, field, f"field '{field}'")
      for field in ("id", "text", "label", "label_set[1]", "explanations[0]")),
    *(("esnli", NLI, field, f"field '{field}'") for field in ("id", "premise", "hypothesis", "explanations[0]")),
    *(("ecqa", {**MCQ, "positives": ["p"]}, field, f"field '{field}'")
      for field in ("id", "question", "options[2]", "answer", "explanation", "positives[0]")),
    *(("calibration", {"id": "c", "text": "t", "source": "s"}, field, f"field '{field}'")
      for field in ("id", "text", "source")),
    ("lre", RELATION, "name", "field 'name'"),
    ("lre", RELATION, "prompt_templates[0]", "field 'prompt_templates[0]'"),
    ("lre", RELATION, "properties.domain_name", "field 'domain_name'"),
    ("lre", RELATION, "samples[1].subject", "samples[1]: field 'subject'"),
]
BY_FORMAT: dict[str, Callable[[Path], list[Any]]] = {
    "classification": lambda p: ds.load_classification(None, 0, p), "esnli": lambda p: ds.load_esnli(None, 0, p),
    "ecqa": lambda p: ds.load_ecqa(None, 0, p), "calibration": lambda p: ds.load_calibration(None, 0, p),
    "lre": lambda p: ds.load_relations(path=p),
}


def replaced(value: Any, field: str, new: str) -> Any:
    """A copy of ``value`` with the string at ``field`` (``name``, ``name[i]``, ``a.b``, ``a[i].b``) set to ``new``."""
    head, _, rest = field.partition(".")
    name, _, index = head.partition("[")
    inner = value[name] if not index else value[name][int(index[:-1])]
    inner = replaced(inner, rest, new) if rest else new
    if index:
        inner = [*value[name][: int(index[:-1])], inner, *value[name][int(index[:-1]) + 1:]]
    return {**value, name: inner}


@pytest.mark.parametrize(("loader", "record", "field", "named"), STRING_FIELDS,
                         ids=[f"{case[0]}-{case[2]}" for case in STRING_FIELDS])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=LONE_SURROGATE)
def test_a_lone_surrogate_is_refused_naming_file_line_and_field(
        tmp_path: Path, loader: str, record: dict[str, Any], field: str, named: str, bad: str) -> None:
    """JSON's \\ud800 escapes decode to text no tokenizer or UTF-8 file takes: refused in every field, one line."""
    changed = replaced({**record, "id": "z"}, field, bad + "{}" * field.startswith("prompt_templates"))
    if field.startswith("options"):
        changed["answer"] = changed["options"][2]
    path = write(tmp_path, jsonl(record, changed))
    with pytest.raises(DatasetError) as info:
        BY_FORMAT[loader](path)
    text = str(info.value)
    assert text.startswith(f"{path}:2: ") and f"{named} is not valid Unicode: lone surrogate " in text
    assert "\n" not in text and text.isprintable()


def test_relation_file_json_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "name": "x",\n  oops\n}\n', "bad.json")
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}:3: invalid JSON"):
        ds.load_relations(path=path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no relation files"):
        ds.load_relations(path=tmp_path / "empty")


# --- property tests: the user-file loaders never raise anything but DatasetError ---------------------------

USER_LOADERS: list[Callable[[Path], list[Any]]] = [
    lambda p: ds.load_esnli(None, 0, p),
    lambda p: ds.load_ecqa(None, 0, p),
    lambda p: ds.load_calibration(None, 0, p),
    lambda p: ds.load_relations(path=p),
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["id", "premise", "hypothesis", "label", "explanations", "question", "options", "answer", "explanation",
          "positives", "text", "source", "name", "prompt_templates", "prompt_templates_zs", "properties", "samples"]
RECORDS = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.sampled_from(
    [*ds.NLI_LABELS, "water", ["water", "sky"], ["x {}"], {"relation_type": "f", "domain_name": "d", "range_name": "r"},
     [{"subject": "s", "object": "o"}], [{"subject": f"s{i}", "object": "o"} for i in range(4)]]),
    max_size=len(FIELDS))


def check_loaders(data: bytes) -> None:
    """Every user-file loader either returns items or raises DatasetError with a one-line message."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "user.jsonl"
        path.write_bytes(data)
        for load in USER_LOADERS:
            try:
                assert isinstance(load(path), list)
            except DatasetError as exc:
                assert "\n" not in str(exc) and str(path) in str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_dataset_errors(data: bytes) -> None:
    check_loaders(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=40), max_size=5))
def test_arbitrary_text_raises_only_dataset_errors(lines: list[str]) -> None:
    check_loaders("\n".join(lines).encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORDS, min_size=1, max_size=4), st.sampled_from(["\n", "\r\n", "\n\n"]))
def test_arbitrary_records_raise_only_dataset_errors(records: list[dict[str, Any]], newline: str) -> None:
    check_loaders(newline.join(json.dumps(r) for r in records).encode("utf-8", "surrogatepass"))


# --- profiles ----------------------------------------------------------------------------------------------

def test_every_standard_suite_states_growing_item_counts_per_profile() -> None:
    suites = standard_suites()
    assert {s.name for s in suites} == {"task_accuracy", "nle", "nle_faithfulness", "counterfactual", "attribution",
                                        "knowledge", "neurons", "multihop", "probes"}
    for counts in [c for s in suites for c in (s.sizes, *s.budgets.values())]:
        smoke, standard, full = (counts[p] for p in PROFILES)
        assert 0 < smoke < standard < full
    assert suite_size("nle_faithfulness", "smoke", budget="cc_shap") == 6
    assert suite_size("task_accuracy", "standard") == 300
    on_esnli = [s for s in suites if s.name in ("task_accuracy", "nle", "nle_faithfulness", "counterfactual",
                                                "attribution")]
    assert max(c["full"] for s in on_esnli for c in (s.sizes, *s.budgets.values())) <= len(ds.load_esnli(None, 0))


def test_suite_size() -> None:
    standard_suites()
    assert suite_size("nle", "standard") == 120
    assert suite_size("nle", "smoke", samples_override=5) == 5
    with pytest.raises(QxaiUsageError, match="unknown profile"):
        suite_size("nle", "huge")
    with pytest.raises(QxaiUsageError, match="unknown suite"):
        suite_size("nope", "smoke")


def test_no_torch_import() -> None:
    code = ("import sys, pytest_qxai.datasets, pytest_qxai.profiles, pytest_qxai.methods as m; m.standard_suites(); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
