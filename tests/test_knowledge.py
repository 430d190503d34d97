"""Factual recall: answer matching, the in-context prompt, item selection, scoring, and recall on SmolLM2."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import pytest

from pytest_qxai.datasets import Fact, Relation
from pytest_qxai.methods import knowledge as K
from test_arch import smollm2_runtime, tiny_pair, tiny_runtime_at  # noqa: F401 - shared fixtures and helpers


@pytest.mark.parametrize(("completion", "names", "expected"), [
    ("Paris.", ("Paris",), True),
    ("  paris, France", ("Paris",), True),
    ("The city of Paris", ("Paris",), False),
    ("Lyon", ("Paris", "Lyon"), True),
    ("", ("Paris",), False),
    ("Washington", ("Washington D.C.",), False),
    ("Sao Paulo", ("São Paulo", "Sao Paulo"), True),
    ("anything", ("",), False),
])
def test_a_completion_is_correct_when_it_starts_with_an_accepted_name(
    completion: str, names: tuple[str, ...], expected: bool,
) -> None:
    assert K.starts_with_answer(completion, names) is expected


RELATION = Relation("country capital city", ("The capital city of {} is",), (), "factual", "country", "city",
                    (Fact("Peru", "Lima"), Fact("France", "Paris")), "country_capital_city")


def test_the_prompt_puts_one_demonstration_per_line_before_the_query() -> None:
    prompt = K.recall_prompt(RELATION, [Fact("Peru", "Lima"), Fact("Chile", "Santiago")], "France")
    assert prompt == ("The capital city of Peru is Lima\nThe capital city of Chile is Santiago\n"
                      "The capital city of France is")


def _pair(seed: int = 0) -> Any:
    return SimpleNamespace(config=SimpleNamespace(seed=seed, data={}))


def test_items_exclude_the_demonstrations_take_turns_and_are_nested() -> None:
    items = K.recall_items(_pair(), 40)
    small = K.recall_items(_pair(), 12)
    assert [it.id for it in small] == [it.id for it in items[:12]]
    assert len({it.id for it in items}) == 40
    assert {it.relation.key for it in items[: len(K.RELATIONS)]} == set(K.RELATIONS)
    for it in items:
        demos = it.prompt.split("\n")[:-1]
        assert len(demos) == K.PROMPT["shots"]
        assert not any(line.startswith(it.relation.templates[0].format(it.fact.subject)) for line in demos)
        assert it.prompt.endswith(it.relation.templates[0].format(it.fact.subject))


class FakeRuntime:
    """Canned greedy answers and first-step log-probabilities, recording how many tokens generation may take."""

    def __init__(self, completions: Sequence[str], logprobs: np.ndarray) -> None:
        self.completions = list(completions)
        self.logprobs = logprobs
        self.max_new_tokens: int | None = None

    def encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [[ord(c) for c in text.split()[0]] if text.split() else [] for text in texts]  # one token a letter

    def generate_scored(self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n") -> Any:
        self.max_new_tokens = max_new_tokens
        return self.completions[: len(prompts)], self.logprobs[: len(prompts)]


def test_greedy_correctness_generates_only_as_far_as_the_longest_answer() -> None:
    runtime = FakeRuntime(["Paris and more", "Rome", "nothing"], np.zeros((3, 5)))
    answers = [("Paris",), ("Lima", "Rome"), ("Oslo",)]
    got, first = K.greedy_answers(runtime, ["a", "b", "c"], answers)  # type: ignore[arg-type]
    assert got.tolist() == [1.0, 1.0, 0.0] and first.shape == (3, 5)
    assert runtime.max_new_tokens == len("Paris") + 1


def test_answer_log_probability_and_rank_are_read_at_the_answer_token() -> None:
    logprobs = np.log(np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))
    logprob, rank = K.token_scores(logprobs, [1, 0])
    np.testing.assert_allclose(logprob, [np.log(0.3), np.log(0.2)])
    assert rank.tolist() == [2.0, 2.0]  # ties do not push the answer down: 1 + (tokens strictly more likely)


def test_a_broken_distribution_scores_the_worst_log_probability_and_rank_not_the_best() -> None:
    logprobs = np.log(np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))
    logprobs[1] = np.nan  # a quantized model whose logits overflowed
    logprob, rank = K.token_scores(logprobs, [1, 0])
    assert logprob[1] == -np.inf and rank[1] == 3.0  # NaN is never "more likely", so it used to rank first
    np.testing.assert_allclose(logprob[0], np.log(0.3))


# --- plumbing on a tiny random model (evidence that code runs, not that a metric means anything) -----------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_runtime(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_runtime_at(tmp_path_factory.mktemp("tiny"))


def test_first_token_is_the_one_that_continues_the_prompt(tiny_runtime: Any) -> None:
    tokenizer = tiny_runtime.tokenizer
    prompts, answers = ["The capital of France is", "Berlin is the capital of"], ["Paris", "Germany"]
    for prompt, answer, token in zip(prompts, answers, K.first_token_ids(tokenizer, prompts, answers)):
        alone = tokenizer(prompt)["input_ids"]
        assert tokenizer(f"{prompt} {answer}")["input_ids"][len(alone)] == token


def test_suite_gives_identical_values_for_identical_models(tiny_runtime: Any, make_config: Any) -> None:
    """Two copies of one model give the same values up to float rounding (4.8e-7 was seen: the copy's memory
    alignment can change the CPU kernel's summation order)."""
    result = K.run_knowledge(tiny_pair(tiny_runtime, make_config(samples=4)))
    assert len(result.item_ids) == 4
    for metric in K.KNOWLEDGE_METRICS:
        reference, quantized = result.values(metric.name)
        assert reference.shape == (4,)
        np.testing.assert_allclose(reference, quantized, rtol=0, atol=1e-5)
    assert np.all(result.reference["object_log_rank"] >= 0)
    assert result.notes["prompt_version"] == K.PROMPT["version"]


# --- real model ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_recalls_well_known_capitals_far_above_chance(smollm2_runtime: Any) -> None:
    """Greedy free generation has a chance level near 0; SmolLM2-135M gets about 60 % of capitals right in context."""
    items = K.recall_items(_pair(), 60, relations=("country_capital_city",))
    prompts = [it.prompt for it in items]
    correct, first = K.greedy_answers(smollm2_runtime, prompts, [it.fact.names for it in items])
    assert len(items) == 21  # 24 countries, 3 of them demonstrations
    assert correct.mean() >= 0.5  # 12-13 of 21 on two cores; near-tie greedy steps vary with thread count
    tokens = K.first_token_ids(smollm2_runtime.tokenizer, prompts, [it.fact.object for it in items])
    _, rank = K.token_scores(first, tokens)
    assert np.median(rank) == 1.0
    np.testing.assert_allclose(first, smollm2_runtime.next_token_logprobs(prompts), atol=1e-4)
