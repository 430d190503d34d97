"""Task accuracy (e-SNLI, ECQA, your classification files) and FP–quantized label agreement, the prerequisite."""

from pytest_qxai.methods import task
from pytest_qxai.testing import suite_test

test_task_accuracy = suite_test(task.TASK_ACCURACY_SUITE)
