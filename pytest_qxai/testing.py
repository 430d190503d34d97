"""A harness for plugin users: check that tests built on ``qxai_check`` go through the baseline workflow.

Use it from a test of your own with pytest's ``pytester`` fixture (enable it with
``pytest_plugins = ["pytester"]`` in your ``conftest.py``)::

    from pytest_qxai.testing import check_baseline_workflow

    def test_my_check_workflow(pytester):
        check_baseline_workflow(pytester, SOURCE, CHANGED_SOURCE)

``SOURCE`` is a test module calling ``qxai_check``; ``CHANGED_SOURCE`` the same module with values that
stay within the band against the reference but move beyond it against the baseline (a
re-quantization regression). The workflow: in CI without a baseline the run fails and writes nothing;
locally it fails and creates the baseline; the next run passes; the changed values fail against the
baseline without touching it; ``--qxai-update-baselines`` accepts them and rewrites it; the next run
passes and leaves the file byte-for-byte as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import pytest

from .errors import QxaiUsageError

if TYPE_CHECKING:
    from .metrics import Metric, SuiteResult
    from .session import CheckFixture
    from .suite import Suite


def suite_test(suite: "Suite") -> Callable[..., None]:
    """The test function of a registered suite: one test per metric, each gated by ``qxai_check``.

    Assign it in a module named after the suite, ``test_<name>.py``, which is how the plugin names a module's
    suite (progress, xdist scheduling, errors); the ``qxai_suite_result`` fixture runs the suite once per module::

        from pytest_qxai.testing import suite_test
        test_sentiment_flip = suite_test(SENTIMENT_FLIP)
    """

    @pytest.mark.parametrize("metric", suite.metrics, ids=str)
    def test(qxai_suite_result: "SuiteResult", metric: "Metric", qxai_check: "CheckFixture") -> None:
        if qxai_suite_result.suite != suite.name:
            raise QxaiUsageError(f"suite {suite.name!r} runs in a module named after another suite "
                                 f"({qxai_suite_result.suite!r}): name it test_{suite.name}.py")
        qxai_check.suite(qxai_suite_result, [metric])

    test.__name__ = test.__qualname__ = f"test_{suite.name}"
    test.__doc__ = suite.description
    return test


def run_gate(pytester: pytest.Pytester, *args: str, ci: bool = False) -> pytest.RunResult:
    """Run pytest in ``pytester`` with ``$CI`` set or unset (the gate never writes baselines implicitly in CI)."""
    with pytest.MonkeyPatch.context() as patch:
        if ci:
            patch.setenv("CI", "true")
        else:
            patch.delenv("CI", raising=False)
        return pytester.runpytest(*args)


def baseline_files(root: Path) -> dict[Path, bytes]:
    """Every baseline file under ``root`` with its bytes."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*.json"))} if root.exists() else {}


def check_baseline_workflow(
    pytester: pytest.Pytester, source: str, changed_source: str, *, args: Sequence[str] = (),
    baseline_dir: Path | None = None,
) -> dict[Path, bytes]:
    """Assert fail-in-CI → fail-and-create → pass → fail on change → regenerate → pass; return the baselines."""
    root = baseline_dir or pytester.path / "baselines"
    pytester.makepyfile(test_qxai_workflow=source)

    result = run_gate(pytester, *args, ci=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, "CI without a baseline must fail"
    result.stdout.fnmatch_lines(["*record one with --qxai-update-baselines outside CI*"])
    assert not baseline_files(root), "CI must not write a baseline it was not asked for"

    result = run_gate(pytester, *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, "a new baseline must fail once, to be reviewed"
    result.stdout.fnmatch_lines(["*recorded one now*"])
    created = baseline_files(root)
    assert created, f"no baseline was created under {root}"

    result = run_gate(pytester, *args)
    assert result.ret == pytest.ExitCode.OK, "the run that created the baseline must pass against it"
    assert baseline_files(root) == created, "a passing run must not rewrite the baseline"

    pytester.makepyfile(test_qxai_workflow=changed_source)
    result = run_gate(pytester, *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, "the changed values must fail against the baseline"
    result.stdout.fnmatch_lines(["*FAIL*vs base*"])
    assert baseline_files(root) == created, "a failing run must not touch the baseline"

    result = run_gate(pytester, *args, "--qxai-update-baselines")
    assert result.ret == pytest.ExitCode.OK, "--qxai-update-baselines must accept the change"
    updated = baseline_files(root)
    assert updated != created, "--qxai-update-baselines must rewrite the baseline"

    result = run_gate(pytester, *args)
    assert result.ret == pytest.ExitCode.OK, "the regenerated baseline must pass"
    assert baseline_files(root) == updated, "an unchanged run must leave the baseline byte-for-byte"
    return updated
