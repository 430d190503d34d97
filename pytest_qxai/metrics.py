"""The metric registry and the per-item result a suite hands to the gate (no torch import).

Every metric declares its suite, direction, bounds, unit, whether per-item values are binary or
continuous, and a default tolerance band. Suites register theirs at import; users register their own
with :func:`register_metric` and check them with the ``qxai_check`` fixture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

Kind = Literal["binary", "continuous"]
Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """What a metric is and how the gate treats it.

    ``tolerance`` is a band in the tolerance grammar (``abs:0.03``, ``rel:0.1,two-sided,alpha=0.01``):
    the largest degradation of the quantized model that is still acceptable.
    """

    suite: str
    name: str
    description: str
    kind: Kind
    direction: Direction = "higher"
    bounds: tuple[float | None, float | None] = (None, None)
    unit: str = ""
    tolerance: str = "abs:0.05"

    def __post_init__(self) -> None:
        """Refuse a kind or direction outside the gate's vocabulary ("Higher" read as lower-is-better inverted every
        verdict of the metric, "Binary" was tested as continuous) and bounds out of order (the worst value flips)."""
        if self.kind not in ("binary", "continuous"):
            raise ValueError(f"metric {self.key}: kind must be 'binary' or 'continuous', got {self.kind!r}")
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"metric {self.key}: direction must be 'higher' or 'lower', got {self.direction!r}")
        low, high = self.bounds
        if low is not None and high is not None and not low < high:
            raise ValueError(f"metric {self.key}: bounds must be (low, high) with low < high, got {self.bounds!r}")

    @property
    def key(self) -> str:
        """``suite.name``, the metric's unique key."""
        return f"{self.suite}.{self.name}"

    def __str__(self) -> str:
        return self.name


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric to the registry (idempotent for an identical definition) and return it."""
    existing = _REGISTRY.get(metric.key)
    if existing is not None and existing != metric:
        raise ValueError(f"metric {metric.key} is already registered with a different definition")
    _REGISTRY[metric.key] = metric
    return metric


def derived_metric(metric: Metric, prefix: str, data: str, wording: tuple[str, str] = ("", "")) -> Metric:
    """Register ``metric`` measured on other data: named ``prefix + name``, the data named in its description.

    ``wording`` replaces what the description says of the original data (old, new), e.g. ("NLI probe", "probe").
    """
    description = metric.description.replace(*wording) if wording[0] else metric.description
    return register_metric(dataclasses.replace(metric, name=prefix + metric.name,
                                               description=f"{description} ({data})"))


def get_metric(key: str) -> Metric:
    """Look a metric up by ``suite.name`` (or by bare name when that is unambiguous)."""
    if key in _REGISTRY:
        return _REGISTRY[key]
    matches = [m for m in _REGISTRY.values() if m.name == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise KeyError(f"unknown metric {key!r}")
    raise KeyError(f"metric name {key!r} is ambiguous: {', '.join(m.key for m in matches)}")


def registered_metrics() -> list[Metric]:
    """All registered metrics, sorted by key."""
    return [(_REGISTRY[k]) for k in sorted(_REGISTRY)]


@dataclass
class SuiteResult:
    """Per-item values of every metric of one suite for both models, on the same items.

    ``reference[m][i]`` and ``quantized[m][i]`` belong to item ``item_ids[i]``; NaN means the metric
    does not apply to that item (e.g. unfaithfulness of an item whose prediction did not flip).
    ``fingerprint`` identifies the data, templates and method parameters: a baseline recorded under
    another fingerprint is stale. ``profiles`` holds per-layer curves for reports, ``skipped`` the
    metrics that could not run with the reason, ``notes`` facts worth recording (e.g. which
    attribution method ran). ``lost[metric][side]`` counts the units whose output was degenerate on
    that side (scored as the metric's worst value, never dropped); what counts as degenerate is in
    ``notes["degenerate"]``.
    """

    suite: str
    item_ids: list[str]
    reference: dict[str, np.ndarray]
    quantized: dict[str, np.ndarray]
    fingerprint: dict[str, str]
    profiles: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    lost: dict[str, dict[str, int]] = field(default_factory=dict)

    def values(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The reference and quantized per-item arrays of a metric."""
        return self.reference[metric], self.quantized[metric]


NOT_APPLICABLE = "not applicable: "
"""How every skip of a metric that does not apply to the run begins (no data of the kind, no backward pass, a
device too slow for the method): more items cannot change it, so a sequential look takes it as settled. A skip
that more items may lift (too few items per label, no fact recalled yet) says so without this prefix, and a
sequential suite keeps looking (the gate makes either a SKIPPED test with the reason)."""

AT_CHANCE = NOT_APPLICABLE + "reference at chance"
"""How a skip begins whose precondition failed on the items seen (more items may show it): the only kind of
``not applicable`` that a sequential look leaves open; every other one (no data of the kind in the run, no gold
explanations, no backward pass) more items cannot change."""


def not_applicable(suite: str, metrics: Sequence[Metric], reason: str) -> SuiteResult:
    """A suite result with no items: every metric skipped for ``reason`` (the run has no data the suite needs)."""
    return SuiteResult(suite, [], {}, {}, {}, skipped=dict.fromkeys([m.name for m in metrics], reason))


def combine(suite: str, parts: Sequence[SuiteResult]) -> SuiteResult:
    """One suite result from parts on disjoint items and disjoint metrics (one part per kind of data).

    Each metric is NaN on the other parts' items (not a unit there); skipped metrics, lost counts, profiles,
    fingerprints and notes are merged, notes that are dictionaries key by key (``notes["precondition"]`` keeps
    every part's tests).
    """
    out = SuiteResult(suite, [i for part in parts for i in part.item_ids], {}, {}, {})
    for role in ("reference", "quantized"):
        names = list(dict.fromkeys(name for part in parts for name in getattr(part, role)))
        getattr(out, role).update({name: np.concatenate(
            [getattr(part, role).get(name, np.full(len(part.item_ids), np.nan)) for part in parts]) for name in names})
    for part in parts:
        out.fingerprint.update(part.fingerprint)
        out.profiles.update(part.profiles)
        out.skipped.update(part.skipped)
        out.lost.update(part.lost)
        for key, value in part.notes.items():
            before = out.notes.get(key)
            out.notes[key] = {**before, **value} if isinstance(before, dict) and isinstance(value, dict) else value
    return out


def as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-item values as a float64 vector (NaN allowed)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"per-item values must be one-dimensional, got shape {arr.shape}")
    return arr
