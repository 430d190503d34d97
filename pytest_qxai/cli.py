"""The ``qxai`` command: compare two runs, show a baseline, merge sharded reports, manage the cache (no torch).

Exit status: 0 when nothing regressed, 1 when a check failed, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .baselines import SCHEMA as BASELINE_SCHEMA
from .baselines import Baseline, record_of, result_of
from .cache_admin import DEFAULT_MAX_SIZE, MAX_SIZE_ENV, human, info_lines, max_size, parse_size, prune
from .errors import BaselineError, QxaiError, QxaiUsageError
from .gate.check import CheckResult, check_vs_baseline, summarize
from .gate.stats import DEFAULT_RESAMPLES
from .gate.tolerance import parse_tolerance
from .report import build_report, write_reports
from .report.json_report import SCHEMA as REPORT_SCHEMA
from .report.json_report import load_json, results_of
from .report.text import overall_line, table_lines


@dataclass
class Run:
    """The vs_reference checks of a report or baseline file, with the metadata each was recorded under."""

    path: Path
    model: str
    checks: dict[str, CheckResult]
    metadata: dict[str, dict[str, Any]]


@contextlib.contextmanager
def malformed(path: Path) -> Iterator[None]:
    """Turn a structural problem met while reading ``path`` into a one-line :class:`QxaiUsageError` (exit 2)."""
    try:
        yield
    except QxaiUsageError as exc:
        raise QxaiUsageError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise QxaiUsageError(f"{path}: malformed ({type(exc).__name__}: {detail})") from None


def load_run(path: Path) -> Run:
    """Read a JSON report or a baseline file; :class:`QxaiUsageError` names the file on bad input."""
    data = load_json(path)
    schema = data.get("schema")
    if schema == BASELINE_SCHEMA:
        try:
            baseline = Baseline.parse(path, Path(path).read_bytes())
        except BaselineError as exc:
            raise QxaiUsageError(str(exc)) from None
        with malformed(path):
            return Run(path, baseline.model, {k: _valid(result_of(r)) for k, r in baseline.checks.items()},
                       {k: dict(baseline.metadata_for(k)) for k in baseline.checks})
    if schema == REPORT_SCHEMA:
        with malformed(path):
            checks = {r.key: r for r in map(_valid, results_of(data))
                      if r.kind == "vs_reference" and r.verdict != "skipped"}
            metadata = data.get("metadata", {})
            if not isinstance(metadata, dict):
                raise TypeError("'metadata' must be an object")
            return Run(path, str(data.get("model", "")), checks, {k: metadata for k in checks})
    raise QxaiUsageError(f"{path}: neither a pytest-qxai report nor a baseline (schema {schema!r})")


def _valid(result: CheckResult) -> CheckResult:
    """A check read from a file, with its band parsed once (a ValueError or usage error names the problem)."""
    if result.tolerance:
        parse_tolerance(result.tolerance)
    if not isinstance(result.key, str) or not isinstance(result.verdict, str):
        raise TypeError("a check's suite, metric and verdict must be strings")
    return result


def compare(old: Run, new: Run, *, seed: int, n_resamples: int) -> tuple[list[CheckResult], list[str]]:
    """Test every check of ``new`` against ``old`` item by item, as the gate does against a baseline."""
    results: list[CheckResult] = []
    notes = [f"{old.path} is for model {old.model!r}, {new.path} for {new.model!r}"] if old.model != new.model else []
    for key, current in sorted(new.checks.items()):
        if key not in old.checks:
            notes.append(f"{key}: new, not in {old.path}")
            continue
        results += check_vs_baseline(
            current, record_of(old.checks[key]), parse_tolerance(current.tolerance), baseline_file=str(old.path),
            current_metadata=new.metadata[key], stored_metadata=old.metadata[key], seed=seed,
            n_resamples=n_resamples)
    notes += [f"{key}: in {old.path}, not in {new.path}" for key in sorted(set(old.checks) - set(new.checks))]
    return results, notes


def merge(paths: Sequence[Path]) -> dict[str, Any]:
    """One report from per-shard reports of the same model and quantization; conflicting checks are an error."""
    reports = [load_json(p) for p in paths]
    for path, report in zip(paths, reports, strict=True):
        if report.get("schema") != REPORT_SCHEMA:
            raise QxaiUsageError(f"{path}: not a pytest-qxai JSON report")
        with malformed(path):
            for result in results_of(report):
                _valid(result)
        for name, kind in (("metadata", dict), ("notes", list), ("model", str), ("quant", str),
                           ("baseline_name", str)):
            if not isinstance(report.get(name, kind()), kind):
                raise QxaiUsageError(f"{path}: malformed ('{name}' has the wrong JSON type)")
    first = reports[0]
    for path, report in zip(paths[1:], reports[1:], strict=True):
        for name in ("model", "quant", "baseline_name"):
            if report.get(name) != first.get(name):
                raise QxaiUsageError(f"{path}: {name} {report.get(name)!r} differs from {first.get(name)!r} "
                                     f"in {paths[0]}")
    merged: dict[tuple[str, str], tuple[Path, CheckResult]] = {}
    metadata: dict[str, Any] = {}
    notes: list[str] = []
    for path, report in zip(paths, reports, strict=True):
        for result in results_of(report):
            slot = (result.key, result.kind)
            if slot in merged and merged[slot][1] != result:
                raise QxaiUsageError(f"{path}: {result.key} ({result.kind}) conflicts with {merged[slot][0]}")
            merged[slot] = (path, result)
        for key, value in report.get("metadata", {}).items():
            metadata.setdefault(key, value)
        notes += [n for n in report.get("notes", []) if n not in notes]
    return build_report([r for _, r in merged.values()], model=first["model"], quant=first["quant"],
                        baseline_name=first["baseline_name"], metadata=metadata, notes=notes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``qxai`` command and return its exit status."""
    parser = argparse.ArgumentParser(prog="qxai", description="Compare, show and merge pytest-qxai results")
    commands = parser.add_subparsers(dest="command", required=True)
    cmp = commands.add_parser("compare", help="Test a new run against an old one (reports or baseline files)")
    cmp.add_argument("old", type=Path, help="Earlier JSON report or baseline file")
    cmp.add_argument("new", type=Path, help="Later JSON report or baseline file")
    cmp.add_argument("--seed", type=int, default=0, help="Seed of the resampling tests (default: 0)")
    cmp.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                     help=f"Resamples of the bootstrap and permutation tests (default: {DEFAULT_RESAMPLES})")
    show = commands.add_parser("show", help="Print the checks of a baseline file or JSON report")
    show.add_argument("file", type=Path, help="Baseline file or JSON report")
    mrg = commands.add_parser("merge", help="Merge per-shard JSON reports into one report and verdict")
    mrg.add_argument("out", type=Path, help="Merged JSON report to write")
    mrg.add_argument("shards", type=Path, nargs="+", help="Per-shard JSON reports")
    mrg.add_argument("--md", type=Path, help="Also write a Markdown report")
    mrg.add_argument("--html", type=Path, help="Also write an HTML report")
    cache = commands.add_parser("cache", help="Show the on-disk cache (size, age, per model) or prune it")
    cache.add_argument("action", choices=("info", "prune"))
    cache.add_argument("--dir", type=Path, help="Cache folder (default: $QXAI_CACHE_DIR or ~/.cache/pytest-qxai)")
    cache.add_argument("--max-size", metavar="SIZE",
                       help=f"prune: remove least recently used entries down to SIZE, e.g. 5G (default: "
                            f"${MAX_SIZE_ENV} or {human(DEFAULT_MAX_SIZE)})")
    cache.add_argument("--older-than", type=float, metavar="DAYS", help="prune: also remove entries unused for DAYS")
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            if args.resamples < 1:
                raise QxaiUsageError("--resamples must be at least 1")
            results, notes = compare(load_run(args.old), load_run(args.new), seed=args.seed,
                                     n_resamples=args.resamples)
            lines = table_lines(results) + notes + [overall_line(results)]
        elif args.command == "cache":
            from .options import default_cache_dir  # imports pytest: only for this command

            return _cache_command(args.action, args.dir or default_cache_dir(), args.max_size, args.older_than)
        elif args.command == "show":
            run = load_run(args.file)
            results = list(run.checks.values())
            lines = [f"{args.file}: model {run.model}, {len(results)} check(s)", *table_lines(results)]
        else:
            report = merge(args.shards)
            written = write_reports(report, json_path=args.out, md_path=args.md, html_path=args.html)
            results = results_of(report)
            lines = table_lines(results) + [f"wrote {p}" for p in written] + [overall_line(results)]
    except (QxaiError, OSError) as exc:
        print(f"qxai: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 1 if args.command != "show" and summarize(results)["verdict"] == "fail" else 0


def _cache_command(action: str, root: Path, size: str | None, days: float | None) -> int:
    """``qxai cache info`` or ``qxai cache prune``: print what the cache holds or what was removed."""
    if not root.is_dir():
        raise QxaiUsageError(f"cache {root}: no such folder")
    if action == "prune":
        removed = prune(root, max_bytes=parse_size(size) if size else max_size(),
                        older_than=None if days is None else days * 86400)
        print(f"removed {len(removed)} entries ({human(sum(e.size for e in removed))})")
    print("\n".join(info_lines(root)))
    return 0
