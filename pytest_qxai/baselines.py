"""Stored baselines: ``<baseline_dir>/<model-slug>/<baseline-name>.json``, one file per model and quantization.

A baseline names the model's content hash (``model_hash``) and keeps, per check (``suite.metric``), the
reference and quantized values of every item by id, the summary numbers, the band and verdict, the suite
fingerprint, and a pointer into ``runs``: the run metadata (model hash, quantization spec, library versions, device, dtype, seed, profile) it was
recorded under. Files are written with sorted keys and exact float text, so re-writing an unchanged
baseline gives identical bytes and diffs stay reviewable. Writes merge with what is on disk under an
inter-process lock, so concurrent pytest processes or xdist workers lose nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from .errors import BaselineError
from .gate.check import CheckResult, jsonable
from .storage import atomic_write, locked, stable_hash

SCHEMA = "pytest-qxai/baseline/1"
UpdateMode = Literal["all", "missing"]
_NUMBER = r"(?:-?\d[\d.eE+-]*|null)"
_NUMBER_LIST = re.compile(rf"\[\n\s*({_NUMBER}(?:,\n\s*{_NUMBER})*)\n\s*\]")
_RECORD_FIELDS = ("suite", "metric", "scale", "direction", "unit", "tolerance", "reference", "quantized",
                  "delta", "p_value", "n", "verdict", "fingerprint")


def model_slug(model_id: str) -> str:
    """A safe folder name for a model id: letters, digits, ``.``, ``_``, ``-``; never ``..`` or empty."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    slug = re.sub(r"\.{2,}", ".", slug).strip("._-")[:120]
    return slug or "model"


def dumps(doc: dict[str, Any]) -> bytes:
    """The canonical bytes of a baseline document: sorted keys, two-space indent, trailing newline.

    Lists of numbers (per-item ``[reference, quantized]`` pairs, intervals) go on one line each, so a
    baseline of a few hundred items stays short and its diffs readable. Only lists that ``indent``
    spread over lines are joined; JSON strings never contain a raw newline, so they are untouched.
    """
    text = json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    text = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    return (text + "\n").encode()


def record_of(result: CheckResult, run: str = "") -> dict[str, Any]:
    """The stored form of a vs_reference result: summary numbers plus per-item ``[reference, quantized]``."""
    data = result.to_dict()
    record = {k: data[k] for k in _RECORD_FIELDS}
    record["ci"] = data["ci"]
    record["items"] = jsonable(result.items())
    if run:
        record["run"] = run
    return record


def result_of(record: dict[str, Any]) -> CheckResult:
    """A stored record back as a vs_reference :class:`CheckResult` (items in stored order)."""
    items: dict[str, list[float | None]] = record.get("items", {})
    result = CheckResult.from_dict({k: record[k] for k in (*_RECORD_FIELDS, "ci") if k in record} | {
        "kind": "vs_reference", "reason": "recorded baseline"})
    result.item_ids = list(items)
    result.reference_items = [v[0] for v in items.values()]
    result.quantized_items = [v[1] for v in items.values()]
    return result


@dataclass
class Baseline:
    """A loaded baseline document and where it came from."""

    path: Path
    doc: dict[str, Any]

    @property
    def model(self) -> str:
        """The model id it was recorded for."""
        return str(self.doc["model"])

    @property
    def model_hash(self) -> str | None:
        """The content hash of the model it was recorded for (older files: the one hash all its runs name)."""
        if isinstance(self.doc.get("model_hash"), str):
            return str(self.doc["model_hash"])
        hashes = {run.get("model_hash") for run in self.doc["runs"].values() if isinstance(run, dict)}
        return str(hashes.pop()) if len(hashes) == 1 and None not in hashes else None

    @property
    def checks(self) -> dict[str, dict[str, Any]]:
        """Stored records keyed by ``suite.metric``."""
        return self.doc["checks"]  # type: ignore[no-any-return]

    def metadata_for(self, key: str) -> dict[str, Any]:
        """The run metadata a check was recorded under (empty when unknown)."""
        return self.doc["runs"].get(self.checks[key].get("run", ""), {})  # type: ignore[no-any-return]

    def to_bytes(self) -> bytes:
        """The canonical file content."""
        return dumps(self.doc)

    @classmethod
    def parse(cls, path: Path, data: bytes) -> Baseline:
        """Validate file content, or raise :class:`BaselineError` with one line naming the file."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise BaselineError(f"baseline {path} is not UTF-8 text; restore it or re-record it") from None
        except json.JSONDecodeError as exc:
            raise BaselineError(
                f"baseline {path} is not valid JSON ({exc.msg} at line {exc.lineno}; truncated?); "
                "restore it from version control or delete it and re-record with --qxai-update-baselines"
            ) from None
        schema = doc.get("schema") if isinstance(doc, dict) else None
        if schema != SCHEMA:
            raise BaselineError(f"baseline {path} has unknown schema {schema!r}; this pytest-qxai reads {SCHEMA}")
        problem = _problem(doc)
        if problem:
            raise BaselineError(f"baseline {path} is malformed: {problem}")
        return cls(path, doc)


@dataclass
class UpdateSummary:
    """What one write changed in a baseline file."""

    path: Path
    added: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    written: bool = False


@dataclass
class BaselineStore:
    """The baseline file of one model and baseline name under ``root``.

    With ``model_hash`` (the model's content hash) the baseline is bound to the model's bytes, not its
    name: a renamed or moved model finds its baseline under its old folder name, and a different model
    under the same name is refused.
    """

    root: Path
    model_id: str
    name: str
    model_hash: str | None = None

    @property
    def own_path(self) -> Path:
        """``root/<model-slug>/<name>.json``."""
        return self.root / model_slug(self.model_id) / f"{self.name}.json"

    @property
    def path(self) -> Path:
        """:attr:`own_path`, or where a baseline of the same model content lives under another model name."""
        own = self.own_path
        if own.exists() or not self.model_hash:
            return own
        for other in sorted(self.root.glob(f"*/{self.name}.json")):
            with contextlib.suppress(OSError, BaselineError):
                if Baseline.parse(other, other.read_bytes()).model_hash == self.model_hash:
                    return other
        return own

    def load(self) -> Baseline | None:
        """The stored baseline, None when there is none; :class:`BaselineError` when unusable.

        A baseline named after another quantization spec is allowed (compare hqq2 against bnb8 on
        purpose); one recorded for another model (another content hash, or another name) is not.
        """
        path = self.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BaselineError(f"baseline {path} cannot be read: {exc.strerror}") from None
        baseline = Baseline.parse(path, data)
        stored = baseline.model_hash
        if self.model_hash and stored and stored != self.model_hash:
            raise BaselineError(
                f"baseline {path} was recorded for another model with the same name {baseline.model!r}: "
                f"content hash {stored}, this model {self.model_hash}; use another --qxai-baseline-dir or "
                "--qxai-baseline-name, or re-record"
            )
        if baseline.model != self.model_id and not (self.model_hash and stored == self.model_hash):
            raise BaselineError(
                f"baseline {path} was recorded for model {baseline.model!r}, not {self.model_id!r}"
            )
        return baseline

    def update(
        self, results: Sequence[CheckResult], metadata: dict[str, Any], *, mode: UpdateMode,
        keep: set[str] | None = None,
    ) -> UpdateSummary:
        """Record vs_reference ``results`` into the file, merging with what is on disk now.

        ``mode="all"`` refreshes every given check, ``"missing"`` adds only absent ones; stored checks
        are removed only when ``keep`` is given and does not name them (pruning). Unchanged content
        is not rewritten.
        """
        path = self.path
        summary = UpdateSummary(path)
        with locked(path, "writing a baseline"):
            # Every writer of this file holds the lock: a temporary file of it found now was left by a
            # killed run (SIGTERM/SIGKILL skip atomic_write's cleanup), so it is removed.
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
            existing = self.load()
            old = existing.to_bytes() if existing else b""
            doc: dict[str, Any] = existing.doc if existing else {
                "schema": SCHEMA, "model": self.model_id, "baseline": self.name, "checks": {}, "runs": {}}
            if self.model_hash:
                doc["model_hash"] = self.model_hash
            run = stable_hash(jsonable(metadata))
            for result in results:
                if result.kind != "vs_reference" or result.verdict == "skipped":
                    continue
                present = result.key in doc["checks"]
                if present and mode == "missing":
                    continue
                record = record_of(result, run)
                if doc["checks"].get(result.key) != record:
                    (summary.refreshed if present else summary.added).append(result.key)
                doc["checks"][result.key] = record
            if keep is not None:
                summary.pruned = sorted(k for k in doc["checks"] if k not in keep)
                for key in summary.pruned:
                    del doc["checks"][key]
            if any(rec.get("run") == run for rec in doc["checks"].values()):
                doc["runs"][run] = jsonable(metadata)
            used = {rec.get("run") for rec in doc["checks"].values()}
            doc["runs"] = {k: v for k, v in doc["runs"].items() if k in used}
            new = dumps(doc)
            if new != old and (existing is not None or doc["checks"]):
                atomic_write(path, new)
                summary.written = True
        return summary


def _problem(doc: dict[str, Any]) -> str:
    """What is structurally wrong with a baseline document with the right schema ('' if nothing)."""
    if not isinstance(doc.get("model"), str):
        return "'model' must be a string"
    if not isinstance(doc.get("checks"), dict) or not isinstance(doc.get("runs"), dict):
        return "'checks' and 'runs' must be objects"
    for run, metadata in doc["runs"].items():
        if not isinstance(metadata, dict):
            return f"run {run!r} must be an object"
    for key, record in doc["checks"].items():
        if not isinstance(record, dict) or not isinstance(record.get("items"), dict):
            return f"check {key!r} has no 'items' object"
        if not isinstance(record.get("fingerprint", {}), dict):
            return f"check {key!r}: 'fingerprint' must be an object"
        if not isinstance(record.get("run", ""), str):
            return f"check {key!r}: 'run' must be a string"
        for item, pair in record["items"].items():
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in pair)):
                return f"check {key!r}, item {item!r}: expected [reference, quantized] finite numbers or null"
    return ""
