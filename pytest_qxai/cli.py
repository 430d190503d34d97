"""The ``qxai`` command: compare two runs, show a baseline, merge sharded reports, manage the cache (no torch).

Exit status: 0 when the verdict is pass or inconclusive, 1 when it is fail or error (a run that did not check,
or nothing to compare) or, with ``--strict``, inconclusive; 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .baselines import SCHEMA as BASELINE_SCHEMA
from .baselines import Baseline, record_of, result_of
from .cache_admin import DEFAULT_MAX_SIZE, MAX_SIZE_ENV, human, info_lines, max_size, parse_size, prune
from .config import default_cache_dir
from .errors import BaselineError, QxaiError, QxaiUsageError
from .gate.check import NOTHING_CHECKED, CheckResult, accept, check_vs_baseline, summarize
from .gate.multiplicity import adjust
from .gate.stats import DEFAULT_RESAMPLES
from .gate.tolerance import parse_tolerance
from .report import build_report, write_reports
from .report.json_report import SCHEMA as REPORT_SCHEMA
from .report.json_report import load_json, results_of
from .report.text import table_lines, verdict_lines


@dataclass
class Run:
    """The vs_reference checks of a report or baseline file, with the metadata each was recorded under and what
    did not run in it (a report's ``summary.errors``)."""

    path: Path
    model: str
    checks: dict[str, CheckResult]
    metadata: dict[str, dict[str, Any]]
    errors: list[str]


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
                       {k: dict(baseline.metadata_for(k)) for k in baseline.checks}, [])
    if schema == REPORT_SCHEMA:
        with malformed(path):
            checks = {r.key: r for r in map(_valid, results_of(data))
                      if r.kind == "vs_reference" and r.verdict != "skipped"}
            metadata = data.get("metadata", {})
            if not isinstance(metadata, dict):
                raise TypeError("'metadata' must be an object")
            return Run(path, str(data.get("model", "")), checks, {k: metadata for k in checks},
                       [str(e) for e in data.get("summary", {}).get("errors", []) if e != NOTHING_CHECKED])
    raise QxaiUsageError(f"{path}: neither a pytest-qxai report nor a baseline (schema {schema!r})")


def _valid(result: CheckResult) -> CheckResult:
    """A check read from a file, with its band parsed once (a ValueError or usage error names the problem)."""
    if result.tolerance:
        parse_tolerance(result.tolerance)
    if not isinstance(result.key, str) or not isinstance(result.verdict, str):
        raise TypeError("a check's suite, metric and verdict must be strings")
    return result


def compare(old: Run, new: Run, *, seed: int, n_resamples: int) -> tuple[list[CheckResult], list[str]]:
    """Test every check of ``new`` against ``old`` item by item, as the gate does against a baseline (Holm over all)."""
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
    notes += adjust(results, "holm").lines(len(results))
    return results, notes


def run_errors(*runs: Run) -> list[str]:
    """What did not run in these files, each error prefixed with its file."""
    return [f"{run.path}: {error}" for run in runs for error in run.errors]


def merge(paths: Sequence[Path]) -> dict[str, Any]:
    """One report from per-shard reports of the same model and quantization; conflicting checks are an error."""
    reports = [load_json(p) for p in paths]
    for path, report in zip(paths, reports, strict=True):
        if report.get("schema") != REPORT_SCHEMA:
            raise QxaiUsageError(f"{path}: not a pytest-qxai JSON report")
        with malformed(path):
            for result in results_of(report):
                _valid(result)
        for name, kind in (("metadata", dict), ("notes", list), ("summary", dict), ("model", str), ("quant", str),
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
    errors: list[str] = []
    methods = {report.get("summary", {}).get("multiple_testing") for report in reports}
    for path, report in zip(paths, reports, strict=True):
        for result in results_of(report):
            slot = (result.key, result.kind)
            if slot in merged and merged[slot][1] != result:
                raise QxaiUsageError(f"{path}: {result.key} ({result.kind}) conflicts with {merged[slot][0]}")
            merged[slot] = (path, result)
        for key, value in report.get("metadata", {}).items():
            metadata.setdefault(key, value)
        notes += [n for n in report.get("notes", []) if n not in notes]
        # A shard that checked nothing is no error of the whole run; what did not run in a shard is.
        errors += [f"{path}: {e}" for e in report.get("summary", {}).get("errors", []) if e != NOTHING_CHECKED]
    if len(methods) > 1:
        raise QxaiUsageError(f"the shards used different multiple-testing methods ({', '.join(map(str, methods))}); "
                             "run them with the same --qxai-multiple-testing")
    method = methods.pop()
    results = [r for _, r in merged.values()]
    if method is not None:  # the shards' families were their own checks only (None: a report of no pytest run)
        notes += adjust(results, method).merge_lines()
        for result in results:  # decided again: a change a shard accepted (--qxai-update-baselines=all) stays so
            accept(result)
    return build_report(results, model=first["model"], quant=first["quant"], baseline_name=first["baseline_name"],
                        metadata=metadata, notes=notes, errors=errors, multiple_testing=method)


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
    cmp.add_argument("--strict", action="store_true", help="Exit 1 when the verdict is inconclusive")
    show = commands.add_parser("show", help="Print the checks of a baseline file or JSON report")
    show.add_argument("file", type=Path, help="Baseline file or JSON report")
    mrg = commands.add_parser("merge", help="Merge per-shard JSON reports into one report and verdict")
    mrg.add_argument("out", type=Path, help="Merged JSON report to write")
    mrg.add_argument("shards", type=Path, nargs="+", help="Per-shard JSON reports")
    mrg.add_argument("--md", type=Path, help="Also write a Markdown report")
    mrg.add_argument("--html", type=Path, help="Also write an HTML report")
    mrg.add_argument("--strict", action="store_true", help="Exit 1 when the verdict is inconclusive")
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
            old, new = load_run(args.old), load_run(args.new)
            results, notes = compare(old, new, seed=args.seed, n_resamples=args.resamples)
            summary = summarize(results, run_errors(old, new), "holm")
            lines = table_lines(results) + notes + verdict_lines(summary)
        elif args.command == "cache":
            return _cache_command(args.action, args.dir or default_cache_dir(), args.max_size, args.older_than)
        elif args.command == "show":
            run = load_run(args.file)
            results = list(run.checks.values())
            print("\n".join([f"{args.file}: model {run.model}, {len(results)} check(s)", *table_lines(results)]))
            return 0
        else:
            report = merge(args.shards)
            written = write_reports(report, json_path=args.out, md_path=args.md, html_path=args.html)
            summary = report["summary"]
            lines = table_lines(results_of(report)) + [f"wrote {p}" for p in written] + verdict_lines(summary)
    except (QxaiError, OSError) as exc:
        print(f"qxai: {exc}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, TypeError, IndexError) as exc:  # a report of the right schema, wrong contents
        print(f"qxai: a report is malformed ({type(exc).__name__}: {exc}); re-create it with pytest "
              "--qxai-report-json", file=sys.stderr)
        return 2
    print("\n".join(lines))
    verdict = summary["verdict"]
    return 1 if verdict in ("fail", "error") or (verdict == "inconclusive" and args.strict) else 0


def _cache_command(action: str, root: Path, size: str | None, days: float | None) -> int:
    """``qxai cache info`` or ``qxai cache prune``: print what the cache holds or what was removed."""
    if not root.is_dir():
        raise QxaiUsageError(f"cache {root}: no such folder")
    if days is not None and not (math.isfinite(days) and days >= 0):
        raise QxaiUsageError(f"--older-than {days:g}: give a number of days, 0 or more")
    if action == "prune":
        removed = prune(root, max_bytes=parse_size(size) if size else max_size(),
                        older_than=None if days is None else days * 86400)
        print(f"removed {len(removed)} entries ({human(sum(e.size for e in removed))})")
    print("\n".join(info_lines(root)))
    return 0
