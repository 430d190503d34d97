"""The gate's decision for one metric: quantized vs reference, and this run vs the stored baseline.

Let D be the degradation in the metric's bad direction and b the band's half-width. The rule (the same for
both comparisons; docs/gate.md explains it):

* ``fail``: the data show D > b: the one-sided test of H0 D <= b rejects at the multiplicity-adjusted alpha
  (``p_adjusted < alpha``);
* ``pass``: the data show D <= b: the upper one-sided ``1 - alpha`` bound of D lies within the band;
* ``improved``: that upper bound lies below -b (a change beyond the band in the good direction);
* ``inconclusive``: neither; ``mdd`` and ``n_needed`` say what this run could detect and what would decide it;
* ``skipped``: fewer than two items valid on both sides, so no test.

A ``two-sided`` band fails on a change beyond b either way (the two one-sided tests at alpha/2 each) and
passes when the two-sided ``1 - alpha`` interval lies within (-b, b). ``ci`` is the interval of delta
(quantized - reference) that the decision used: the two one-sided ``1 - alpha`` bounds for a one-sided band.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from ..metrics import Direction, Kind, Metric, as_array, get_metric
from .spending import Fractions, share
from .stats import (DEFAULT_RESAMPLES, MIN_PAIRED, MarginTest, detectable, items_needed, margin_test, paired_difference,
                    paired_valid)
from .tolerance import Tolerance, parse_tolerance

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
    inconclusive check, ``lost`` the items lost or degenerate per side, ``comparison`` what was compared (the
    part of ``reason`` that does not depend on the verdict).
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
    comparison: str = ""

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
        ci = known.get("ci")  # an infinite bound was written as null
        known["ci"] = None if ci is None else (-math.inf if ci[0] is None else float(ci[0]),
                                               math.inf if ci[1] is None else float(ci[1]))
        return cls(**known)


RunVerdict = Literal["pass", "fail", "inconclusive", "error"]
NOTHING_CHECKED = "nothing was checked: no check reached a decision (none ran, or every one was skipped)"
"""The error a run without a single decided check reports (a run that did not check is never green)."""


def accept(result: CheckResult) -> None:
    """A failing comparison that ``--qxai-update-baselines=all`` refreshes is reported inconclusive, not failed."""
    if result.failed and result.notes.get("accepted"):
        result.verdict = "inconclusive"
        result.reason += "; accepted: --qxai-update-baselines refreshes the baseline"


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
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim == 1:  # per-item values: the common, large case
        return [v if math.isfinite(v) else None for v in value.tolist()]
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
    n_resamples: int = DEFAULT_RESAMPLES, family: int = 1, fractions: Fractions | None = None,
    same_model: bool = False,
) -> CheckResult:
    """Compare the quantized model's per-item values with the reference's on the same items.

    ``same_model``: the quantized side is the reference model itself (``--quant=none``: same weights, same code).
    When it also equals the reference on every item, delta is 0 on every item there is, known rather than
    estimated, and the check passes without a test; one differing item sends it to the test like any other.

    ``family`` is the number of fail decisions the run plans: until all are known the fail test uses the
    Bonferroni bound ``p * family``, which any Holm or Benjamini-Hochberg adjustment at the end can only lower.
    ``fractions`` are a sequential look's information fractions (:mod:`.sequential`).
    """
    ref, quant = as_array(reference), as_array(quantized)
    result = _result(metric, "vs_reference", tolerance)
    result.item_ids = list(item_ids)
    result.reference_items, result.quantized_items = jsonable(ref), jsonable(quant)
    units = ~(np.isnan(ref) & np.isnan(quant))  # NaN on both sides: not one of the metric's units (e.g. another task)
    result.lost = {"reference": int(np.isnan(ref[units]).sum()), "quantized": int(np.isnan(quant[units]).sum())}
    a, b = paired_valid(ref, quant)
    result.n = int(a.size)
    if a.size < MIN_PAIRED:
        return _skip_small(result, "valid (not NaN) on both sides")
    with np.errstate(invalid="ignore"):  # infinities of both signs: an undefined mean (NaN), said as such
        result.reference, result.quantized = float(a.mean()), float(b.mean())
    means = f"quantized {_fmt(result.quantized)} vs reference {_fmt(result.reference)}"
    if same_model and np.array_equal(ref, quant, equal_nan=True):  # no test to run: no resampling either
        result.comparison = f"{means} (the same model on both sides and the same value on every item: delta 0 by " \
                            "identity, no test)"
        result.delta, result.ci, result.p_value, result.p_adjusted = 0.0, (0.0, 0.0), 1.0, 1.0
        decide(result)
        return result
    test = margin_test(a, b, metric.kind, n_resamples=n_resamples, seed=seed,
                       span=_span(metric, 1, np.concatenate([a, b])))
    left_out = ", ".join(f"{count} {side} item(s) without a value" for side, count in result.lost.items() if count)
    result.comparison = f"{means} ({test.method})" + (f"; left out: {left_out}" if left_out else "")
    _measure(result, test, tolerance, family, fractions)
    return result


def check_vs_baseline(
    current: CheckResult, stored: dict[str, Any], tolerance: Tolerance, *, baseline_file: str,
    current_metadata: dict[str, Any], stored_metadata: dict[str, Any], seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES, family: int = 1, fractions: Fractions | None = None,
) -> list[CheckResult]:
    """Compare this run's per-item gap (quantized − reference) with the stored one, item by item.

    A changed fingerprint fails at once as a stale baseline: never compare silently. At a sequential look
    (``fractions``) it is skipped instead, saying so: suites fingerprint the items they ran, and a look runs a
    prefix of the budget's items, so a baseline recorded at another look or profile differs there by design. When the reference
    values themselves moved beyond the band (shown by the two-sided test), an inconclusive ``reference_drift``
    check names the recorded differences that could explain it (library versions, model hash, device ...).
    """
    metric = _metric_of(current)
    result = _result(metric, "vs_baseline", tolerance)
    recorded: dict[str, str] = stored.get("fingerprint", {})
    changed = sorted(k for k in set(current.fingerprint) | set(recorded)
                     if current.fingerprint.get(k) != recorded.get(k))
    if changed and fractions is not None:  # a sequential look: its items are a prefix of the budget's
        result.verdict = "skipped"
        result.reason = (f"no test: {baseline_file} was recorded on other items or settings (fingerprint "
                         f"{', '.join(changed)}); a sequential look compares only with a baseline of its own items")
        return [result]
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
    gap_base, gap_now = paired_difference(ref_base, q_base), paired_difference(ref_now, q_now)
    valid = ~(np.isnan(gap_base) | np.isnan(gap_now))
    result.n = int(valid.sum())
    unmatched = len(current.item_ids) - len(ids)
    result.lost = {"not_in_baseline": unmatched, "invalid": len(ids) - result.n}
    if result.n < MIN_PAIRED:
        return [_skip_small(result, f"matched by id in {baseline_file} and valid on both runs")]
    result.reference, result.quantized = float(ref_now[valid].mean()), float(q_now[valid].mean())
    result.baseline = float(q_base[valid].mean())
    test = margin_test(gap_base[valid], gap_now[valid], "continuous", n_resamples=n_resamples, seed=seed,
                       span=_span(metric, 2, np.concatenate([gap_base[valid], gap_now[valid]])))
    result.comparison = (
        f"the quantized-reference gap moved from {_fmt(float(gap_base[valid].mean()))} in {baseline_file} "
        f"to {_fmt(float(gap_now[valid].mean()))}"
        + (f" ({unmatched} item(s) of this run are not in the baseline)" if unmatched else "")
        + (f" ({result.lost['invalid']} matched item(s) without a value in one of the runs, left out)"
           if result.lost["invalid"] else "") + f" ({test.method})")
    _measure(result, test, tolerance, family, fractions)
    results = [result]
    drift = _reference_drift(metric, tolerance, ref_base, ref_now, current_metadata, stored_metadata,
                             baseline_file, seed, n_resamples)
    if drift is not None:
        results.append(drift)
    return results


def _metric_of(result: CheckResult) -> Metric:
    """The result's registered metric, else the parts of its definition a re-test needs (no bounds known)."""
    try:
        return get_metric(result.key)
    except KeyError:
        return Metric(result.suite, result.metric, "", result.scale, result.direction, unit=result.unit)


def _span(metric: Metric, differences: int, values: np.ndarray) -> tuple[float, float]:
    """The range a mean of ``differences``-fold per-item differences can take: from the metric's bounds, or for
    a metric without both bounds from the range of the values seen on both sides (an assumption, docs/gate.md);
    values that are all equal show no range at all, so the span is then unbounded."""
    low, high = metric.bounds
    if low is None or high is None:
        finite = values[np.isfinite(values)]
        width = float(finite.max() - finite.min()) if finite.size else 0.0
        return (-width, width) if width > 0 else (-math.inf, math.inf)
    width = differences * (high - low)
    return -width, width


def _reference_drift(
    metric: Metric, tolerance: Tolerance, ref_base: np.ndarray, ref_now: np.ndarray,
    current_metadata: dict[str, Any], stored_metadata: dict[str, Any], baseline_file: str, seed: int,
    n_resamples: int,
) -> CheckResult | None:
    """An inconclusive check when the reference values moved beyond the band either way (shown); else None."""
    a, b = paired_valid(ref_base, ref_now)
    if a.size < MIN_PAIRED:
        return None
    test = margin_test(a, b, metric.kind, n_resamples=n_resamples, seed=seed,
                       span=_span(metric, 1, np.concatenate([a, b])))
    threshold = tolerance.threshold(float(a.mean()))
    p = min(1.0, 2 * min(test.p_above(threshold), test.p_below(-threshold)))
    if p >= tolerance.alpha:
        return None
    changes = metadata_changes(stored_metadata, current_metadata)
    cause = (", ".join(changes[:6]) + (" ..." if len(changes) > 6 else "")) if changes else (
        "no recorded library, model or device difference explains it (nondeterminism?)")
    drift = _result(metric, "reference_drift", tolerance)
    drift.verdict = "inconclusive"
    drift.reference, drift.baseline, drift.delta = float(b.mean()), float(a.mean()), test.estimate
    drift.ci, drift.p_value, drift.n = test.interval(tolerance.alpha / 2), p, test.n
    drift.reason = (f"the reference itself changed beyond the band since {baseline_file}: {metric.name} "
                    f"{_fmt(float(a.mean()))}->{_fmt(float(b.mean()))} ({test.method} p={p:.3g}); {cause}")
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


def _measure(result: CheckResult, test: MarginTest, tolerance: Tolerance, family: int,
             fractions: Fractions | None = None) -> None:
    """Fill delta, the decision's interval, the fail test's p-value, mdd and n_needed; then decide.

    At a sequential look (``fractions``, docs/sequential.md) the pass test's interval is at its share of alpha and
    the p-value is ``p / share`` of the fail test's alpha, so that the fixed-n rule applied to them is the look's.
    """
    alpha, b = tolerance.alpha, tolerance.threshold(result.reference or 0.0)
    sign = -1.0 if result.direction == "higher" else 1.0  # D = sign * delta
    result.delta, result.n = test.estimate, test.n
    fail_alpha = (alpha / 2 if tolerance.two_sided else alpha) / family
    pass_share, fail_share = share(fractions, alpha), share(fractions, fail_alpha)
    if fractions is not None:
        result.notes["sequential"] = {"pass_share": pass_share, "fail_share": fail_share}
    alpha *= pass_share
    fail_alpha *= fail_share
    if tolerance.two_sided:
        result.ci = test.interval(alpha / 2)
        p = min(1.0, 2 * min(test.p_above(b), test.p_below(-b)))
    else:
        result.ci = test.interval(alpha)
        p = test.p_below(-b) if sign < 0 else test.p_above(b)
    result.p_value = min(1.0, p / fail_share) if fail_share > 0 else 1.0
    result.p_adjusted = min(1.0, result.p_value * family)
    result.mdd = detectable(test, b, fail_alpha)
    degradation = abs(test.estimate) if tolerance.two_sided else sign * test.estimate
    result.n_needed = items_needed(test, abs(degradation - b), fail_alpha if degradation > b else alpha)
    decide(result)


def degradation_bounds(result: CheckResult) -> tuple[float, float]:
    """The decision's interval as bounds of D, the degradation (quantized worse by D in the metric's direction)."""
    assert result.ci is not None
    low, high = result.ci
    return (-high, -low) if result.direction == "higher" else (low, high)


def decide(result: CheckResult) -> None:
    """Set verdict and reason from the result's interval and adjusted p-value (rules: module docstring).

    Called again at the end of a run, after multiplicity control has set the final ``p_adjusted``.
    """
    tolerance = parse_tolerance(result.tolerance)
    alpha, b = tolerance.alpha, tolerance.threshold(result.reference or 0.0)
    assert result.ci is not None and result.p_value is not None and result.p_adjusted is not None
    high = degradation_bounds(result)[1]
    sequential = result.notes.get("sequential") or {}
    spent = alpha * sequential.get("pass_share", 1.0)  # a sequential look's interval is at its share of alpha
    level = 1 - spent if tolerance.two_sided else 1 - 2 * spent
    change = f"{'+' if (result.delta or 0) >= 0 else ''}{_fmt(result.delta or 0.0)}"
    percent = f"{100 * level:.6g}%" if sequential else f"{level:.0%}"  # a look's level can be 99.96 %
    interval = f"{percent} CI of delta [{_fmt(result.ci[0])}, {_fmt(result.ci[1])}]"
    band = f"band {tolerance} (+/-{_fmt(b)})"
    stat = (f"{'two-sided' if tolerance.two_sided else 'one-sided'} p={result.p_value:.3g}, "
            f"adjusted p={result.p_adjusted:.3g}, alpha={_fmt(alpha)}, n={result.n}")
    if result.p_adjusted < alpha:
        result.verdict = "fail"
        word = "changed" if tolerance.two_sided and high < -b else "degraded"
        text = f"{result.metric} {word} by more than the {band}: delta {change}, {interval} ({stat})"
    elif (tolerance.two_sided and -b < result.ci[0] and result.ci[1] < b) or (not tolerance.two_sided and high < b):
        improved = not tolerance.two_sided and high < -b
        result.verdict = "improved" if improved else "pass"
        text = (f"{result.metric} improved by more than the {band}" if improved else
                f"delta {change} is shown within the {band}") + f": {interval} ({stat})"
    else:
        result.verdict = "inconclusive"
        text = (f"{result.metric} inconclusive: delta {change}, the {interval} straddles the {band} ({stat}; "
                f"this run detects a degradation of {_fmt(result.mdd or math.nan)} with 80% power"
                + (f", about {result.n_needed} items would decide it" if result.n_needed else "") + ")")
    if result.verdict != "inconclusive":
        result.n_needed = None
    if "look" in sequential:
        used = (f"all {sequential['used']} items the data has, budget {sequential['budget']}" if "used" in sequential
                else f"{sequential['items']} of {sequential['budget']} items")
        text += (f"; sequential: {used} (look {sequential['look']} of {sequential['looks']}), "
                 f"{sequential['stopped'] or 'the suite stopped'}")
    result.reason = f"{text}; {result.comparison}" if result.comparison else text


def _fmt(value: float) -> str:
    return f"{value:.4g}"
