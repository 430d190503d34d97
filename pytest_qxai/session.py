"""The gate's state for one pytest session: checks run so far, baselines, reports, the summary.

Baseline policy (decided per check, written once at the end by the controller):

* a stored baseline for the check: compare with it (stale fingerprint → fail). With
  ``--qxai-update-baselines=all`` a failing comparison is reported as ``inconclusive`` and the record refreshed.
* no stored baseline: with ``--qxai-update-baselines`` (``all`` or ``missing``), record it; in CI (``$CI``
  set) without that flag, fail and write nothing; locally without it, record it and fail once
  ("fail and create", as pytest-regressions does), so a new baseline is always looked at before it
  is committed.
* nothing stored is removed unless ``--qxai-prune-baselines`` accompanies ``--qxai-update-baselines``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn, Sequence

import numpy as np
import pytest

from .baselines import Baseline, BaselineStore, model_slug
from .config import QxaiConfig
from .errors import BaselineError, QxaiError, QxaiUsageError
from .gate.bands import ModelBands, load_bands
from .gate.check import CheckResult, accept, check_vs_baseline, check_vs_reference, jsonable, summarize
from .gate.multiplicity import adjust, test_time_family
from .gate.spending import Fractions
from .gate.stats import DEFAULT_RESAMPLES
from .gate.tolerance import Tolerance, ToleranceOverrides
from .metrics import Metric, SuiteResult, as_array, get_metric, registered_metrics
from .report import build_report, write_reports
from .report.text import KIND_LABELS, delta_cell, number, p_cell, table_lines, verdict_label, verdict_lines

if TYPE_CHECKING:
    from .blame.run import Blame
    from .models.pair import ModelPair
    from .suite import Suite

Profiles = Mapping[str, Mapping[str, Sequence[float | None]]]
Values = Sequence[float] | np.ndarray

PER_WORKER_METADATA = (
    "device", "cpu_threads", "cpu_capability", "residency", "kv_cache", "load_seconds", "quantize_seconds",
)
"""Metadata that an xdist worker may not share with the others (kept per worker on the controller)."""
STOPPED_EARLY = ("the run stopped before every test ran (interrupted, or -x / --maxfail): what did not run "
                 "was not checked")
"""The error of a run that stopped early with no failing check (one with a failure stays a failed run)."""


def _precondition_of(result: SuiteResult, metric: str) -> dict[str, Any]:
    """The competence test (``require_competence``'s counts) that ``metric`` of ``result`` depends on, as notes of
    its skip: the sequential futility rule reads them (docs/sequential.md)."""
    tests = result.notes.get("precondition", {}).values()
    test = next((t for t in tests if metric in t.get("dependent_metrics", ())), None)
    return {} if test is None else {"precondition": test}


@dataclass
class QxaiSession:
    """Checks of this pytest process (plus its xdist workers' on the controller) and what to do at the end.

    ``metadata`` describes the run (model id and hash, library versions, device ...); the model-pair
    code fills it with ``session.metadata.update(...)``. ``metadata["model_id"]``, when set, names the
    model for the baseline folder; otherwise ``--qxai-model`` (or ``default``) does. ``errors`` name what did
    not run or was not written (they make the run's verdict ``error``).
    """

    config: QxaiConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    results: list[CheckResult] = field(default_factory=list)
    n_resamples: int = DEFAULT_RESAMPLES
    messages: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refusal: str = ""
    """Why the run was refused before any suite ran (the reference failed its sanity checks); exit status 4."""
    blames: list["Blame"] = field(default_factory=list)
    requested: bool = False
    """The user chose a model, spec or device: this run is a gate run even before a gate test reports."""
    used: bool = False
    """A test using ``qxai_check`` reported in this session."""
    same_model: bool = False
    """The pair's quantized side is the reference model itself (``--quant=none``): see :func:`check_vs_reference`."""
    exitfirst: bool = False
    """``-x``: the run stops at its first failure, so a sequential suite stops at the look that shows one."""
    planned: int = 0
    """Fail decisions this process plans (two per collected test that uses ``qxai_check``): the test-time bound."""
    overrides: ToleranceOverrides = field(init=False)
    started: float = field(default_factory=time.time)
    model_bands: ModelBands | None = None
    amend_report: Callable[[dict[str, Any]], None] | None = None
    """Called with the report document before it is written (the ``pytest_qxai_report`` hook)."""
    _worker_suites: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)
    _errored_suites: set[str] = field(default_factory=set, init=False, repr=False)
    _crashed: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)
    """xdist's reports of tests whose worker died (suite, cause); errors once the run turns out to be a gate run."""
    _baselines: dict[Path, Baseline | BaselineError | None] = field(default_factory=dict, init=False, repr=False)
    _stopped: dict[str, list[CheckResult]] = field(default_factory=dict, init=False, repr=False)
    """Under ``--qxai-budget``: each metric's checks as they stopped (by ``suite.metric``), for the suite's tests."""

    def __post_init__(self) -> None:
        """Parse the tolerance overrides now, so bad ones stop the run before any model loads."""
        self.overrides = ToleranceOverrides.parse(self.config.tolerances)

    @property
    def model_id(self) -> str:
        """The model's name in baselines and reports."""
        return str(self.metadata.get("model_id") or self.config.model or "default")

    def load_bands(self, model_id: str) -> ModelBands:
        """Read the model's band file once (a usage error when it is bad) and use it for every check."""
        self.model_bands = load_bands(self.config.baseline_dir / model_slug(model_id), model_id)
        return self.model_bands

    def tolerance(self, metric: Metric) -> Tolerance:
        """The metric's band in this run: overrides > the model's band file > the metric's default."""
        bands = self.model_bands if self.model_bands is not None else self.load_bands(self.model_id)
        return self.overrides.resolve(metric, bands.bands)

    @property
    def store(self) -> BaselineStore:
        """This run's baseline file."""
        return BaselineStore(self.config.baseline_dir, self.model_id, self.config.baseline_name,
                             self.metadata.get("model_hash"))

    @property
    def quant_label(self) -> str:
        """What the quantized side is: the ``--quant`` spec, or a ``--qxai-quantized`` checkpoint's own scheme."""
        return str(self.metadata.get("quant") or self.config.quant)

    def run_metadata(self, *, stable: bool = False) -> dict[str, Any]:
        """The run's settings from the options, then ``metadata`` on top.

        ``stable=True`` leaves out timings (keys ending in ``_seconds``) and cache use: what a baseline records, so
        refreshing an unchanged run rewrites nothing and a reference drift is not blamed on a clock.
        """
        quant = self.config.quant
        base = {"quant": str(quant), "quant_params": quant.resolved, "seed": self.config.seed,
                "profile": self.config.profile, "samples": self.config.samples, "device": self.config.device,
                "dtype": self.config.dtype, "multiple_testing": self.config.multiple_testing}
        if self.config.budget is not None:  # sequential mode only: fixed-count runs record what they always did
            base["budget"] = str(self.config.budget)
        merged = base | self.metadata
        if stable:  # timings vary; sanity figures and cache activity describe the run, not a check: not in baselines
            merged = {k: v for k, v in merged.items()
                      if not k.endswith("_seconds") and k not in ("workers", "sanity", "cache")}
        return jsonable(merged)  # type: ignore[no-any-return]

    def check(
        self, metric: Metric | str, reference: Values, quantized: Values, *,
        item_ids: Sequence[str] | None = None, fingerprint: Mapping[str, str] | None = None,
        profiles: Profiles | None = None, notes: Mapping[str, Any] | None = None, nodeid: str = "",
    ) -> list[CheckResult]:
        """Gate one metric: vs the reference, and vs the stored baseline when there is (or should be) one."""
        results = self._evaluate(metric, reference, quantized, item_ids=item_ids, fingerprint=fingerprint,
                                 profiles=profiles, notes=notes)
        return self._record(results, nodeid)

    def _record(self, results: list[CheckResult], nodeid: str) -> list[CheckResult]:
        """Add checks of the test ``nodeid`` to the run."""
        for r in results:
            r.nodeid = nodeid
        self.results.extend(results)
        return results

    def _evaluate(
        self, metric: Metric | str, reference: Values, quantized: Values, *,
        item_ids: Sequence[str] | None = None, fingerprint: Mapping[str, str] | None = None,
        profiles: Profiles | None = None, notes: Mapping[str, Any] | None = None,
        fractions: Fractions | None = None,
    ) -> list[CheckResult]:
        """The checks of :meth:`check`, not recorded; ``fractions``: at a sequential look (docs/sequential.md)."""
        metric = resolve_metric(metric)
        ref, quant = as_array(reference), as_array(quantized)
        ids = [str(i) for i in (item_ids if item_ids is not None else range(ref.size))]
        if not (ref.size == quant.size == len(ids)):
            raise QxaiUsageError(f"{metric.key}: {ref.size} reference values, {quant.size} quantized values "
                                 f"and {len(ids)} item ids; they must match")
        if len(set(ids)) != len(ids):
            raise QxaiUsageError(f"{metric.key}: item ids are not unique")
        values = np.concatenate([ref, quant])
        if metric.kind == "binary" and not np.all(np.isin(values, (0.0, 1.0)) | np.isnan(values)):
            raise QxaiUsageError(f"{metric.key} is binary: per-item values must be 0, 1 or NaN")
        tolerance = self.tolerance(metric)
        current = check_vs_reference(metric, tolerance, ref, quant, ids, seed=self.config.seed,
                                     n_resamples=self.n_resamples, family=self.family, fractions=fractions,
                                     same_model=self.same_model)
        current.fingerprint = {str(k): str(v) for k, v in (fingerprint or {}).items()}
        current.profiles = jsonable(dict(profiles or {}))
        current.notes = jsonable(dict(notes or {})) | current.notes
        return [current, *self._vs_baseline(current, tolerance, fractions)]

    @property
    def family(self) -> int:
        """The Bonferroni multiplier of a fail decision made before the run's other p-values are known."""
        return test_time_family(self.config.multiple_testing, self.planned)

    def check_suite(self, result: SuiteResult, metric: Metric, nodeid: str = "") -> list[CheckResult]:
        """Gate one metric of a suite's per-item results (or record why the suite skipped it).

        Under ``--qxai-budget`` the checks are those :meth:`run_suite` stopped at. Profiles named ``metric.name``
        or ``metric.name/<plot>`` travel with the check, and so do the suite's counts of degenerate units per side
        for this metric (``notes["lost"]``, and added to the check's ``lost``: a degenerate unit scored at its
        worst value is still a unit the model lost).
        """
        stopped = self._stopped.get(metric.key)
        decided_earlier = stopped is not None and stopped[0].verdict != "skipped"  # its vs_reference check
        if metric.name in result.skipped and not decided_earlier:
            return [self.skip(metric, result.skipped[metric.name], nodeid)]
        return self._record(stopped if stopped is not None else self._suite_checks(result, metric), nodeid)

    def _suite_checks(self, result: SuiteResult, metric: Metric,
                      fractions: Fractions | None = None) -> list[CheckResult]:
        """The checks of one metric of a suite result, not recorded (see :meth:`check_suite`)."""
        reference, quantized = result.values(metric.name)
        profiles = {k: v for k, v in result.profiles.items() if k == metric.name or k.startswith(metric.name + "/")}
        degenerate = result.lost.get(metric.name, {})
        notes = {**result.notes, "lost": {"reference": 0, "quantized": 0} | degenerate}
        checks = self._evaluate(metric, reference, quantized, item_ids=result.item_ids,
                                fingerprint=result.fingerprint, profiles=profiles, notes=notes, fractions=fractions)
        for check in (c for c in checks if c.kind == "vs_reference"):  # units lost (NaN) + units scored degenerate
            check.lost = {side: check.lost.get(side, 0) + degenerate.get(side, 0)
                          for side in ("reference", "quantized")}
        return checks

    def run_suite(self, pair: "ModelPair", run: Callable[["ModelPair"], SuiteResult],
                  suite: "Suite | None" = None) -> SuiteResult:
        """A suite's result: ``run(pair)`` at the profile's item count; under ``--qxai-budget``, at growing nested
        prefixes of its seeded item order (sequential looks, docs/sequential.md) until every check of the suite
        is decided or the budget is spent. The checks as they stopped are what :meth:`check_suite` records.
        A budget named by a profile needs the registered ``suite``, whose counts in that profile it uses."""
        budget = self.config.budget
        if budget is None:
            return run(pair)
        from .gate.sequential import plan, run_looks

        if budget.items is None and suite is None:
            raise QxaiUsageError(f"--qxai-budget={budget} gives each suite its {budget.profile} count: run a "
                                 "registered suite (qxai_run_suite(MY_SUITE.result, MY_SUITE)), or give the budget "
                                 "in items")
        limit = budget.items if suite is None else suite.budget(self.config)
        assert limit is not None
        last: list[SuiteResult] = []  # the latest look's result

        def evaluate(n: int, fractions: Fractions) -> list[CheckResult]:
            config = (dataclasses.replace(pair.config, samples=n) if budget.items is not None else
                      dataclasses.replace(pair.config, profile=budget.profile, share=Fraction(n, limit)))
            last[:] = [run(dataclasses.replace(pair, config=config))]
            skipped = [CheckResult(last[0].suite, name, "vs_reference", "skipped", reason,  # more items may change it
                                   notes=_precondition_of(last[0], name))
                       for name, reason in last[0].skipped.items() if last[0].item_ids]
            return skipped + [check for metric in suite_metrics(last[0])
                              for check in self._suite_checks(last[0], metric, fractions)]

        looks = plan(limit, head=None if suite is None else suite.first_look(self.config))
        checks = run_looks(looks, evaluate, self.family, budget.seconds, stop_at_fail=self.exitfirst)
        self._stopped.update({key: [c for c in checks if c.key == key] for key in dict.fromkeys(c.key for c in checks)})
        return last[0]

    def skip(self, metric: Metric | str, reason: str, nodeid: str = "") -> CheckResult:
        """Record that a metric could not run here (e.g. no backward pass through a quantized kernel)."""
        metric = resolve_metric(metric)
        result = CheckResult(metric.suite, metric.name, "vs_reference", "skipped", reason,
                             tolerance=str(self.tolerance(metric)), direction=metric.direction,
                             scale=metric.kind, unit=metric.unit, nodeid=nodeid)
        self.results.append(result)
        return result

    def blame(self, results: Sequence[CheckResult]) -> None:
        """With ``--qxai-blame``: blame the failing (or named) vs-reference checks among ``results``."""
        targets = self.config.blame
        if targets is None:
            return
        from .blame.run import blame_check, skipped, why_not

        chosen = [r for r in results if r.kind == "vs_reference" and (r.key in targets if targets else r.failed)]
        for r in chosen:
            reason = (why_not(self.config.quant, self.config.quantized, r) if r.failed
                      else f"{r.key} did not fail (verdict {r.verdict}): nothing to blame")
            if reason is not None:
                self.blames.append(skipped(r.key, reason, self.config.blame_target, r.nodeid))
                continue
            from .models.pair import get_pair

            try:
                pair = get_pair(self.config)
                if "items" in r.notes.get("sequential", {}):  # the items the check used, as run_suite ran them
                    pair = dataclasses.replace(pair, config=dataclasses.replace(
                        pair.config, samples=r.notes["sequential"]["items"]))
                self.blames.append(blame_check(pair, r, self.tolerance(resolve_metric(r.key)),
                                               target=self.config.blame_target, verify=self.config.blame_verify,
                                               n_resamples=self.n_resamples))
            except (QxaiError, RuntimeError, ValueError) as exc:  # a library failing on one restoration
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.blames.append(skipped(r.key, f"blame stopped: {line}", self.config.blame_target, r.nodeid))

    def blame_lines(self) -> list[str]:
        """The blame section of the terminal summary (empty without ``--qxai-blame``)."""
        if self.config.blame is None:
            return []
        from .report.blame import blame_lines

        return blame_lines([b.to_dict() for b in self.blames])

    def _blame_unmatched(self) -> None:
        """A skipped blame for each ``--qxai-blame`` name that matched no check of this run."""
        from .blame.run import skipped

        ran = {r.key for r in self.results}
        for key in self.config.blame or ():
            if key not in ran and all(b.check != key for b in self.blames):
                self.blames.append(skipped(key, f"--qxai-blame {key} names no check that ran",
                                           self.config.blame_target))

    def _vs_baseline(self, current: CheckResult, tolerance: Tolerance,
                     fractions: Fractions | None = None) -> list[CheckResult]:
        """The baseline comparisons for a vs_reference result, under the policy in the module docstring."""
        if current.verdict == "skipped":
            return []
        baseline = self._load_baseline()
        shown = display_path(self.store.path)
        template = CheckResult(current.suite, current.metric, "vs_baseline", "fail", "", tolerance=current.tolerance,
                               direction=current.direction, scale=current.scale, unit=current.unit)
        if isinstance(baseline, BaselineError):
            template.reason = str(baseline)
            return [template]
        if baseline is None or current.key not in baseline.checks:
            mode = self.config.update_baselines
            if mode is not None:
                template.verdict = "skipped"
                template.reason = f"no baseline for {current.key} yet: recording it in {shown}"
            elif self.config.ci:
                template.reason = (f"no baseline for {current.key} in {shown}; record one with "
                                   "--qxai-update-baselines outside CI")
            else:
                template.reason = (f"no baseline for {current.key} in {shown}: recorded one now; review it, "
                                   "commit it and run again")
            return [template]
        stored_meta = baseline.metadata_for(current.key)
        results = check_vs_baseline(current, baseline.checks[current.key], tolerance, baseline_file=shown,
                                    current_metadata=self.run_metadata(stable=True), stored_metadata=stored_meta,
                                    seed=self.config.seed, n_resamples=self.n_resamples, family=self.family,
                                    fractions=fractions)
        other_quant = stored_meta.get("quant")
        other_profile = stored_meta.get("profile")
        for r in results:
            said = []
            if other_quant and other_quant != self.quant_label:
                r.notes["baseline_quant"] = other_quant
                said.append(f" (baseline recorded with {other_quant}, this run {self.quant_label})")
            if other_profile and other_profile != self.config.profile:
                r.notes["baseline_profile"] = other_profile
                said.append(f" (baseline recorded at profile {other_profile}, this run at {self.config.profile}: "
                            "items are matched by id)")
            r.reason += "".join(said)
            if r.comparison:  # the reason is rebuilt from the comparison when the multiplicity adjustment decides
                r.comparison += "".join(said)
            if self.config.update_baselines == "all":
                r.notes["accepted"] = True
                accept(r)
        return results

    def _load_baseline(self) -> Baseline | BaselineError | None:
        """The stored baseline, read once per process and file; a load error becomes every check's reason."""
        store = self.store
        if store.path not in self._baselines:
            try:
                self._baselines[store.path] = store.load()
            except BaselineError as exc:
                self._baselines[store.path] = exc
        return self._baselines[store.path]

    def fails_test(self, result: CheckResult) -> bool:
        """Whether a check fails its pytest test: a ``fail``, or an ``inconclusive`` one under ``--qxai-strict``."""
        return result.failed or (self.config.strict and result.verdict == "inconclusive")

    def gate_failed(self, nodeid: str) -> bool:
        """Whether a check of the test ``nodeid`` failed it (then its failure is the gate's verdict, not an error)."""
        return any(r.nodeid == nodeid and self.fails_test(r) for r in self.results)

    def observe(self, report: pytest.TestReport) -> None:
        """Note a gate test's report (on the controller): a suite that errored, which worker ran which suite."""
        suite: str | None = getattr(report, "qxai_suite", None)
        worker: str | None = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)
        if suite is None:
            if report.failed and report.when not in ("setup", "call", "teardown"):
                # xdist's report of a crashed worker's test; it may come before any gate test reported, so
                # whether it is the gate's error is decided in finish().
                self._crashed.append((suite_of(report.nodeid.split("::", 1)[0]),
                                      f"{report.nodeid}: {_first_line(report)}"))
            return
        self.used = True
        if worker is not None:
            self._worker_suites.setdefault(worker, set()).add(suite)
        if report.failed and not (report.when == "call" and getattr(report, "qxai_gate_failed", False)):
            what = "failed outside the gate's checks" if report.when == "call" else f"errored in {report.when}"
            self._suite_error(suite, f"{report.nodeid} {what}: {_first_line(report)}")

    def _suite_error(self, suite: str, cause: str) -> None:
        """Record the first cause of a suite's not running to the end (one error per suite)."""
        if suite not in self._errored_suites:
            self._errored_suites.add(suite)
            self.errors.append(f"suite {suite} did not run to the end: {cause}")

    def worker_lost(self, worker: str, error: object) -> None:
        """An xdist worker died: the checks of the suites it ran never reach the controller."""
        suites = sorted(self._worker_suites.get(worker, ()))
        if suites:
            self.errors.append(f"xdist worker {worker} crashed ({error}); the checks of {', '.join(suites)} "
                               "that ran there are lost")

    @property
    def active(self) -> bool:
        """Whether this session is a gate run (then it reports a verdict and may change the exit status)."""
        config = self.config
        return bool(self.requested or self.used or self.results or self.errors or config.report_json
                    or config.report_md or config.report_html)

    def summary(self) -> dict[str, Any]:
        """The run's verdict and counts (:func:`~pytest_qxai.gate.check.summarize`)."""
        return summarize(self.results, self.errors, self.config.multiple_testing)

    def to_workeroutput(self) -> dict[str, Any]:
        """This worker's results and metadata for the xdist controller (JSON types only)."""
        return {"results": [r.to_dict() for r in self.results], "metadata": jsonable(self.metadata),
                "errors": list(self.errors), "refusal": self.refusal, "worker": os.environ.get("PYTEST_XDIST_WORKER"),
                "blames": [b.to_dict() for b in self.blames]}

    def merge_workeroutput(self, data: Mapping[str, Any]) -> None:
        """Add a worker's :meth:`to_workeroutput` on the controller; metadata the controller lacks is taken.

        What differs from worker to worker (its device, threads, load time) is also kept per worker under
        ``metadata["workers"]``, so a report of ``-n 2`` on two GPUs names both.
        """
        self.results.extend(CheckResult.from_dict(r) for r in data.get("results", []))
        if data.get("blames"):
            from .blame.run import Blame

            self.blames.extend(Blame.from_dict(b) for b in data["blames"])
        metadata = data.get("metadata", {})
        for key, value in metadata.items():
            self.metadata.setdefault(key, value)
        for kind, entries in metadata.get("cache", {}).items():  # what each worker reused or computed
            merged = self.metadata["cache"].setdefault(kind, [])
            merged += [e for e in entries if e not in merged]
        own = {key: metadata[key] for key in PER_WORKER_METADATA if key in metadata}
        if data.get("worker") and own:
            self.metadata.setdefault("workers", {})[data["worker"]] = own
        self.errors.extend(e for e in data.get("errors", []) if e not in self.errors)
        self.refusal = self.refusal or data.get("refusal", "")

    def finish(self, complete: bool = True) -> None:
        """Write baselines (as the policy says) and the requested reports; call on the controller only.

        ``complete`` is False when the run was interrupted or stopped early (``-x``, Ctrl-C); such a run, or one
        in which a suite did not run to the end, never prunes the checks that did not run from the baseline.
        """
        if self.active:
            for suite, cause in self._crashed:
                self._suite_error(suite, cause)
        if not complete and self.results and not any(r.failed for r in self.results):
            self.errors.append(STOPPED_EARLY)
        adjustment = adjust(self.results, self.config.multiple_testing)
        for r in self.results:
            accept(r)
        adjustment.added = [r for r in adjustment.added if r.failed]
        self.messages += adjustment.lines(self.planned)
        self._write_baselines(complete)
        if complete and not self.errors:
            try:
                self._bound_cache()
            except QxaiUsageError as exc:  # a bad $QXAI_CACHE_MAX_SIZE in a run that named no model
                self.errors.append(f"qxai cache not bounded: {exc}")
        report = build_report(self.results, model=self.model_id, quant=self.quant_label,
                              baseline_name=self.config.baseline_name, metadata=self.run_metadata(),
                              notes=self.notes(), errors=self.errors,
                              multiple_testing=self.config.multiple_testing)
        if self.config.blame is not None:
            self._blame_unmatched()
            report["blame"] = [b.to_dict() for b in self.blames]
        if self.amend_report is not None:
            self.amend_report(report)
        try:
            written = write_reports(report, json_path=self.config.report_json, md_path=self.config.report_md,
                                    html_path=self.config.report_html)
        except OSError as exc:
            self.errors.append(f"qxai report not written: {exc.strerror or exc} ({exc.filename})")
        else:
            self.messages += [f"qxai report: {display_path(p)}" for p in written]

    def _bound_cache(self) -> None:
        """Keep the cache under its size bound (least recently used first; nothing this run used)."""
        if self.config.cache_dir is None or "cache" not in self.metadata or not self.config.cache_dir.is_dir():
            return  # only runs that used the cache (a model pair) look after it
        from .cache_admin import human, max_size, prune

        removed = prune(self.config.cache_dir, max_bytes=max_size(), keep_since=self.started)
        if removed:
            self.messages.append(f"qxai cache: removed {len(removed)} least recently used entries "
                                 f"({human(sum(e.size for e in removed))}) to stay under {human(max_size())}")

    def _write_baselines(self, complete: bool) -> None:
        """Record baselines as the policy in the module docstring says; problems become summary errors.

        Pruning needs a run that ran everything: not stopped early, no suite errored, no worker lost, no error.
        """
        mode = self.config.update_baselines
        if mode is None and self.config.ci:
            return  # never write implicitly in CI
        ran = [r for r in self.results if r.kind == "vs_reference"]
        recordable = [r for r in ran if r.verdict != "skipped"]
        asked = bool(mode) and self.config.prune_baselines
        why_not = ("the run stopped early" if not complete else
                   f"the run had errors ({self.errors[0]})" if self.errors else "")
        prune = asked and not why_not
        if asked and why_not:
            self.messages.append(f"qxai: {why_not}, so nothing was pruned from the baseline")
        if not recordable and not prune:
            return
        twice = sorted(k for k, n in Counter(r.key for r in recordable).items() if n > 1)
        if twice:
            self.messages.append(f"qxai: checked more than once, the baseline keeps one of them: {', '.join(twice)}")
        try:
            # Without the flag (locally), record what is missing: "fail and create".
            summary = self.store.update(recordable, self.run_metadata(stable=True),
                                        mode="all" if mode == "all" else "missing",
                                        keep={r.key for r in ran} if prune else None)
        except (BaselineError, OSError) as exc:
            detail = f"{exc.strerror or exc} ({display_path(self.store.path)})" if isinstance(exc, OSError) else exc
            self.errors.append(f"qxai baseline not written: {detail}")
            return
        if summary.written:
            changes = ", ".join(f"{len(keys)} {what}" for what, keys in
                                (("added", summary.added), ("refreshed", summary.refreshed),
                                 ("pruned", summary.pruned)) if keys)
            self.messages.append(f"qxai baseline {display_path(summary.path)}: {changes or 'metadata updated'}")

    def notes(self) -> list[str]:
        """Remarks for the summary and reports: unused tolerance overrides, ignored flags, items each suite used
        under ``--qxai-budget``."""
        notes = []
        unused = self.overrides.unused({r.key for r in self.results})
        if unused and self.results:
            notes.append(f"--qxai-tolerance for {', '.join(unused)} matched no check that ran")
        if self.config.prune_baselines and not self.config.update_baselines:
            notes.append("--qxai-prune-baselines does nothing without --qxai-update-baselines")
        used: dict[str, list[dict[str, Any]]] = {}
        for r in self.results:
            if "items" in r.notes.get("sequential", {}):
                used.setdefault(r.suite, []).append(r.notes["sequential"])
        for suite, looks in used.items():  # the suite ran until its last check stopped
            why = next((s for s in ("time spent", "budget spent") if any(look["stopped"] == s for look in looks)),
                       "every check decided")
            notes.append(f"--qxai-budget: {suite} used {max(look['items'] for look in looks)} of "
                         f"{looks[0]['budget']} items ({why})")
        return notes

    def terminal_lines(self) -> list[str]:
        """The summary section: the check table (failures first), reasons, files written, what did not run, the
        overall verdict."""
        if not self.active:
            return []
        summary = self.summary()
        lines = [f"model {self.model_id}, quant {self.quant_label}, baseline "
                 f"{display_path(self.store.path)}"]
        lines += table_lines(self.results) + self.notes() + self.messages + self.blame_lines() + verdict_lines(summary)
        if summary["verdict"] == "inconclusive":
            lines[-1] += ("; --qxai-strict: exit 1" if self.config.strict else
                          "; exit 0 (--qxai-strict would make it 1)")
        return lines

    def exit_failed(self) -> bool:
        """Whether the gate failed the run: verdict fail or error, or inconclusive under ``--qxai-strict``."""
        verdict = self.summary()["verdict"]
        return self.active and (verdict in ("fail", "error") or (verdict == "inconclusive" and self.config.strict))

    def fixture(self, node: pytest.Item) -> CheckFixture:
        """The ``qxai_check`` object for one test."""
        return CheckFixture(self, node)


class CheckFixture:
    """``qxai_check``: gate a metric inside a test; the test fails (one readable message) on a regression.

    Example::

        ACC = register_metric(Metric("mysuite", "accuracy", "share correct", "binary", tolerance="abs:0.03"))

        def test_accuracy(qxai_check):
            qxai_check(ACC, reference=[1, 1, 0, 1], quantized=[1, 0, 0, 1], item_ids=["a", "b", "c", "d"])
    """

    def __init__(self, session: QxaiSession, node: pytest.Item) -> None:
        self.session = session
        self.node = node

    def __call__(
        self, metric: Metric | str, reference: Values, quantized: Values,
        item_ids: Sequence[str] | None = None, fingerprint: Mapping[str, str] | None = None,
        profiles: Profiles | None = None, notes: Mapping[str, Any] | None = None,
    ) -> list[CheckResult]:
        """Run :meth:`QxaiSession.check`, attach the numbers as JUnit properties, fail or skip as :meth:`_conclude`."""
        try:
            results = self.session.check(metric, reference, quantized, item_ids=item_ids, fingerprint=fingerprint,
                                         profiles=profiles, notes=notes, nodeid=self.node.nodeid)
        except QxaiError as exc:
            pytest.fail(f"qxai: {exc}", pytrace=False)
        self._conclude(results)
        return results

    def suite(self, result: SuiteResult, metrics: Sequence[Metric]) -> list[CheckResult]:
        """Gate several metrics of one suite result; the test fails after all of them ran if any failed."""
        results: list[CheckResult] = []
        try:
            for metric in metrics:
                results += self.session.check_suite(result, metric, nodeid=self.node.nodeid)
        except QxaiError as exc:
            pytest.fail(f"qxai: {exc}", pytrace=False)
        self._conclude(results)
        return results

    def skip(self, metric: Metric | str, reason: str) -> NoReturn:
        """Record the metric as skipped with ``reason`` and skip the test."""
        try:
            self.session.skip(metric, reason, nodeid=self.node.nodeid)
        except QxaiError as exc:
            pytest.fail(f"qxai: {exc}", pytrace=False)
        skip_test(reason)

    def _conclude(self, results: list[CheckResult]) -> None:
        """The test's outcome from its checks: FAILED on a fail (or, under ``--qxai-strict``, an inconclusive one),
        SKIPPED with the reasons when no check against the reference was decided, else PASSED."""
        self.session.blame(results)
        for r in results:
            prefix = f"qxai.{r.key}.{r.kind}"
            self.node.user_properties += [
                (f"{prefix}.verdict", r.verdict), (f"{prefix}.reference", r.reference),
                (f"{prefix}.quantized", r.quantized), (f"{prefix}.baseline", r.baseline),
                (f"{prefix}.delta", r.delta), (f"{prefix}.ci", list(r.ci) if r.ci else None),
                (f"{prefix}.p_value", r.p_value), (f"{prefix}.p_adjusted", r.p_adjusted), (f"{prefix}.n", r.n),
                (f"{prefix}.tolerance", r.tolerance), (f"{prefix}.mdd", r.mdd), (f"{prefix}.n_needed", r.n_needed),
            ]
        failed = [r for r in results if self.session.fails_test(r)]
        if failed:
            pytest.fail("\n".join(failure_message(r, self.session.config.strict) for r in failed), pytrace=False)
        against_reference = [r for r in results if r.kind == "vs_reference"]
        if against_reference and all(r.verdict == "skipped" for r in against_reference):
            skip_test("; ".join(dict.fromkeys(r.reason for r in against_reference)))


def skip_test(reason: str) -> NoReturn:
    """Skip the running test, reported at the test's own location (as a skip marker is), not at this line."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


def failure_message(result: CheckResult, strict: bool = False) -> str:
    """One line with everything needed to judge a failed check (or an inconclusive one under ``--qxai-strict``)."""
    label = verdict_label(result.verdict) + (" (--qxai-strict fails it)" if result.verdict == "inconclusive" and strict
                                             else "")
    needed = f", {result.n_needed} items would decide it" if result.n_needed is not None else ""
    return (f"qxai {result.key} {KIND_LABELS[result.kind]} {label}: reference {number(result.reference)}, "
            f"quantized {number(result.quantized)}, baseline {number(result.baseline)}, delta {delta_cell(result)}, "
            f"p={p_cell(result.p_value)}, p adjusted={p_cell(result.p_adjusted)}, n={result.n}, "
            f"band {result.tolerance}, mdd {number(result.mdd)}{needed}: {result.reason}")


def resolve_metric(metric: Metric | str) -> Metric:
    """A metric object, looked up in the registry when given by key or name."""
    if isinstance(metric, Metric):
        return metric
    try:
        return get_metric(metric)
    except KeyError as exc:
        raise QxaiUsageError(f"{exc.args[0]}; register it with pytest_qxai.metrics.register_metric(Metric(...))"
                             ) from None


def suite_metrics(result: SuiteResult) -> list[Metric]:
    """The registered metrics a suite result has per-item values for (those it skipped are decided already)."""
    known = {m.key: m for m in registered_metrics()}
    keys = [f"{result.suite}.{name}" for name in result.reference if name not in result.skipped]
    return [known[key] for key in keys if key in known]


def suite_of(path: str | Path) -> str:
    """The suite a test module holds, named after the module (``suites/test_nle.py`` -> ``nle``)."""
    return Path(path).stem.removeprefix("test_")


def _first_line(report: pytest.TestReport) -> str:
    """The first line of a failed report's error (the exception, not the traceback)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(crash.message if crash is not None else report.longrepr).strip()
    return text.splitlines()[0] if text else "no message"


def display_path(path: Path) -> str:
    """A path relative to the working directory when it lies below it, for short messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(path)
