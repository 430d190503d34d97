"""The gate's decision for one metric: quantized vs reference, and this run vs the stored baseline.

Verdict rules (the same for both comparisons):

* ``fail``: the change is a degradation (in the metric's bad direction; either direction for a
  two-sided band), its point estimate lies beyond the band, AND the paired test rejects "no change"
  at the band's alpha. Both conditions: a tiny but significant change passes, a large but noisy one
  does not fail.
* ``inconclusive``: a degradation beyond the band that is not significant (p >= alpha): more items would tell.
* ``improved``: a significant change in the good direction beyond the band (one-sided bands only).
* ``pass``: anything else. ``skipped``: fewer than two items valid on both sides, so no test.

The reported ``p_value`` belongs to the test that decided: one-sided in the direction of the observed
change for a one-sided band, two-sided for a two-sided band. The interval is two-sided at ``1 - alpha``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from ..metrics import Direction, Kind, Metric, as_array
from .stats import DEFAULT_RESAMPLES, MIN_PAIRED, Alternative, PairedTest, paired_test, paired_valid
from .tolerance import Tolerance

Verdict = Literal["pass", "fail", "improved", "inconclusive", "skipped"]
CheckKind = Literal["vs_reference", "vs_baseline", "reference_drift"]
VERDICTS: tuple[Verdict, ...] = ("fail", "inconclusive", "improved", "pass", "skipped")  # also the display order


@dataclass
class CheckResult:
    """One gate decision with the numbers behind it (JSON-serialisable through :meth:`to_dict`).

    ``reference``/``quantized`` are means over the paired items; ``baseline`` is the stored quantized mean
    (vs_baseline) or stored reference mean (reference_drift). ``delta`` is quantized − reference for
    vs_reference, the change of that gap since the baseline for vs_baseline, and the change of the
    reference for reference_drift. Per-item values (NaN as None) travel with vs_reference results only,
    for the baseline file. ``ci`` is the interval the decision used; ``p_value`` the decisive one-sided test's
    p-value and ``p_adjusted`` the same after multiplicity control over the run. ``mdd`` is the smallest
    degradation beyond the band this run detects with 80 % power, ``n_needed`` the items that would decide an
    inconclusive check, ``lost`` the items lost or degenerate per side.
    """

    suite: str
    metric: str
    kind: CheckKind
    verdict: Verdict
    reason: str
    reference: float | None = None
    quantized: float | None = None
    baseline: float | None = None
    delta: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    n: int = 0
    tolerance: str = ""
    direction: Direction = "higher"
    scale: Kind = "continuous"
    unit: str = ""
    item_ids: list[str] = field(default_factory=list)
    reference_items: list[float | None] = field(default_factory=list)
    quantized_items: list[float | None] = field(default_factory=list)
    fingerprint: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    nodeid: str = ""
    p_adjusted: float | None = None
    mdd: float | None = None
    n_needed: int | None = None
    lost: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``suite.metric``."""
        return f"{self.suite}.{self.metric}"

    @property
    def failed(self) -> bool:
        """Whether this result fails the gate."""
        return self.verdict == "fail"

    def items(self) -> dict[str, list[float | None]]:
        """Per-item ``[reference, quantized]`` keyed by item id."""
        return {i: [r, q] for i, r, q in zip(self.item_ids, self.reference_items, self.quantized_items, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities become None)."""
        data = asdict(self)
        data["ci"] = list(self.ci) if self.ci is not None else None
        return jsonable(data)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        """Rebuild a result from :meth:`to_dict` output (unknown keys are ignored)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        ci = known.get("ci")
        known["ci"] = None if ci is None or None in ci else (float(ci[0]), float(ci[1]))
        return cls(**known)


RunVerdict = Literal["pass", "fail", "inconclusive", "error"]
NOTHING_CHECKED = "nothing was checked: no check reached a decision (none ran, or every one was skipped)"
"""The error a run without a single decided check reports (a run that did not check is never green)."""


def summarize(
    results: Sequence[CheckResult], errors: Sequence[str] = (), multiple_testing: str | None = None,
) -> dict[str, Any]:
    """Counts per verdict and the run's verdict: ``error`` if anything did not run (``errors``, or no check was
    decided: :data:`NOTHING_CHECKED`), else ``fail``, ``inconclusive`` or ``pass`` by the worst check."""
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    problems = list(dict.fromkeys(errors))
    if len(results) == counts["skipped"] and NOTHING_CHECKED not in problems:
        problems.append(NOTHING_CHECKED)
    overall: RunVerdict = ("error" if problems else "fail" if counts["fail"] else
                           "inconclusive" if counts["inconclusive"] else "pass")
    return {"checks": len(results), "counts": counts, "verdict": overall, "errors": problems,
            "multiple_testing": multiple_testing}


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, tuples to lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def item_values(values: Sequence[float | None]) -> np.ndarray:
    """Stored per-item values back to a float vector (None → NaN)."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def check_vs_reference(
    metric: Metric, tolerance: Tolerance, reference: Sequence[float] | np.ndarray,
    quantized: Sequence[float] | np.ndarray, item_ids: Sequence[str], *, seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> CheckResult:
    """Compare the quantized model's per-item values with the reference's on the same items."""
    ref, quant = as_array(reference), as_array(quantized)
    result = _result(metric, "vs_reference", tolerance)
    result.item_ids = list(item_ids)
    result.reference_items, result.quantized_items = jsonable(ref), jsonable(quant)
    a, b = paired_valid(ref, quant)
    result.n = int(a.size)
    if a.size < MIN_PAIRED:
        return _skip_small(result, "valid (not NaN) on both sides")
    result.reference, result.quantized = float(a.mean()), float(b.mean())
    threshold = tolerance.threshold(result.reference)
    test = _test(a, b, metric, tolerance, metric.kind, seed, n_resamples)
    _decide(result, test, tolerance, threshold, f"quantized {_fmt(result.quantized)} vs reference "
            f"{_fmt(result.reference)}")
    return result


def check_vs_baseline(
    current: CheckResult, stored: dict[str, Any], tolerance: Tolerance, *, baseline_file: str,
    current_metadata: dict[str, Any], stored_metadata: dict[str, Any], seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> list[CheckResult]:
    """Compare this run's per-item gap (quantized − reference) with the stored one, item by item.

    A changed fingerprint fails at once as a stale baseline: never compare silently. When the reference
    values themselves moved beyond the band (significantly), a ``reference_drift`` warning names the
    recorded differences that could explain it (library versions, model hash, device ...).
    """
    metric = _metric_of(current)
    result = _result(metric, "vs_baseline", tolerance)
    recorded: dict[str, str] = stored.get("fingerprint", {})
    changed = sorted(k for k in set(current.fingerprint) | set(recorded)
                     if current.fingerprint.get(k) != recorded.get(k))
    if changed:
        result.verdict = "fail"
        result.reason = (f"stale baseline {baseline_file}: fingerprint {', '.join(changed)} changed; "
                         "re-record with --qxai-update-baselines")
        return [result]
    stored_items: dict[str, list[float | None]] = stored.get("items", {})
    ids = [i for i in current.item_ids if i in stored_items]
    now = current.items()
    ref_now = item_values([now[i][0] for i in ids])
    q_now = item_values([now[i][1] for i in ids])
    ref_base = item_values([stored_items[i][0] for i in ids])
    q_base = item_values([stored_items[i][1] for i in ids])
    gap_base, gap_now = q_base - ref_base, q_now - ref_now
    valid = ~(np.isnan(gap_base) | np.isnan(gap_now))
    result.n = int(valid.sum())
    if result.n < MIN_PAIRED:
        return [_skip_small(result, f"matched by id in {baseline_file} and valid on both runs")]
    result.reference, result.quantized = float(ref_now[valid].mean()), float(q_now[valid].mean())
    result.baseline = float(q_base[valid].mean())
    threshold = tolerance.threshold(result.reference)
    test = _test(gap_base[valid], gap_now[valid], metric, tolerance, "continuous", seed, n_resamples)
    unmatched = len(current.item_ids) - len(ids)
    _decide(result, test, tolerance, threshold,
            f"the quantized-reference gap moved from {_fmt(float(gap_base[valid].mean()))} in {baseline_file} "
            f"to {_fmt(float(gap_now[valid].mean()))}"
            + (f" ({unmatched} item(s) of this run are not in the baseline)" if unmatched else ""))
    results = [result]
    drift = _reference_drift(metric, tolerance, ref_base, ref_now, current_metadata, stored_metadata,
                             baseline_file, seed, n_resamples)
    if drift is not None:
        results.append(drift)
    return results


def _metric_of(result: CheckResult) -> Metric:
    """The parts of a result's metric definition a re-test needs (identity, kind, direction, unit)."""
    return Metric(result.suite, result.metric, "", result.scale, result.direction, unit=result.unit)


def _reference_drift(
    metric: Metric, tolerance: Tolerance, ref_base: np.ndarray, ref_now: np.ndarray,
    current_metadata: dict[str, Any], stored_metadata: dict[str, Any], baseline_file: str, seed: int,
    n_resamples: int,
) -> CheckResult | None:
    """A warning when the reference values moved beyond the band and significantly; else None."""
    a, b = paired_valid(ref_base, ref_now)
    if a.size < MIN_PAIRED:
        return None
    test = paired_test(a, b, metric.kind, "two-sided", confidence=1 - tolerance.alpha,
                       n_resamples=n_resamples, seed=seed)
    threshold = tolerance.threshold(float(a.mean()))
    if not (abs(test.estimate) > threshold and test.p_value < tolerance.alpha):
        return None
    changes = metadata_changes(stored_metadata, current_metadata)
    cause = (", ".join(changes[:6]) + (" ..." if len(changes) > 6 else "")) if changes else (
        "no recorded library, model or device difference explains it (nondeterminism?)")
    drift = _result(metric, "reference_drift", tolerance)
    drift.verdict = "inconclusive"
    drift.reference, drift.baseline, drift.delta = float(b.mean()), float(a.mean()), test.estimate
    drift.ci, drift.p_value, drift.n = test.ci, test.p_value, test.n
    drift.reason = (f"the reference itself changed since {baseline_file}: {metric.name} "
                    f"{_fmt(float(a.mean()))}->{_fmt(float(b.mean()))} (p={test.p_value:.3g}); {cause}")
    return drift


def metadata_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old->new`` for every leaf of two nested metadata dicts that differs, sorted by key."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    return [f"{k} {flat_old.get(k, '?')}->{flat_new.get(k, '?')}"
            for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _result(metric: Metric, kind: CheckKind, tolerance: Tolerance) -> CheckResult:
    return CheckResult(metric.suite, metric.name, kind, "pass", "", tolerance=str(tolerance),
                       direction=metric.direction, scale=metric.kind, unit=metric.unit)


def _skip_small(result: CheckResult, what: str) -> CheckResult:
    result.verdict = "skipped"
    result.reason = (f"no test: only {result.n} item(s) {what}; a paired test needs at least {MIN_PAIRED}")
    return result


def _test(a: np.ndarray, b: np.ndarray, metric: Metric, tolerance: Tolerance, kind: Kind, seed: int,
          n_resamples: int) -> PairedTest:
    """Run the paired test whose alternative matches the band and the observed direction."""
    alternative: Alternative = "two-sided"
    if not tolerance.two_sided:
        worse: Alternative = "less" if metric.direction == "higher" else "greater"
        better: Alternative = "greater" if metric.direction == "higher" else "less"
        alternative = worse if _badness(float(np.mean(b - a)), metric.direction) >= 0 else better
    return paired_test(a, b, kind, alternative, confidence=1 - tolerance.alpha, n_resamples=n_resamples, seed=seed)


def _badness(delta: float, direction: Direction) -> float:
    """How much worse (positive) or better (negative) a change is, in the metric's units."""
    return -delta if direction == "higher" else delta


def _decide(result: CheckResult, test: PairedTest, tolerance: Tolerance, threshold: float, context: str) -> None:
    """Fill delta, CI, p, verdict and a one-sentence reason from a paired test (rules: module docstring)."""
    result.delta, result.ci, result.p_value, result.n = test.estimate, test.ci, test.p_value, test.n
    bad = _badness(test.estimate, result.direction)
    beyond = (abs(bad) if tolerance.two_sided else bad) > threshold
    better = not tolerance.two_sided and -bad > threshold
    significant = test.p_value < tolerance.alpha
    sided = "two-sided" if tolerance.two_sided else "one-sided"
    stat = f"{test.method} {sided} p={test.p_value:.3g}, alpha={_fmt(tolerance.alpha)}, n={test.n}"
    band = f"band {tolerance} (+/-{_fmt(threshold)})"
    change = f"{'+' if test.estimate >= 0 else ''}{_fmt(test.estimate)}"
    if beyond and significant:
        result.verdict = "fail"
        word = "changed" if tolerance.two_sided and bad < 0 else "degraded"
        result.reason = (f"{result.metric} {word}: delta {change} is beyond the {band} and significant ({stat}); "
                         f"{context}")
    elif beyond:
        result.verdict = "inconclusive"
        result.reason = (f"{result.metric} degraded: delta {change} is beyond the {band} but not significant "
                         f"({stat}), more items would tell; {context}")
    elif better and significant:
        result.verdict = "improved"
        result.reason = (f"{result.metric} improved: delta {change} is beyond the {band} and significant ({stat}); "
                         f"{context}")
    elif better:
        result.verdict = "pass"
        result.reason = (f"{result.metric} improved: delta {change} is beyond the {band} but not significant "
                         f"({stat}); {context}")
    else:
        result.verdict = "pass"
        result.reason = f"delta {change} is within the {band} ({stat}); {context}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"

