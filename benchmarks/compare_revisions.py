"""Seconds per item per suite for a previous revision and the current tree, side by side, in one run.

The suites that ``-k EXPR`` selects run in one pytest process per revision (``--qxai-no-cache``), first at
``--rev`` checked out in a temporary git worktree, then in this tree, on the same machine one after the other.
Each suite's computation is timed by the ``suite_values`` plugin (the model pair's loading is left out; a result
two suites share is computed in the first that needs it, at both revisions alike), which also keeps every
metric's per-item values, so the run ends with the ratio per suite and how far the values moved::

    python benchmarks/compare_revisions.py --rev main -k "nle_faithfulness or task_accuracy" --json cmp.json

Exit status 0 when every value is equal within ``--atol`` (NaN where NaN) and every verdict is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_suites(tree: Path, args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """The selected suites' pytest run in ``tree``: per suite, its items, seconds and the run's report path."""
    report = out / "report.json"
    command = [sys.executable, "-m", "pytest", str(tree / "suites"), "-k", args.k, f"--quant={args.quant}",
               f"--qxai-profile={args.profile}", "--qxai-no-cache", f"--qxai-report-json={report}",
               f"--qxai-baseline-dir={out / 'baselines'}", "-q",
               "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "suite_values", *args.pytest_args]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tree), str(ROOT / "benchmarks")]),
                        "QXAI_VALUES_OUT": str(out)}
    done = subprocess.run(command, check=False, cwd=tree, env=env, capture_output=True, text=True)
    figures = {path.stem: json.loads(path.read_text()) | {"report": str(report)} for path in out.glob("*.json")
               if path.name != report.name}
    if not figures:
        raise SystemExit(f"no suite ran in {tree} (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return figures


def value_differences(old: Path, new: Path) -> tuple[float, list[str]]:
    """The largest absolute difference between two runs' per-item values, and what differs beyond equality."""
    a, b = np.load(old), np.load(new)
    worst, problems = 0.0, []
    for key in sorted(set(a.files) | set(b.files)):
        if key not in a.files or key not in b.files:
            problems.append(f"{key}: only in one run")
            continue
        x, y = a[key], b[key]
        if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
            problems.append(f"{key}: different items or missing values")
            continue
        diff = float(np.max(np.abs(x - y), initial=0.0, where=~np.isnan(x)))
        worst = max(worst, diff)
        if diff:
            problems.append(f"{key}: max |difference| {diff:.3g}")
    return worst, problems


def verdicts(report: str, suite: str) -> dict[str, Any]:
    """Each of a suite's checks' verdict and p-value, by metric and kind."""
    checks = json.loads(Path(report).read_text())["checks"]
    return {f"{c['metric']} {c['kind']}": (c["verdict"], c.get("p_value")) for c in checks if c["suite"] == suite}


def main() -> int:
    """Run each suite at both revisions, print the table, return 0 when values and verdicts agree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main", help="the previous revision (a git ref)")
    parser.add_argument("-k", required=True, help="pytest -k expression selecting the suites")
    parser.add_argument("--quant", default="bnb8")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--atol", type=float, default=1e-4, help="values closer than this count as float noise")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--pytest-arg", action="append", default=[], dest="pytest_args",
                        help="one more pytest argument for both runs, e.g. --pytest-arg=--qxai-model=PATH")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="qxai-revs-"))
    previous = scratch / "previous"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(previous), args.rev], check=True)
    rows = []
    try:
        old_runs = run_suites(previous, args, scratch / "old")
        new_runs = run_suites(ROOT, args, scratch / "new")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(previous)], check=False)
    for suite in sorted(old_runs.keys() | new_runs.keys()):
        if suite not in old_runs or suite not in new_runs:
            raise SystemExit(f"{suite} ran at one revision only")
        old, new = old_runs[suite], new_runs[suite]
        worst, problems = value_differences(scratch / "old" / f"{suite}.npz", scratch / "new" / f"{suite}.npz")
        before, after = verdicts(old["report"], suite), verdicts(new["report"], suite)
        changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, (None,))[0] != v[0]}
        rows.append({"suite": suite, "items": new["items"], "old": old, "new": new, "max_abs_difference": worst,
                     "differences": problems, "verdicts_changed": changed,
                     "p_values_changed": {k: (v[1], after[k][1]) for k, v in before.items()
                                          if k in after and v[1] != after[k][1]}})
    print(f"{'suite':<18}{'items':>6}{'old s/item':>12}{'new s/item':>12}{'new/old':>9}{'tokens new/old':>16}"
          f"{'max |Δvalue|':>14}  verdicts")
    for row in rows:
        per = [row[side]["seconds"] / max(row[side]["items"], 1) for side in ("old", "new")]
        tokens = [row[side]["tokens_scored"] + row[side]["tokens_generated"] for side in ("old", "new")]
        print(f"{row['suite']:<18}{row['items']:>6}{per[0]:>12.2f}{per[1]:>12.2f}{per[1] / per[0]:>9.2f}"
              f"{tokens[1] / max(tokens[0], 1):>16.2f}"
              f"{row['max_abs_difference']:>14.2g}  {'same' if not row['verdicts_changed'] else row['verdicts_changed']}")
        for problem in row["differences"]:
            print(f"    {problem}")
        for check, (before, after) in row["p_values_changed"].items():
            print(f"    {check}: p {before} -> {after}")
    if args.json:
        args.json.write_text(json.dumps({"rev": args.rev, "quant": args.quant, "profile": args.profile,
                                         "rows": rows}, indent=2))
    agree = all(row["max_abs_difference"] <= args.atol and not row["verdicts_changed"]
                and not any("only in" in p or "missing" in p for p in row["differences"]) for row in rows)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
