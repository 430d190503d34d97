"""The ``qxai`` command: compare two runs, show a baseline, merge sharded reports (no model, no torch).

Exit status: 0 when nothing regressed, 1 when a check failed, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .baselines import SCHEMA as BASELINE_SCHEMA
from .baselines import Baseline, record_of, result_of
from .errors import BaselineError, QxaiError, QxaiUsageError
from .gate.check import CheckResult, check_vs_baseline, summarize
from .gate.multiplicity import adjust
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


def load_run(path: Path) -> Run:
    """Read a JSON report or a baseline file; :class:`QxaiUsageError` names the file on bad input."""
    data = load_json(path)
    schema = data.get("schema")
    if schema == BASELINE_SCHEMA:
        try:
            baseline = Baseline.parse(path, Path(path).read_bytes())
        except BaselineError as exc:
            raise QxaiUsageError(str(exc)) from None
        return Run(path, baseline.model, {k: result_of(r) for k, r in baseline.checks.items()},
                   {k: baseline.metadata_for(k) for k in baseline.checks})
    if schema == REPORT_SCHEMA:
        checks = {r.key: r for r in results_of(data) if r.kind == "vs_reference" and r.verdict != "skipped"}
        return Run(path, str(data.get("model", "")), checks, {k: data.get("metadata", {}) for k in checks})
    raise QxaiUsageError(f"{path}: neither a pytest-qxai report nor a baseline (schema {schema!r})")


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


def merge(paths: Sequence[Path]) -> dict[str, Any]:
    """One report from per-shard reports of the same model and quantization; conflicting checks are an error."""
    reports = [load_json(p) for p in paths]
    for path, report in zip(paths, reports, strict=True):
        if report.get("schema") != REPORT_SCHEMA:
            raise QxaiUsageError(f"{path}: not a pytest-qxai JSON report")
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
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            if args.resamples < 1:
                raise QxaiUsageError("--resamples must be at least 1")
            results, notes = compare(load_run(args.old), load_run(args.new), seed=args.seed,
                                     n_resamples=args.resamples)
            lines = table_lines(results) + notes + [overall_line(results)]
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
