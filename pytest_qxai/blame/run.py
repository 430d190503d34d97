"""Blame one gate check end to end: regressed items, the search, a proposed ``keep=`` spec, its verification.

Uses the model pair already in memory: full-precision sublayers are swapped into the quantized model for each
measurement (:mod:`.swap`) and the suite's re-measure callable (:mod:`.registry`) scores the regressed items.
``--qxai-blame-verify`` quantizes the proposed spec, runs the blamed metric's suite on it and gates that
metric as the run did.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..gate.check import CheckResult, check_vs_reference, item_values, jsonable
from ..metrics import Metric, get_metric
from ..specs import KEEP_BACKENDS, KeepUnits, QuantSpec, with_keep
from .registry import BlameSupport, blame_support
from .search import MAX_KEPT_SHARE, Probe, Recovery, SearchResult, max_kept_layers, recovery, search

if TYPE_CHECKING:
    from ..gate.tolerance import Tolerance
    from ..metrics import SuiteResult
    from ..models.pair import ModelPair

MAX_ITEMS = 64
"""Regressed items re-measured per restoration: the largest regressions (bounds the cost of each measurement)."""

_MEASURED: dict[tuple[str, str, KeepUnits, tuple[str, ...]], dict[str, np.ndarray]] = {}
"""Re-measured values per (quantized model, suite, restoration, items): metrics of one suite share them."""
_VERIFIED: dict[tuple[str, str], tuple["SuiteResult", int]] = {}
"""The suite's result on each verified spec and that model's bytes, by (suite, spec): metrics of a suite share it."""


@dataclass
class Blame:
    """The blame of one check: the restorations measured, the proposed spec, its verification and the cost."""

    check: str
    status: str
    """``blamed``, or ``skipped`` with ``reason``."""
    reason: str = ""
    target: float = 0.5
    items: int = 0
    groups: list[dict[str, Any]] = field(default_factory=list)
    """Per restoration: ``keep`` (its text), ``layers``, ``parameters``, ``share`` and ``ci`` (paired bootstrap)."""
    proposal: str | None = None
    proposal_keep: str | None = None
    """The restoration the proposal adds, in ``keep=`` syntax (one of ``groups``)."""
    proposal_share: float | None = None
    proposal_ci: list[float] | None = None
    spread_layers: int | None = None
    """Without a proposal because the damage is spread: the fewest layers whose restoration reaches the target."""
    verification: dict[str, Any] | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    nodeid: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON types only."""
        return jsonable(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Blame":
        """Rebuild from :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def skipped(check: str, reason: str, target: float, nodeid: str = "") -> Blame:
    """A blame that did not run, with its one-line reason."""
    return Blame(check, "skipped", reason, target, nodeid=nodeid)


def why_not(pair_quant: QuantSpec, checkpoint: str | None, check: CheckResult) -> str | None:
    """The reason blame cannot run for ``check`` under this spec, or None when it can."""
    if checkpoint is not None:
        return f"blame needs a spec to re-quantize with keep=; --qxai-quantized {checkpoint} is a fixed checkpoint"
    backend = pair_quant.scheme.backend
    if backend not in KEEP_BACKENDS:
        return (f"the {backend} backend cannot keep modules in full precision (keep= works with "
                f"{', '.join(KEEP_BACKENDS)})")
    if blame_support(check.suite, check.metric) is None:
        return f"blame not supported for this metric: the {check.suite} suite cannot re-measure {check.metric}"
    return None


def regressed_items(check: CheckResult, metric: Metric) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, reference and quantized values of the items that got worse, the :data:`MAX_ITEMS` largest first."""
    ref, quant = item_values(check.reference_items), item_values(check.quantized_items)
    sign = 1.0 if metric.direction == "higher" else -1.0
    gap = np.where(np.isnan(ref) | np.isnan(quant), 0.0, sign * (ref - quant))
    order = [i for i in np.argsort(-gap, kind="stable") if gap[i] > 0][:MAX_ITEMS]
    return [check.item_ids[i] for i in order], ref[order], quant[order]


def blame_check(pair: "ModelPair", check: CheckResult, tolerance: "Tolerance", *, target: float, verify: bool,
                n_resamples: int) -> Blame:
    """Localize ``check``'s regression in the decoder layers and propose (and optionally verify) a keep= spec."""
    from .swap import restored, unit_parameters, unpacked

    reason = why_not(pair.config.quant, pair.config.quantized, check)
    if reason is not None:
        return skipped(check.key, reason, target, check.nodeid)
    support = blame_support(check.suite, check.metric)
    assert support is not None
    metric = get_metric(check.key)
    ids, ref, quant = regressed_items(check, metric)
    if not ids:
        return skipped(check.key, "no item regressed: nothing to blame", target, check.nodeid)
    started = time.perf_counter()
    seed, higher = pair.config.seed, metric.direction == "higher"
    parameters = unit_parameters(pair.reference.model)
    pair.quantized.runtime.make_resident()

    def evaluate(units: KeepUnits) -> Recovery:
        key = (pair.quantized.identity, support.suite, units, tuple(ids))
        if key not in _MEASURED:
            with restored(pair.quantized.model, pair.reference.model, units):
                _MEASURED[key] = support.remeasure(pair, ids)
        return recovery(ref, quant, np.asarray(_MEASURED[key][metric.name], dtype=np.float64), higher, seed)

    n_layers = 1 + max(layer for layer, _ in parameters)
    with unpacked(pair.quantized.model, pair.backend):
        found = search(n_layers, evaluate, lambda units: sum(parameters[u] for u in units), target)
    blame = _summary(check, found, target, len(ids), n_layers)
    blame.cost = {"measurements": len(found.probes), "item_evaluations": len(found.probes) * len(ids),
                  "seconds": round(time.perf_counter() - started, 2), "budget_exhausted": found.exhausted,
                  "decoder_parameters": sum(parameters.values())}
    if found.proposal is not None:
        blame.proposal = str(with_keep(pair.config.quant, found.proposal.units))
        if verify:
            blame.verification = verify_spec(pair, support, metric, tolerance, blame.proposal, ids, ref, quant,
                                             n_resamples)
    return blame


def _summary(check: CheckResult, found: SearchResult, target: float, items: int, n_layers: int) -> Blame:
    """The blame record of a finished search."""
    blame = Blame(check.key, "blamed", "", target, items, [_group(p) for p in found.probes], nodeid=check.nodeid)
    if found.spread is not None:
        spread = found.spread
        blame.spread_layers = spread.layers
        blame.reason = (f"no localized cause: the damage is spread over {spread.layers} layers (the fewest whose "
                        f"restoration recovers {target:.0%} of the regression: keep={spread.label}, "
                        f"{spread.recovery.share:.0%}; a proposal keeps at most {max_kept_layers(n_layers)} of "
                        f"{n_layers} layers, {MAX_KEPT_SHARE:.0%})")
    elif found.proposal is None:
        best = max(found.probes, key=lambda p: p.recovery.share, default=None)
        blame.reason = (f"no restoration measured recovered {target:.0%} of the regression"
                        + (f"; the best, keep={best.label}, recovered {best.recovery.share:.0%}" if best else ""))
    else:
        blame.proposal_keep = found.proposal.label
        blame.proposal_share = found.proposal.recovery.share
        blame.proposal_ci = list(found.proposal.recovery.ci)
    return blame


def _group(probe: Probe) -> dict[str, Any]:
    return {"keep": probe.label, "layers": probe.layers, "parameters": probe.cost,
            "share": probe.recovery.share, "ci": list(probe.recovery.ci)}


def verify_spec(pair: "ModelPair", support: BlameSupport, metric: Metric, tolerance: "Tolerance", proposal: str,
                ids: Sequence[str], ref: np.ndarray, quant: np.ndarray, n_resamples: int) -> dict[str, Any]:
    """Quantize ``proposal``, run the suite on it, gate ``metric`` and measure the recovery and memory."""
    from ..models.pair import get_pair, release_pair
    from ..specs import parse_spec

    started = time.perf_counter()
    key = (support.suite, proposal)
    if key not in _VERIFIED:
        cfg = dataclasses.replace(pair.config, quant=parse_spec(proposal))
        try:
            other = get_pair(cfg)
            _VERIFIED[key] = (support.run(other), model_bytes(other.quantized.model))
        finally:
            release_pair(cfg)
    result, proposal_bytes = _VERIFIED[key]
    reference, quantized = result.values(metric.name)
    gate = check_vs_reference(metric, tolerance, reference, quantized, result.item_ids, seed=pair.config.seed,
                              n_resamples=n_resamples)
    where = {item: k for k, item in enumerate(result.item_ids)}
    back = recovery(ref, quant, np.asarray(quantized, dtype=np.float64)[[where[i] for i in ids]],
                    metric.direction == "higher", pair.config.seed)
    memory = {"quantized_bytes": model_bytes(pair.quantized.model), "proposal_bytes": proposal_bytes,
              "reference_bytes": model_bytes(pair.reference.model)}
    return {"spec": proposal, "verdict": gate.verdict, "reason": gate.reason, "reference": gate.reference,
            "quantized": gate.quantized, "delta": gate.delta, "ci": list(gate.ci) if gate.ci else None,
            "p_value": gate.p_value, "n": gate.n, "recovered_share": back.share, "recovered_ci": list(back.ci),
            **memory, "seconds": round(time.perf_counter() - started, 2)}


def model_bytes(model: Any) -> int:
    """Bytes of every tensor in the model's state dict (packed weights, scales and zero points included)."""
    import torch

    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
