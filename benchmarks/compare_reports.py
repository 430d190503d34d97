"""Compare two pytest-qxai JSON reports check by check: which values, intervals and verdicts are identical.

Used for the README's ``-n 2`` vs ``-n 0`` figures::

    python benchmarks/compare_reports.py a.json.gz b.json.gz

Exit status 0 when every check is bit-identical, 1 otherwise (the differing checks are printed).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

FIELDS = ("reference", "quantized", "delta", "p_value", "ci", "verdict", "n")
"""What a check computed; its messages and timings are left out."""


def load_checks(path: Path) -> tuple[dict[str, Any], dict[tuple[str, str, str], dict[str, Any]]]:
    """A report (plain or gzipped JSON) and its checks keyed by suite, metric and kind."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        report = json.load(handle)
    return report, {(c["suite"], c["metric"], c["kind"]): c for c in report["checks"]}


def main() -> int:
    """Print identical / differing counts and each difference; return 0 only when all are identical."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    (first, a), (second, b) = load_checks(args.first), load_checks(args.second)
    if a.keys() != b.keys():
        print(f"different checks: only in the first {sorted(a.keys() - b.keys())}, "
              f"only in the second {sorted(b.keys() - a.keys())}")
    differing = verdicts = 0
    for key in sorted(a.keys() & b.keys()):
        changed = [(f, a[key].get(f), b[key].get(f)) for f in FIELDS if a[key].get(f) != b[key].get(f)]
        if changed:
            differing += 1
            verdicts += any(f == "verdict" for f, _, _ in changed)
            print(".".join(key), changed)
    common = len(a.keys() & b.keys())
    print(f"{common - differing} of {common} checks identical; {differing} differ; {verdicts} verdicts differ")
    print(f"gate: {first['summary']['verdict']} vs {second['summary']['verdict']}")
    return 0 if differing == 0 and a.keys() == b.keys() else 1


if __name__ == "__main__":
    raise SystemExit(main())
