"""pytest-qxai's pytest entry point: options, the model pair, the gate's session and reports.

Hooks come in lifecycle order, fixtures at the bottom. Nothing here imports torch: the model stack is
imported when a test first asks for ``qxai_pair`` (or when an option that needs it is validated).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import pytest

from .backends.base import register_entry_point_backends
from .errors import ModelMismatchError, QxaiError, QxaiUsageError
from .config import QxaiConfig, explicitly_requested
from .options import add_options
from .session import CheckFixture, QxaiSession, suite_of

if TYPE_CHECKING:
    from .metrics import SuiteResult
    from .models.pair import ModelPair

SESSION_KEY = pytest.StashKey[QxaiSession]()
VALIDATED_KEY = pytest.StashKey[bool]()
PAIR_FIXTURES = ("qxai_pair",)
GATE_FIXTURE = "qxai_check"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Register the ``pytest_qxai_*`` hooks that conftest files and plugins implement (:mod:`.hookspecs`)."""
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``qxai`` option group and its ini twins."""
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Resolve the options; validate them now when the user asked for qxai explicitly.

    Installed backends (entry points) register first in such a run, so ``--quant`` may name their schemes; other
    runs (``--help``, tests without a model) never import them.
    """
    requested = explicitly_requested(config)
    try:
        if requested:
            register_entry_point_backends()
        qxai_config = QxaiConfig.from_pytest(config)
        session = QxaiSession(qxai_config)
    except QxaiError as exc:
        raise pytest.UsageError(str(exc)) from None
    session.amend_report = lambda report: config.hook.pytest_qxai_report(report=report, config=config)
    config.hook.pytest_qxai_metadata(metadata=session.metadata, config=config)
    config.stash[SESSION_KEY] = session
    config.stash[VALIDATED_KEY] = False
    session.requested = requested
    session.exitfirst = config.option.maxfail == 1
    if not _is_xdist_worker(config):
        config.pluginmanager.register(ReportObserver(session), "qxai-observer")
        if session.requested:
            _validate(config)
        else:
            try:  # a run without a model: its band file is that of --qxai-model's name (or "default")
                session.load_bands(session.model_id)
            except QxaiError as exc:
                raise pytest.UsageError(str(exc)) from None
    _configure_xdist(config)
    _configure_progress(config)


def _validate(config: pytest.Config) -> None:
    """Check model, spec, backend, device and the model's band file without loading anything; usage error on bad input."""
    if config.stash.get(VALIDATED_KEY, False):
        return
    from .cache_admin import max_size
    from .models.pair import validate

    session = config.stash[SESSION_KEY]
    try:
        session.load_bands(validate(session.config).slug)
        max_size()  # a bad $QXAI_CACHE_MAX_SIZE is said now, not after the run when the cache is bounded
    except QxaiError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[VALIDATED_KEY] = True


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _configure_xdist(config: pytest.Config) -> None:
    """When a run asks for a model, leave the order of whole suites to the workers (``--no-loadscope-reorder``).

    Workers sort the suites costliest first (:func:`suites_by_cost`), so xdist's reordering of modules
    by number of tests is switched off; :meth:`XdistHooks.pytest_xdist_make_scheduler` keeps each module whole.
    Runs that choose no model, spec or device (your unit tests, with this plugin installed) are left as they are.
    """
    if _is_xdist_worker(config) or not explicitly_requested(config):
        return
    if getattr(config.option, "dist", "no") in ("load", "loadfile", "loadscope", "loadgroup"):
        config.option.loadscopereorder = False


def _configure_progress(config: pytest.Config) -> None:
    """Progress bars on an interactive terminal only: not under -q, not on xdist workers, not in CI."""
    from . import progress

    capman = config.pluginmanager.getplugin("capturemanager")
    suspend = capman.global_and_fixture_disabled if capman is not None else None
    progress.configure(config.get_verbosity() >= 0 and not _is_xdist_worker(config), suspend)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A suite that stops on a known condition (an architecture the probes do not know...) shows one line; a gate
    test's report names its suite and whether the gate failed it (it travels to the xdist controller)."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(QxaiError):
        report.longrepr = f"qxai: {call.excinfo.value}"
    if GATE_FIXTURE in getattr(item, "fixturenames", ()):
        report.qxai_suite = suite_name(item)
        report.qxai_gate_failed = report.failed and item.config.stash[SESSION_KEY].gate_failed(item.nodeid)
    return report



@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Name progress bars after the suite whose fixtures are about to compute (``test_nle.py`` -> ``nle``)."""
    from . import progress

    progress.set_scope(suite_name(item))


def suite_name(item: pytest.Item) -> str:
    """The suite an item belongs to, named after its module (``test_nle.py`` -> ``nle``)."""
    return suite_of(item.path)


def shard_modules(items: list[pytest.Item], index: int, count: int) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """Items of shard ``index`` of ``count`` (1-based) and the rest: whole modules, dealt round-robin in name order.

    A module is never split, so a suite's model work runs in one shard only.
    """
    module = {id(item): item.nodeid.split("::", 1)[0] for item in items}
    mine = set(sorted(set(module.values()))[index - 1 :: count])
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (keep if module[id(item)] in mine else drop).append(item)
    return keep, drop


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep this run's shard, order suites for xdist workers, validate lazily when suites ran without options."""
    shard = config.stash[SESSION_KEY].config.shard
    if shard is not None:
        keep, drop = shard_modules(items, *shard)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    uses_pair = {id(item) for item in items
                 if any(name in getattr(item, "fixturenames", ()) for name in PAIR_FIXTURES)}
    worker = _is_xdist_worker(config)
    if uses_pair and (worker or config.option.maxfail):  # -x alone: cheapest first, so a broken model fails soonest
        qxai_config = config.stash[SESSION_KEY].config
        budget = qxai_config.budget
        items[:] = suites_by_cost(items, uses_pair, budget.profile if budget else qxai_config.profile,
                                  qxai_config.samples or (budget.items if budget else None), costliest_first=worker)
    if uses_pair and not _is_xdist_worker(config):
        _validate(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Plan the run's fail decisions (vs reference and vs baseline per gating test) for the test-time bound."""
    qxai = session.config.stash.get(SESSION_KEY, None)
    if qxai is not None:
        qxai.planned = 2 * sum("qxai_check" in getattr(item, "fixturenames", ()) for item in session.items)


def suites_by_cost(items: list[pytest.Item], uses_pair: set[int], profile: str, samples: int | None, *,
                   costliest_first: bool) -> list[pytest.Item]:
    """Items that use the model pair (``uses_pair``: their ids) by suite cost, then the other items.

    Under xdist, costliest first: the order in which whole suites go to idle workers, and starting the longest
    first keeps the last one from running alone at the end. Under ``-x``/``--maxfail`` without xdist, cheapest
    first: the run stops at its first failure, which then comes as early as the suites allow. A module whose
    suite states no cost (or that holds no registered suite) is placed as if it cost the mean of the standard
    suites. The order within a module, and among other items, is kept.
    """
    from .methods import standard_suites
    from .suite import registered_suites

    known = [suite.cost(profile, samples) or 0.0 for suite in standard_suites()]
    default = sum(known) / len(known)
    costs = {suite.name: suite.cost(profile, samples) for suite in registered_suites()}

    sign = -1.0 if costliest_first else 1.0

    def cost(item: pytest.Item) -> float:
        if id(item) not in uses_pair:
            return float("inf")
        estimate = costs.get(suite_name(item))
        return sign * (default if estimate is None else estimate)

    return sorted(items, key=cost)


# --- gate hooks (session, reports) ---


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Workers hand their checks to the controller; the controller writes baselines and reports."""
    config = session.config
    qxai = config.stash.get(SESSION_KEY, None)
    if qxai is None or config.option.collectonly:  # nothing ran: no verdict, no files
        return
    if _is_xdist_worker(config):
        config.workeroutput["qxai"] = qxai.to_workeroutput()  # type: ignore[attr-defined]
        return
    complete = exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR) and not (
        session.shouldstop or session.shouldfail
    )
    unknown = _unknown_tolerance_names(config, qxai)
    if unknown:  # before finish(), so the reports carry it too
        qxai.errors.append(f"--qxai-tolerance names no known metric: {', '.join(unknown)}")
    qxai.finish(complete)
    if qxai.refusal or unknown:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
    elif qxai.exit_failed() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _unknown_tolerance_names(config: pytest.Config, qxai: QxaiSession) -> list[str]:
    """Command-line ``--qxai-tolerance`` keys that matched no check that ran and name no metric of a suite.

    Known are the built-in suites' metrics and those registered by the collected modules; a metric passed to
    ``qxai_check`` unregistered is known once it ran. Ini entries (a project's settings for suites a run may not
    collect) only get the summary note.
    """
    given = {str(entry).partition("=")[0].strip() for entry in config.getoption("qxai_tolerance") or []}
    unused = set(qxai.overrides.unused({r.key for r in qxai.results})) & given
    if not unused:
        return []
    import importlib
    import pkgutil

    from . import methods
    from .metrics import registered_metrics

    for module in pkgutil.iter_modules(methods.__path__):  # each registers its metrics; none imports torch
        importlib.import_module(f"{methods.__name__}.{module.name}")
    return sorted(unused - {key for m in registered_metrics() for key in (m.key, m.name)})


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the check table (failures first) and the one-line verdict."""
    qxai = config.stash.get(SESSION_KEY, None)
    if qxai is None or config.option.collectonly:
        return
    lines = qxai.terminal_lines()
    if not lines:
        return
    terminalreporter.write_sep("=", "qxai explainability gate")
    for line in lines:
        terminalreporter.write_line(line)


class XdistHooks:
    """Registered only when pytest-xdist is active: schedule whole suites, merge worker checks into the session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """``-n`` alone (``--dist load``) in a run with a model: keep each test module (a suite) whole on one worker.

        ``load`` would spread a suite's tests over workers and make each one load the models and compute the
        suite. ``loadfile`` keeps modules whole (``loadgroup`` markers cannot: from pytest 9.2 xdist no longer
        sees them, pytest-dev/pytest-xdist#1386). Other ``--dist`` modes are xdist's as given.
        """
        if config.getvalue("dist") != "load" or not config.stash[SESSION_KEY].requested:
            return None
        from xdist.scheduler import LoadFileScheduling

        return LoadFileScheduling(config, log)

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Collect a finished worker's checks and metadata; a crashed one's are lost, which is an error."""
        session = self.config.stash[SESSION_KEY]
        data = getattr(node, "workeroutput", {}).get("qxai")
        if data:
            session.merge_workeroutput(data)
        if error is not None:
            session.worker_lost(node.gateway.id, error)


class ReportObserver:
    """Registered on the controller (or the only process): hands every test report to the gate's session."""

    def __init__(self, session: QxaiSession) -> None:
        self.session = session

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Gate tests that errored instead of deciding make the run's verdict ``error``."""
        self.session.observe(report)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Register the xdist merger on the controller."""
    config = session.config
    if config.pluginmanager.hasplugin("xdist") and not _is_xdist_worker(config):
        if not config.pluginmanager.has_plugin("qxai-xdist"):
            config.pluginmanager.register(XdistHooks(config), "qxai-xdist")


# --- end gate hooks ---


@pytest.fixture(scope="session")
def qxai_config(pytestconfig: pytest.Config) -> QxaiConfig:
    """The resolved pytest-qxai settings of this session.

    Example::

        def test_profile(qxai_config):
            assert qxai_config.profile in ("smoke", "standard", "full")
    """
    return pytestconfig.stash[SESSION_KEY].config


@pytest.fixture(scope="session")
def qxai_pair(pytestconfig: pytest.Config) -> "ModelPair":
    """The reference and quantized models (loaded once per process), tokenizer, spec and metadata.

    Example::

        def test_capital(qxai_pair):
            ref, quant = (side.runtime.generate(["The capital of France is"], 4) for side in qxai_pair.sides)
    """
    from .models.pair import get_pair, pair_error
    from .models.sanity import SanityError

    session = pytestconfig.stash[SESSION_KEY]
    refusal = ""
    try:
        pair = get_pair(session.config)
    except SanityError as exc:
        refusal = f"qxai: {exc}"
    except ModelMismatchError as exc:
        pytest.exit(f"qxai: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    except (QxaiError, QxaiUsageError, OSError, RuntimeError, ValueError, MemoryError) as exc:
        pytest.fail(f"qxai: {pair_error(exc)}", pytrace=False)
    if refusal:  # outside the handler: one line, no chained exception
        refuse(pytestconfig, refusal)
    session.metadata.update(pair.metadata)
    session.same_model = pair.same_model
    return pair


@pytest.fixture(scope="session")
def qxai_run_suite(pytestconfig: pytest.Config, qxai_pair: "ModelPair") -> Callable[..., Any]:
    """Run a suite function on the model pair: at the profile's item count, or under ``--qxai-budget`` in
    sequential looks until its checks are decided (docs/sequential.md). A budget named by a profile takes the
    suite's counts from its registered :class:`~pytest_qxai.suite.Suite`, given second.

    Example::

        @pytest.fixture(scope="module")
        def result(qxai_run_suite):
            return qxai_run_suite(knowledge.run_knowledge, knowledge.KNOWLEDGE_SUITE)
    """
    return functools.partial(pytestconfig.stash[SESSION_KEY].run_suite, qxai_pair)


def refuse(config: pytest.Config, message: str) -> NoReturn:
    """Stop the run with a usage error (exit 4): at once, or on an xdist worker through the controller's exit status.

    A worker cannot end the whole run itself (xdist treats that as a crash), so it fails the tests that need the
    models with ``message`` and hands the refusal to the controller.
    """
    session = config.stash[SESSION_KEY]
    session.refusal = message
    session.errors.append(message)
    if not _is_xdist_worker(config):
        pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def qxai_suite_result(request: pytest.FixtureRequest, qxai_run_suite: Callable[..., Any]) -> "SuiteResult":
    """The result of the registered suite this module is named after (``test_<suite>.py``), run once per module
    through ``qxai_run_suite`` (so ``--qxai-budget`` runs it in sequential looks).

    The tests :func:`pytest_qxai.testing.suite_test` makes use it; a module of your own may too::

        def test_my_view(qxai_suite_result):
            assert qxai_suite_result.item_ids
    """
    from .suite import get_suite

    suite = get_suite(suite_of(request.path))
    return qxai_run_suite(suite.result, suite)  # type: ignore[no-any-return]


@pytest.fixture
def qxai_check(request: pytest.FixtureRequest) -> CheckFixture:
    """Gate your own metric against the reference and the stored baseline (fails the test on a regression).

    Example::

        from pytest_qxai import Metric, register_metric
        ACC = register_metric(Metric("mysuite", "accuracy", "share correct", "binary", tolerance="abs:0.03"))

        def test_accuracy(qxai_check):
            qxai_check(ACC, reference=[1, 1, 0, 1], quantized=[1, 0, 0, 1], item_ids=["a", "b", "c", "d"])
    """
    return request.config.stash[SESSION_KEY].fixture(request.node)
