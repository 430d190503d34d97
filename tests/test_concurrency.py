"""Concurrency: xdist workers, parallel pytest processes and parallel cache users lose nothing and repeat nothing.

``tests/test_baselines.py::test_concurrent_writers_lose_nothing`` covers ``BaselineStore.update`` from a
process pool; here the same guarantee is checked through pytest itself, with the race forced open.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import scipy.stats  # noqa: F401 - imported once here: pytester drops modules first imported inside a run
from filelock import FileLock

from pytest_qxai.baselines import Baseline, BaselineStore
from pytest_qxai.storage import DiskCache, locked
from pytest_qxai.testing import run_gate

LEAN = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
N_METRICS = 20

CONFTEST = """
import pytest
from pytest_qxai.plugin import SESSION_KEY

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.stash[SESSION_KEY].n_resamples = 199
"""

GATE = """
import pytest
from pytest_qxai.metrics import Metric

METRICS = [Metric("conc", f"m{k:02d}", "", "continuous", tolerance="abs:0.05") for k in range(%(n)d)]
IDS = [f"i{i}" for i in range(30)]

def check(qxai_check, k):
    ref = [((i * 31 + k) %% 30) / 30 for i in range(30)]
    qxai_check(METRICS[k], ref, [r - 0.001 * ((i + k) %% 3) for i, r in enumerate(ref)], item_ids=IDS)

@pytest.mark.parametrize("k", range(0, %(n)d, 2))
def test_even(qxai_check, k):
    check(qxai_check, k)

@pytest.mark.parametrize("k", range(1, %(n)d, 2))
def test_odd(qxai_check, k):
    check(qxai_check, k)
""" % {"n": N_METRICS}

ALL_KEYS = {f"conc.m{k:02d}" for k in range(N_METRICS)}

# Both processes reach the baseline write together (a barrier before the lock), and each write is slow, so
# without the inter-process lock one process's read-merge-write would overwrite the other's.
RACE = """
import os, time
from pathlib import Path
from pytest_qxai import baselines

_update, _write = baselines.BaselineStore.update, baselines.atomic_write

def update(self, *args, **kwargs):
    barrier = Path(os.environ["QXAI_TEST_BARRIER"])
    (barrier / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return _update(self, *args, **kwargs)

def slow_write(path, data):
    time.sleep(0.5)
    _write(path, data)

baselines.BaselineStore.update = update
baselines.atomic_write = slow_write
"""


def only_baseline(root: Path) -> Baseline:
    """The single baseline file under ``root``, parsed (and no temporary files next to it)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert [p.relative_to(root).as_posix() for p in files] == ["default/bnb4.json"]
    return Baseline.parse(files[0], files[0].read_bytes())


def test_xdist_workers_write_one_complete_baseline(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=GATE)
    result = run_gate(pytester, *LEAN, "-n", "4", "--qxai-update-baselines")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=N_METRICS)
    result.stdout.fnmatch_lines([f"qxai baseline baselines/default/bnb4.json: {N_METRICS} added"])
    baseline = only_baseline(pytester.path / "baselines")
    assert set(baseline.checks) == ALL_KEYS
    assert all(len(record["items"]) == 30 for record in baseline.checks.values())


def test_two_pytest_processes_updating_one_baseline_lose_nothing(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makeconftest(CONFTEST + RACE)
    pytester.makepyfile(test_gate=GATE)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"QXAI_TEST_BARRIER": str(barrier)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "pytest", *LEAN, "-q", "-k", subset, "--qxai-update-baselines"],
                         cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for subset in ("even", "odd")
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert len(list(barrier.glob("ready-*"))) == 2  # both really wrote at the same time
    baseline = only_baseline(pytester.path / "baselines")
    assert set(baseline.checks) == ALL_KEYS
    assert len(baseline.doc["runs"]) == 1  # same settings in both processes: one run record


def _memo_worker(root: str, counter: str, barrier: Barrier, order: list[str], out: str) -> None:
    """Ask the cache for every key in ``order``; computing a key appends one line to ``counter``."""
    cache = DiskCache(Path(root))

    def compute(key: str) -> dict[str, str]:
        with open(counter, "a") as handle:
            handle.write(f"{key} {os.getpid()}\n")
        time.sleep(0.3)  # long enough for the other processes to ask for the same key meanwhile
        return {"key": key, "value": key * 3}

    barrier.wait(timeout=60)
    values = [repr(cache.memo("ns", {"k": key}, lambda key=key: compute(key))) for key in order]
    Path(out).write_text("\n".join(values))


def test_disk_cache_memo_computes_once_per_key_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    keys = ["a", "b", "c"]
    barrier = ctx.Barrier(4)
    counter = tmp_path / "computed.txt"
    procs = [
        ctx.Process(target=_memo_worker, args=(str(tmp_path / "cache"), str(counter), barrier,
                                               keys[i % 3:] + keys[: i % 3], str(tmp_path / f"out{i}")))
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    computed = sorted(line.split()[0] for line in counter.read_text().splitlines())
    assert computed == keys  # each key computed by exactly one process
    results = [sorted((tmp_path / f"out{i}").read_text().splitlines()) for i in range(4)]
    assert all(r == results[0] for r in results)
    assert DiskCache(tmp_path / "cache").load("ns", {"k": "b"}) == (True, {"key": "b", "value": "bbb"})


def _hold_lock(path: str, ready: str) -> None:
    """Take the baseline's lock and never let go."""
    with locked(Path(path)):
        Path(ready).touch()
        time.sleep(120)


def test_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    """SIGKILL while holding a baseline's lock: the OS drops the lock, the next writer is not blocked."""
    store = BaselineStore(tmp_path, "m", "bnb4")
    ready = tmp_path / "ready"
    proc = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(str(store.path), str(ready)))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    with FileLock(f"{store.path}.lock", timeout=5):  # raises Timeout if the killed holder's lock had survived
        pass


SUITE_MODULE = """
import os
import pytest

@pytest.fixture(scope="module")
def result(qxai_pair):
    return __name__

@pytest.mark.parametrize("k", range(3))
def test_metric(result, k):
    with open(os.environ["QXAI_TEST_LOG"], "a") as log:
        log.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {result}\\n")
"""


@pytest.fixture
def suite_modules(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four suite modules over a stand-in pair (the scheduling is under test, not the models), and a plain one.

    The controller prints its distribution mode in the header and its scheduler in the summary; each test logs
    its worker and module.
    """
    pytester.makeconftest(
        "import pytest\n\n@pytest.fixture(scope='session')\ndef qxai_pair():\n    return None\n\n"
        "def pytest_report_header(config):\n    return f'dist={config.option.dist}'\n\n"
        "def pytest_terminal_summary(terminalreporter, config):\n"
        "    dsession = config.pluginmanager.getplugin('dsession')\n"
        "    terminalreporter.write_line(f'scheduler={type(dsession.sched).__name__}' if dsession else 'scheduler=none')\n"
    )
    names = ["test_counterfactual", "test_custom", "test_knowledge", "test_nle_faithfulness"]
    pytester.makepyfile(**{name: SUITE_MODULE for name in names}, test_plain="def test_plain():\n    pass\n")
    monkeypatch.setenv("QXAI_TEST_LOG", str(tmp_path / "log.txt"))
    return tmp_path / "log.txt"


def test_xdist_hands_out_whole_suites_costliest_first(pytester: pytest.Pytester, suite_modules: Path) -> None:
    result = run_gate(pytester, *LEAN, "-n", "2", "-p", "xdist", "--qxai-device=cpu")
    # The stand-in suites gate nothing, so the run's verdict is ERROR (exit 1) although every test passed.
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*qxai gate: ERROR*"])
    result.assert_outcomes(passed=13)
    result.stdout.fnmatch_lines(["scheduler=LoadFileScheduling"])  # from -n alone, through xdist's scheduler hook
    runs = [line.split() for line in suite_modules.read_text().splitlines()]
    workers_of = {module: {w for w, m in runs if m == module} for _, module in runs}
    assert len(workers_of) == 4 and all(len(w) == 1 for w in workers_of.values()), workers_of  # one worker each
    firsts = {next(m for w, m in runs if w == worker) for worker in ("gw0", "gw1")}
    # The two costliest at the standard profile go first: nle_faithfulness and the suite of unknown cost, which
    # counts as the mean of the standard suites (more than counterfactual). Collection order would start
    # counterfactual and custom.
    assert firsts == {"test_nle_faithfulness", "test_custom"}, runs


def test_exitfirst_runs_the_cheapest_suites_first(pytester: pytest.Pytester, suite_modules: Path) -> None:
    """Under ``-x`` a run stops at its first failure, which comes soonest when the cheap suites go first (the suite
    of unknown cost counts as the mean of the standard suites); the other tests keep their place, last."""
    with pytest.MonkeyPatch.context() as patch:  # a subprocess: modules of these names imported earlier in this
        patch.delenv("CI", raising=False)         # process (other pytester runs) cannot shadow them
        pytester.runpytest_subprocess(*LEAN, "-x", "--qxai-device=cpu")
    modules = list(dict.fromkeys(line.split()[1] for line in suite_modules.read_text().splitlines()))
    assert modules == ["test_knowledge", "test_counterfactual", "test_custom", "test_nle_faithfulness"], modules


def test_xdist_runs_without_a_model_are_left_alone(pytester: pytest.Pytester, suite_modules: Path) -> None:
    result = run_gate(pytester, *LEAN, "-n", "2", "-p", "xdist")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["dist=load", "*scheduler=LoadScheduling"])
