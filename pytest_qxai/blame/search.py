"""Which restored sublayers recover a regression: the recovery share with its paired interval, and the search.

A *restoration* is a set of ``(layer, sublayer)`` units (the ``keep=`` set of :mod:`pytest_qxai.specs`) whose
full-precision weights are put back into the quantized model. Its *recovery share* on the regressed items is
``sum(restored - quantized) / sum(reference - quantized)`` in the metric's good direction: 0 when nothing
changes, 1 when the reference's values come back. The search halves layer groups (a beam of the best
``BEAM`` groups per level), so it measures about ``1 + 2 * BEAM * log2(layers)`` restorations, then tries
unions of the best small groups and attention-only / MLP-only variants, within :data:`MAX_MEASUREMENTS`.
No torch here: ``measure`` is any callable, so the search is tested on synthetic models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..specs import COMPONENTS, KeepUnits, format_keep

BEAM = 2
"""Groups refined per level: the best two, so a regression spread over two places is still followed."""
MAX_MEASUREMENTS = 40
"""Upper bound on restorations measured per blamed check (30 layers need at most 29)."""
GREEDY_STEPS = 4
"""Unions of the best small groups tried when no single measured group reaches the target."""
RESAMPLES = 2000
CONFIDENCE = 0.95
MAX_KEPT_SHARE = 0.25
"""A proposal keeps at most this share of the decoder layers (at least one layer): a 4-bit spec with a quarter of
its layers in full precision already stores about 7 bits per decoder weight, nearly an 8-bit spec's memory, so a
restoration that needs more layers names no localized cause, and the fix is a wider scheme, not ``keep=``."""


@dataclass(frozen=True)
class Recovery:
    """The recovery share of one restoration on the regressed items, with its paired bootstrap interval."""

    share: float
    ci: tuple[float, float]


@dataclass(frozen=True)
class Probe:
    """One measured restoration: its units, its cost (parameters kept in full precision) and its recovery."""

    units: KeepUnits
    cost: int
    recovery: Recovery

    @property
    def label(self) -> str:
        """The restoration in ``keep=`` syntax, e.g. ``17-19`` or ``mlp.17``."""
        return format_keep(self.units)

    @property
    def layers(self) -> int:
        """Decoder layers the restoration touches (a layer counts when either of its sublayers is kept)."""
        return len({layer for layer, _ in self.units})


@dataclass
class SearchResult:
    """Every restoration measured, in order, and the cheapest one reaching the target share (if any)."""

    probes: list[Probe] = field(default_factory=list)
    proposal: Probe | None = None
    spread: Probe | None = None
    """Without a proposal: the restoration of the fewest layers that reaches the target but keeps more than
    :func:`max_kept_layers` (the damage is spread, no localized cause)."""
    exhausted: bool = False
    """The measurement budget ran out before the search finished."""


def max_kept_layers(n_layers: int) -> int:
    """Layers a proposal may keep: :data:`MAX_KEPT_SHARE` of ``n_layers``, at least one (the finest cause named)."""
    return max(1, int(n_layers * MAX_KEPT_SHARE))


def recovery(reference: np.ndarray, quantized: np.ndarray, restored: np.ndarray, higher_is_better: bool = True,
             seed: int = 0) -> Recovery:
    """The share of ``reference - quantized`` that ``restored`` gets back, with a paired percentile bootstrap CI.

    Items are resampled jointly on all three sides (scipy's ``bootstrap(paired=True)``). The caller passes
    regressed items only, so the denominator of every resample is positive.
    """
    from scipy import stats

    sign = 1.0 if higher_is_better else -1.0
    gap, gain = sign * (reference - quantized), sign * (restored - quantized)
    share = float(gain.sum() / gap.sum())
    if len(gap) < 2 or np.all(gain * gap.sum() == gap * gain.sum()):
        return Recovery(share, (share, share))  # one item, or every item recovers the same share: no spread

    def ratio(g: np.ndarray, d: np.ndarray, axis: int = -1) -> np.ndarray:
        return g.sum(axis=axis) / d.sum(axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on lumpy (binary) bootstrap distributions
        res = stats.bootstrap((gain, gap), ratio, paired=True, vectorized=True, n_resamples=RESAMPLES,
                              confidence_level=CONFIDENCE, method="percentile", random_state=seed)
    return Recovery(share, (float(res.confidence_interval.low), float(res.confidence_interval.high)))


def whole_layers(layers: range | list[int]) -> KeepUnits:
    """Both sublayers of every layer in ``layers``."""
    return frozenset((layer, part) for layer in layers for part in COMPONENTS)


def only(units: KeepUnits, part: str) -> KeepUnits:
    """The ``part`` sublayers (``attn`` or ``mlp``) of the layers in ``units``."""
    return frozenset((layer, part) for layer, _ in units)


class _Budget:
    """Measures restorations once each, within :data:`MAX_MEASUREMENTS`."""

    def __init__(self, evaluate: Callable[[KeepUnits], Recovery], cost: Callable[[KeepUnits], int], limit: int) -> None:
        self.evaluate, self.cost, self.limit = evaluate, cost, limit
        self.result = SearchResult()
        self.seen: dict[KeepUnits, Probe] = {}

    def probe(self, units: KeepUnits) -> Probe | None:
        """The measured probe of ``units`` (measured now if new), or None when the budget is spent."""
        if units in self.seen:
            return self.seen[units]
        if len(self.seen) >= self.limit:
            self.result.exhausted = True
            return None
        found = Probe(units, self.cost(units), self.evaluate(units))
        self.seen[units] = found
        self.result.probes.append(found)
        return found


def search(n_layers: int, evaluate: Callable[[KeepUnits], Recovery], cost: Callable[[KeepUnits], int],
           target: float, limit: int = MAX_MEASUREMENTS) -> SearchResult:
    """Localize a regression in ``n_layers`` decoder layers; propose the cheapest restoration reaching ``target``.

    1. All layers (how much any decoder restoration can recover). 2. Halve the best ``BEAM`` groups level by level
    down to single layers. 3. If no measured group reaches ``target``, grow a union of the best groups (most
    recovery per layer first). 4. Attention-only and MLP-only variants of the best sets. A restoration that keeps
    more than :func:`max_kept_layers` is never proposed: it is reported as ``spread``.
    """
    budget = _Budget(evaluate, cost, limit)
    if budget.probe(whole_layers(range(n_layers))) is None:
        return budget.result
    frontier = [list(range(n_layers))]
    while frontier:
        children = [half for group in frontier if len(group) > 1
                    for half in (group[: len(group) // 2], group[len(group) // 2 :])]
        measured = [(group, budget.probe(whole_layers(group))) for group in children]
        scored = [(group, p) for group, p in measured if p is not None]
        scored.sort(key=lambda gp: -gp[1].recovery.share)
        frontier = [group for group, _ in scored[:BEAM]]
        if len(scored) < len(measured):
            break
    _grow_union(budget, target)
    for best in _best_sets(budget, target):
        for part in COMPONENTS:
            budget.probe(only(best.units, part))
    allowed = max_kept_layers(n_layers)
    budget.result.proposal = _cheapest([p for p in budget.result.probes if p.layers <= allowed], target)
    if budget.result.proposal is None:
        reaching = [p for p in budget.result.probes if p.recovery.share >= target]
        budget.result.spread = min(reaching, key=lambda p: (p.layers, p.cost)) if reaching else None
    return budget.result


def _cheapest(probes: list[Probe], target: float) -> Probe | None:
    """The cheapest probe whose recovery share reaches ``target`` (ties: the higher share)."""
    reaching = [p for p in probes if p.recovery.share >= target]
    return min(reaching, key=lambda p: (p.cost, -p.recovery.share)) if reaching else None


def _grow_union(budget: _Budget, target: float) -> None:
    """Add the most efficient whole-layer groups one by one until the union reaches ``target``."""
    whole = [p for p in budget.result.probes if p.units == whole_layers(sorted({la for la, _ in p.units}))]
    smallest = _cheapest(whole, target)
    candidates = [p for p in whole if smallest is None or p.cost < smallest.cost]
    candidates.sort(key=lambda p: -p.recovery.share / max(p.cost, 1))
    union: KeepUnits = frozenset()
    for step, group in enumerate(candidates[: GREEDY_STEPS + 1]):
        if group.units <= union:
            continue
        union = union | group.units
        if step == 0:
            continue  # a single group is measured already
        probe = budget.probe(union)
        if probe is None or probe.recovery.share >= target or (smallest and probe.cost >= smallest.cost):
            return


def _best_sets(budget: _Budget, target: float) -> list[Probe]:
    """The whole-layer sets worth splitting into attention and MLP: the cheapest reaching ``target`` and the
    best-recovering smallest group."""
    whole = [p for p in budget.result.probes if p.units == whole_layers(sorted({la for la, _ in p.units}))]
    picks = [p for p in (_cheapest(whole, target),) if p is not None]
    finest = min(len(p.units) for p in whole)
    top = max((p for p in whole if len(p.units) == finest), key=lambda p: p.recovery.share)
    return picks + ([top] if top not in picks else [])
