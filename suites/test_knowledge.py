"""Factual recall on LRE relations: greedy accuracy, log-probability and rank of the object."""

from pytest_qxai.methods import knowledge
from pytest_qxai.testing import suite_test

test_knowledge = suite_test(knowledge.KNOWLEDGE_SUITE)
