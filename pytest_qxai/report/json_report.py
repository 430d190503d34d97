"""The machine-readable report: every check with its numbers and per-item values, plus the verdict summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import QxaiUsageError
from ..gate.check import CheckResult, jsonable, summarize
from ..storage import atomic_write

SCHEMA = "pytest-qxai/report/1"


def build_report(
    results: Sequence[CheckResult], *, model: str, quant: str, baseline_name: str,
    metadata: dict[str, Any] | None = None, notes: Sequence[str] = (), errors: Sequence[str] = (),
    multiple_testing: str | None = None,
) -> dict[str, Any]:
    """The report document: run identity, metadata, checks (failures first) and summary (``errors``: what did not
    run, see :func:`~pytest_qxai.gate.check.summarize`)."""
    from .text import ordered

    return {
        "schema": SCHEMA,
        "model": model,
        "quant": quant,
        "baseline_name": baseline_name,
        "metadata": jsonable(metadata or {}),
        "checks": [r.to_dict() for r in ordered(results)],
        "summary": summarize(results, errors, multiple_testing),
        "notes": list(notes),
    }


def results_of(report: dict[str, Any]) -> list[CheckResult]:
    """The checks of a loaded report as :class:`CheckResult` objects."""
    return [CheckResult.from_dict(c) for c in report.get("checks", [])]


def json_text(report: dict[str, Any]) -> str:
    """A report as indented JSON with sorted keys."""
    return json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write a report atomically as :func:`json_text`."""
    atomic_write(path, json_text(report).encode())


def load_json(path: Path) -> dict[str, Any]:
    """Read a JSON file (a report or a baseline), or raise :class:`QxaiUsageError` with one line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QxaiUsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QxaiUsageError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise QxaiUsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}; truncated?)") from None
    if not isinstance(data, dict):
        raise QxaiUsageError(f"{path}: expected a JSON object")
    return data
