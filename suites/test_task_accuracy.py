"""Task accuracy on e-SNLI and ECQA and FP–quantized label agreement, the prerequisite of every explanation metric."""

import pytest

from pytest_qxai.methods import task


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(task.run_task_accuracy)


@pytest.mark.parametrize("metric", task.TASK_METRICS, ids=str)
def test_task_accuracy(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
