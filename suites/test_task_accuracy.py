"""Task accuracy on e-SNLI and ECQA and FP–quantized label agreement, the prerequisite of every explanation metric."""

from pytest_qxai.methods import task
from pytest_qxai.testing import suite_test

test_task_accuracy = suite_test(task.TASK_ACCURACY_SUITE)
