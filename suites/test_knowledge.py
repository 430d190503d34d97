"""Factual recall on LRE relations: greedy accuracy, log-probability and rank of the object."""

import pytest

from pytest_qxai.methods import knowledge


@pytest.fixture(scope="module")
def result(qxai_run_suite):
    return qxai_run_suite(knowledge.run_knowledge)


@pytest.mark.parametrize("metric", knowledge.KNOWLEDGE_METRICS, ids=str)
def test_knowledge(result, metric, qxai_check):
    qxai_check.suite(result, [metric])
