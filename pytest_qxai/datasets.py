"""Bundled evaluation data (e-SNLI, ECQA, LRE relations, calibration text) and validated loaders (no torch import).

Selection is deterministic and nested: items are ranked by a hash of ``(seed, id)`` (within label strata that
take turns for NLI), and ``n`` items are the first ``n`` of that ranking, so a smaller profile's items are
always a prefix of a larger one's for the same seed. User files (``--qxai-data NAME=PATH``) use the bundled
JSONL fields, or the plain classification format (:class:`ClassItem`) under any other name; gold explanations
are optional in every format. Every problem in a file raises :class:`DatasetError` with one line naming the file
and line, a file mixing formats included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .errors import DatasetError
from .storage import stable_hash

T = TypeVar("T")

DATA_DIR = Path(__file__).parent / "data"
ESNLI_PATH = DATA_DIR / "esnli" / "esnli.jsonl"
ECQA_PATH = DATA_DIR / "ecqa" / "ecqa.jsonl"
LRE_DIR = DATA_DIR / "lre"
CALIBRATION_PATH = DATA_DIR / "calibration" / "calibration.jsonl"
NLI_LABELS = ("entailment", "neutral", "contradiction")
BUNDLED_NAMES = ("esnli", "ecqa", "lre")
"""The bundled datasets; a run uses all three unless ``--qxai-data`` names its datasets."""

_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
DEMONSTRATIONS = 3
"""Facts of a relation shown as in-context demonstrations by the knowledge suites (their ``PROMPT["shots"]``): a
relation needs more facts than this."""


@dataclass(frozen=True)
class NLIItem:
    """A premise/hypothesis pair with its gold label and human explanations."""

    id: str
    premise: str
    hypothesis: str
    label: str
    explanations: tuple[str, ...]


@dataclass(frozen=True)
class ClassItem:
    """A text with its gold label, the file's label set and optional human explanations (plain classification)."""

    id: str
    text: str
    label: str
    label_set: tuple[str, ...]
    explanations: tuple[str, ...] = ()


@dataclass(frozen=True)
class MCQItem:
    """A multiple-choice question with its gold answer (one of ``options``) and explanation."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: str
    explanation: str
    positives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fact:
    """A subject–object pair; ``aliases`` are other accepted answers (further objects, ASCII spellings)."""

    subject: str
    object: str
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted answer: the object first, then its aliases."""
        return (self.object, *self.aliases)


@dataclass(frozen=True)
class Relation:
    """An LRE relation: prompt templates (``{}`` = subject), type, domain/range names and unique-subject facts."""

    name: str
    templates: tuple[str, ...]
    templates_zs: tuple[str, ...]
    relation_type: str
    domain: str
    range: str
    samples: tuple[Fact, ...]
    key: str


@dataclass(frozen=True)
class CalibrationText:
    """A plain-text passage for GPTQ/AWQ calibration; ``source`` names the split it came from."""

    id: str
    text: str
    source: str = ""


def seeded_order(
    items: Iterable[T], seed: int, key: Callable[[T], str], stratum: Callable[[T], str] | None = None
) -> list[T]:
    """Items ranked by a hash of (seed, key); with ``stratum``, strata take turns so every prefix is balanced."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(stratum(item) if stratum else "", []).append(item)
    ranked = [sorted(group, key=lambda it: _rank(seed, key(it))) for _, group in sorted(groups.items())]
    ordered: list[T] = []
    for i in range(max((len(group) for group in ranked), default=0)):
        ordered.extend(group[i] for group in ranked if i < len(group))
    return ordered


def _rank(seed: int, key: str) -> bytes:
    """The sort key of one item for one seed."""
    return hashlib.sha256(f"{seed}\x00{key}".encode("utf-8", "surrogatepass")).digest()


def _take(ordered: list[T], n: int | None, what: str = "the data") -> list[T]:
    """The first ``n`` items (all when ``n`` is None or exceeds the supply, which a warning says)."""
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n is not None and n > len(ordered):
        warnings.warn(f"{n} items asked for (--qxai-samples or the profile), but {what} has {len(ordered)}: "
                      f"using all {len(ordered)}", stacklevel=3)
    return ordered if n is None else ordered[:n]


def load_esnli(n: int | None, seed: int, path: Path | None = None) -> list[NLIItem]:
    """``n`` e-SNLI items (all when None), label-stratified, nested across ``n`` for a fixed seed."""
    items = [NLIItem(**record) for record in _read_jsonl(path or ESNLI_PATH, _NLI_SCHEMA)]
    return _take(seeded_order(items, seed, key=lambda it: it.id, stratum=lambda it: it.label), n,
                 f"e-SNLI ({path or 'bundled'})")


def load_classification(n: int | None, seed: int, path: Path) -> list[ClassItem]:
    """``n`` items of a classification file (all when None), label-stratified, nested across ``n`` for a fixed seed."""
    items = _label_sets(path, _read_jsonl(path, _CLASS_SCHEMA, with_lines=True))
    return _take(seeded_order(items, seed, key=lambda it: it.id, stratum=lambda it: it.label), n)


def run_datasets(data: dict[str, Path | None]) -> dict[str, Path | None]:
    """The datasets a run uses, by name (a user file, or None for a bundled one): as given, else the bundled ones."""
    return dict(data) if data else dict.fromkeys(BUNDLED_NAMES)


def not_in_run(data: dict[str, Path | None], needs: str, hint: str) -> str:
    """Why a suite does not apply to this run: its datasets lack what the suite needs."""
    return f"not applicable: this run's datasets ({', '.join(run_datasets(data))}) have no {needs}; {hint}"


def no_relations(data: dict[str, Path | None]) -> str | None:
    """Why the relation suites (knowledge, neurons, multi-hop) do not apply to this run, or None when they do."""
    if "lre" in run_datasets(data):
        return None
    return not_in_run(data, "relations (subject-object facts)",
                      "the suite needs LRE relations (--qxai-data lre for the bundled ones, or lre=PATH)")


def load_ecqa(n: int | None, seed: int, path: Path | None = None) -> list[MCQItem]:
    """``n`` ECQA items (all when None), nested across ``n`` for a fixed seed."""
    items = [MCQItem(**record) for record in _read_jsonl(path or ECQA_PATH, _MCQ_SCHEMA)]
    return _take(seeded_order(items, seed, key=lambda it: it.id), n, f"ECQA ({path or 'bundled'})")


def load_calibration(n: int | None, seed: int, path: Path | None = None) -> list[str]:
    """``n`` calibration passages (all when None), sources taking turns, nested across ``n`` for a fixed seed."""
    items = [CalibrationText(**record) for record in _read_jsonl(path or CALIBRATION_PATH, _CALIBRATION_SCHEMA)]
    return [it.text for it in _take(seeded_order(items, seed, key=lambda it: it.id, stratum=lambda it: it.source), n)]


def load_relations(names: list[str] | None = None, path: Path | None = None) -> list[Relation]:
    """LRE relations from the bundled folder, a folder of upstream JSON files, a ``.json`` file or a JSONL file.

    ``names`` selects relations by key (file stem, e.g. ``country_capital_city``) or by name (``country capital
    city``), in the order given; None returns all, sorted by key.
    """
    source = path or LRE_DIR
    relations = _read_relations(source)
    by_key: dict[str, Relation] = {}
    for relation in relations:
        if relation.key in by_key:
            raise _error(f"{source}: two relations share the key {relation.key!r}")
        by_key[relation.key] = relation
    if names is None:
        return [by_key[key] for key in sorted(by_key)]
    lookup = {**{rel.name: rel for rel in relations}, **by_key}
    missing = [name for name in names if name not in lookup]
    if missing:
        raise _error(f"{source}: unknown relation(s) {', '.join(map(repr, missing))}; "
                     f"available: {', '.join(sorted(by_key))}")
    return [lookup[name] for name in names]


def select_facts(relations: Sequence[Relation], n: int | None, seed: int) -> list[tuple[Relation, Fact]]:
    """``n`` (relation, fact) pairs, relations taking turns, nested across ``n`` for a fixed seed."""
    pairs = [(relation, fact) for relation in relations for fact in relation.samples]
    ordered = seeded_order(pairs, seed, key=lambda p: f"{p[0].key}\x00{p[1].subject}", stratum=lambda p: p[0].key)
    return _take(ordered, n)


def dataset_fingerprint(items: Iterable[Any]) -> str:
    """A stable hash of exactly the items used (their order and every field)."""
    relation_hashes: dict[int, str] = {}

    def plain(obj: Any) -> Any:
        """``obj`` as JSON-ready data; each relation is hashed once."""
        if isinstance(obj, Relation):
            if id(obj) not in relation_hashes:
                relation_hashes[id(obj)] = stable_hash(dataclasses.asdict(obj))
            return {"Relation": relation_hashes[id(obj)]}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {type(obj).__name__: {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
        if isinstance(obj, (list, tuple)):
            return [plain(x) for x in obj]
        return obj

    return stable_hash([plain(item) for item in items])


def decode_literal_escapes(text: str) -> str:
    """Decode literal ``\\uXXXX`` sequences left by double escaping upstream (``Bras\\u00edlia`` → ``Brasília``)."""
    def sub(match: re.Match[str]) -> str:
        """One escape decoded (lone surrogates are left as they are)."""
        code = int(match.group(1), 16)
        return match.group(0) if 0xD800 <= code <= 0xDFFF else chr(code)

    return _ESCAPE.sub(sub, text)


def ascii_spelling(text: str) -> str | None:
    """``text`` without diacritics when that leaves plain ASCII and differs (``São Paulo`` → ``Sao Paulo``)."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return folded if folded != text and folded.isascii() else None


# --- validation -------------------------------------------------------------------------------------------

class _Invalid(Exception):
    """A field-level problem in one record; the reader adds the file and line."""


def _error(message: str) -> DatasetError:
    """A :class:`DatasetError` whose message is forced onto one line."""
    return DatasetError(message.replace("\r", "\\r").replace("\n", "\\n"))


def _show(value: Any, limit: int = 60) -> str:
    """A short single-line rendering of a user value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(record: dict[str, Any], name: str) -> str:
    """A required non-blank string field, whitespace-normalised."""
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"field {name!r} must be a non-empty string, got {_show(value)}")
    return " ".join(_unicode(value, name).split())


def _unicode(value: str, name: str) -> str:
    """``value`` if it is valid Unicode (UTF-8 encodable); a JSON escape such as ``\\ud800`` is a lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Invalid(f"field {name!r} is not valid Unicode: lone surrogate {value[exc.start]!r} at character "
                       f"{exc.start + 1}") from None
    return value


def _nfc(label: str) -> str:
    """A label or option in Unicode's composed form (NFC), so that "café" typed two ways is one label, not two."""
    return unicodedata.normalize("NFC", label)


def _texts(record: dict[str, Any], name: str, minimum: int = 1) -> tuple[str, ...]:
    """A required list of at least ``minimum`` non-blank strings, whitespace-normalised."""
    value = record.get(name)
    if (not isinstance(value, list) or len(value) < minimum
            or not all(isinstance(v, str) and v.strip() for v in value)):
        raise _Invalid(f"field {name!r} must be a list of at least {minimum} non-empty string(s), got {_show(value)}")
    return tuple(" ".join(_unicode(v, f"{name}[{i}]").split()) for i, v in enumerate(value))


def _id(record: dict[str, Any]) -> str:
    """The item id: a non-empty string or an integer."""
    value = record.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(record, "id")


def _nli_record(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of one NLI record, validated."""
    label = record.get("label")
    if label not in NLI_LABELS:
        raise _Invalid(f"field 'label' must be one of {', '.join(NLI_LABELS)}, got {_show(label)}")
    return {"id": _id(record), "premise": _text(record, "premise"), "hypothesis": _text(record, "hypothesis"),
            "label": label, "explanations": _explanations(record, "explanations")}


def _mcq_record(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of one multiple-choice record, validated."""
    options = tuple(_nfc(option) for option in _texts(record, "options", minimum=2))
    if len(set(options)) != len(options):
        raise _Invalid(f"field 'options' has duplicates: {_show(list(options))}")
    answer = _nfc(_text(record, "answer"))
    if answer not in options:
        raise _Invalid(f"answer {_show(answer)} is not one of the options {_show(list(options))}")
    positives = _texts(record, "positives") if record.get("positives") else ()
    explanation = _text(record, "explanation") if _given(record, "explanation") else ""
    return {"id": _id(record), "question": _text(record, "question"), "options": options, "answer": answer,
            "explanation": explanation, "positives": positives}


def _given(record: dict[str, Any], name: str) -> bool:
    """Whether an optional field holds something (absent, null, "" and [] mean no)."""
    return record.get(name) not in (None, "", [])


def _explanations(record: dict[str, Any], name: str) -> tuple[str, ...]:
    """Optional gold explanations: a list of non-empty strings; none when absent, null or empty."""
    return _texts(record, name) if _given(record, name) else ()


def _class_record(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of one classification record, validated (the label set is checked over the whole file)."""
    label_set = tuple(_nfc(t) for t in _texts(record, "label_set")) if _given(record, "label_set") else ()
    if len(set(label_set)) != len(label_set):
        raise _Invalid(f"field 'label_set' has duplicates: {_show(list(label_set))}")
    if len(label_set) == 1:
        raise _Invalid(f"the label set has one label ({label_set[0]!r}): a classification needs at least two")
    return {"id": _id(record), "text": _text(record, "text"), "label": _nfc(_text(record, "label")),
            "label_set": label_set, "explanations": _explanations(record, "explanations")}


def _label_sets(path: Path, records: list[tuple[int, dict[str, Any]]]) -> list[ClassItem]:
    """Items with the file's one label set: as given (the same on every line that gives it) or the labels seen."""
    declared = [(number, r["label_set"]) for number, r in records if r["label_set"]]
    for number, labels in declared:
        if labels != declared[0][1]:
            raise _error(f"{path}:{number}: label_set {_show(list(labels))} differs from line {declared[0][0]}'s "
                         f"{_show(list(declared[0][1]))}: one label set per file")
    label_set = declared[0][1] if declared else tuple(dict.fromkeys(r["label"] for _, r in records))
    for number, record in records:
        if record["label"] not in label_set:
            raise _error(f"{path}:{number}: label {_show(record['label'])} is not in the label set "
                         f"({', '.join(label_set)})")
    if len(label_set) < 2:
        raise _error(f"{path}:{records[0][0]}: every item has the label {label_set[0]!r}: a classification needs "
                     "at least two labels (add items of another label, or a label_set)")
    return [ClassItem(**{**record, "label_set": label_set}) for _, record in records]


def _calibration_record(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of one calibration record, validated."""
    source = _text(record, "source") if "source" in record else ""
    return {"id": _id(record), "text": _text(record, "text"), "source": source}


_NLI_SCHEMA = ("id, premise, hypothesis, label", _nli_record)
_MCQ_SCHEMA = ("id, question, options, answer", _mcq_record)
_CLASS_SCHEMA = ("id, text, label", _class_record)
_CALIBRATION_SCHEMA = ("id, text", _calibration_record)

FORMATS = {"NLI": ("premise", "hypothesis"), "multiple-choice": ("question", "options"),
           "classification": ("text", "label"), "relation": ("prompt_templates", "samples")}
"""Each user-file format and the fields that identify one of its records."""
SCHEMA_FORMAT = {_NLI_SCHEMA[0]: "NLI", _MCQ_SCHEMA[0]: "multiple-choice", _CLASS_SCHEMA[0]: "classification"}


def record_format(record: dict[str, Any]) -> str | None:
    """The format a record's fields identify (the first format all of whose identifying fields it has)."""
    return next((name for name, keys in FORMATS.items() if all(k in record for k in keys)), None)


def _read_text(path: Path) -> str:
    """A file's text, strictly UTF-8 (a leading byte-order mark is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _error(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise _error(f"{path}:{number}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a UTF-8 file with their 1-based numbers."""
    for number, text in enumerate(_read_text(path).split("\n"), start=1):
        if text.strip():
            yield number, text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (``json`` alone would keep a repeated key's last value silently)."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _Invalid(f"key {_show(key)} appears twice in one object")
        value[key] = item
    return value


def _parse(path: Path, number: int, text: str) -> dict[str, Any]:
    """One line parsed as a JSON object."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except _Invalid as exc:
        raise _error(f"{path}:{number}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _error(f"{path}:{number}: invalid JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise _error(f"{path}:{number}: invalid JSON: {_show(str(exc))}") from None
    if not isinstance(value, dict):
        raise _error(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_jsonl(path: Path, schema: tuple[str, Callable[[dict[str, Any]], dict[str, Any]]],
                with_lines: bool = False) -> list[Any]:
    """Validated records of a JSONL file (with their line numbers when asked); one format, unique ids, >= 1 item."""
    required, validate = schema
    expected = SCHEMA_FORMAT.get(required)
    records: list[Any] = []
    first_line: dict[str, int] = {}
    for number, text in _lines(path):
        raw = _parse(path, number, text)
        found = record_format(raw)
        if expected and found and found != expected:
            raise _error(_format_clash(path, number, found, expected, first_line))
        missing = [name for name in required.split(", ") if name not in raw]
        try:
            if missing:
                raise _Invalid(f"missing field(s) {', '.join(missing)} (required: {required})")
            record = validate(raw)
        except _Invalid as exc:
            raise _error(f"{path}:{number}: {exc}") from None
        if record["id"] in first_line:
            raise _error(f"{path}:{number}: duplicate id {_show(record['id'])} "
                         f"(first on line {first_line[record['id']]})")
        first_line[record["id"]] = number
        records.append((number, record) if with_lines else record)
    if not records:
        raise _error(f"{path}: no items (the file is empty or has only blank lines)")
    return records


def _format_clash(path: Path, number: int, found: str, expected: str, earlier: dict[str, int]) -> str:
    """The message for a record of another format: after records of this file's format, or as its first one."""
    fields = ", ".join(FORMATS[found])
    article = "an" if found == "NLI" else "a"
    if earlier:
        return (f"{path}:{number}: {article} {found} record ({fields}) after {expected} records "
                f"(line {min(earlier.values())}): one format per file")
    return f"{path}:{number}: {article} {found} record ({fields}) in a file read as {expected} data"


# --- LRE relations ----------------------------------------------------------------------------------------

def _read_relations(source: Path) -> list[Relation]:
    """Relations from a folder of JSON files (recursive), one ``.json`` file, or a JSONL file."""
    if source.is_dir():
        files = sorted(source.rglob("*.json"))
        if not files:
            raise _error(f"{source}: no relation files (*.json) in this folder")
        return [_relation_from_file(file) for file in files]
    if source.suffix == ".json":
        return [_relation_from_file(source)]
    relations = []
    for number, text in _lines(source):
        try:
            relations.append(_relation(_parse(source, number, text), key=None))
        except _Invalid as exc:
            raise _error(f"{source}:{number}: {exc}") from None
    if not relations:
        raise _error(f"{source}: no relations (the file is empty or has only blank lines)")
    return relations


def _relation_from_file(path: Path) -> Relation:
    """One relation from an upstream-format JSON file; its key is the file stem."""
    try:
        value = json.loads(_read_text(path), object_pairs_hook=_unique_keys)
    except _Invalid as exc:
        raise _error(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _error(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise _error(f"{path}: invalid JSON: {_show(str(exc))}") from None
    if not isinstance(value, dict):
        raise _error(f"{path}: expected a JSON object, got {type(value).__name__}")
    try:
        return _relation(value, key=path.stem)
    except _Invalid as exc:
        raise _error(f"{path}: {exc}") from None


def _relation(raw: dict[str, Any], key: str | None) -> Relation:
    """A validated relation; repeated subjects are merged, their further objects becoming aliases."""
    name = decode_literal_escapes(_text(raw, "name"))
    templates = _templates(raw, "prompt_templates", name)
    templates_zs = _templates(raw, "prompt_templates_zs", name) if raw.get("prompt_templates_zs") else ()
    properties = raw.get("properties")
    if not isinstance(properties, dict):
        raise _Invalid(f"relation {name!r}: field 'properties' must be an object, got {_show(properties)}")
    relation_type, domain, range_ = (_text(properties, f) for f in ("relation_type", "domain_name", "range_name"))
    samples = raw.get("samples")
    if not isinstance(samples, list) or not samples:
        raise _Invalid(f"relation {name!r}: field 'samples' must be a non-empty list, got {_show(samples)}")
    names: dict[str, list[str]] = {}
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise _Invalid(f"relation {name!r}: samples[{index}] must be an object, got {_show(sample)}")
        try:
            subject = decode_literal_escapes(_text(sample, "subject"))
            objects = [_text(sample, "object"), *(_texts(sample, "aliases") if sample.get("aliases") else ())]
        except _Invalid as exc:
            raise _Invalid(f"relation {name!r}: samples[{index}]: {exc}") from None
        names.setdefault(subject, []).extend(decode_literal_escapes(obj) for obj in objects)
    facts = tuple(_fact(subject, answers) for subject, answers in names.items())
    if len(facts) <= DEMONSTRATIONS:
        raise _Invalid(f"relation {name!r}: {len(facts)} sample(s) with distinct subjects, but at least "
                       f"{DEMONSTRATIONS + 1} are needed: the knowledge suites show {DEMONSTRATIONS} as in-context "
                       "demonstrations and test the others")
    return Relation(name, templates, templates_zs, relation_type, domain, range_, facts,
                    key or re.sub(r"\W+", "_", name.lower()).strip("_"))


def _templates(raw: dict[str, Any], field: str, name: str) -> tuple[str, ...]:
    """Prompt templates, each a format string whose one field is the bare ``{}`` subject slot."""
    templates = tuple(decode_literal_escapes(t) for t in _texts(raw, field))
    for template in templates:
        try:
            fields = [parsed[1:] for parsed in Formatter().parse(template) if parsed[1] is not None]
        except ValueError:
            fields = []
        if fields != [("", "", None)]:
            raise _Invalid(f"relation {name!r}: field {field!r}: template {_show(template)} must contain '{{}}' "
                           "exactly once and no other format field (write '{{' and '}}' for literal braces)")
    return templates


def _fact(subject: str, answers: list[str]) -> Fact:
    """A fact whose aliases are the further distinct answers and the ASCII spellings of all answers."""
    accepted: list[str] = []
    for answer in answers:
        for candidate in (answer, ascii_spelling(answer)):
            if candidate and candidate not in accepted:
                accepted.append(candidate)
    return Fact(subject, accepted[0], tuple(accepted[1:]))
