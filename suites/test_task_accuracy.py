"""Task accuracy (e-SNLI, ECQA, your classification files) and FP–quantized label agreement, the prerequisite."""

import pytest

from pytest_qxai.methods import task


@pytest.fixture(scope="module")
def result(qxai_pair):
    return task.run_task_accuracy(qxai_pair)


@pytest.mark.parametrize("metric", task.TASK_METRICS, ids=str)
def test_task_accuracy(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
