"""A suite of your own: does the quantized model keep the reference's next token, and its confidence in it?"""

import numpy as np

from pytest_qxai import Metric, ModelPair, Suite, SuiteResult, register_suite
from pytest_qxai.testing import suite_test

PROMPTS = ["The capital of France is", "A cat sat on the", "Two plus two equals", "The doctor asked the",
           "Water boils at one", "Berlin is the capital of", "The quick brown fox", "If it rains, the ground",
           "Rome is the capital of", "The weather today is", "Three times three equals", "The mat was"]

SAME_TOKEN = Metric("stability", "same_next_token", "the quantized model predicts the reference's next token",
                    "binary", bounds=(0.0, 1.0), tolerance="abs:0.2")
CONFIDENCE = Metric("stability", "confidence", "log-probability of the reference's next token", "continuous",
                    unit="nats", tolerance="abs:0.5")


def run_stability(pair: ModelPair) -> SuiteResult:
    """Both models' next-token distributions on the first prompts (as many as the profile says)."""
    prompts = PROMPTS[:STABILITY.items(pair.config)]
    reference = pair.reference.runtime.next_token_logprobs(prompts)
    quantized = pair.quantized.runtime.next_token_logprobs(prompts)
    rows, top = np.arange(len(prompts)), reference.argmax(axis=1)
    return SuiteResult(
        "stability", [f"prompt-{i}" for i in rows],
        reference={"same_next_token": np.ones(len(prompts)), "confidence": reference[rows, top]},
        quantized={"same_next_token": (quantized.argmax(axis=1) == top).astype(float),
                   "confidence": quantized[rows, top]},
        fingerprint={"prompts": "stability-v1"},  # change it when the prompts change: stored baselines go stale
    )


def large_vocabulary(pair: ModelPair) -> str | None:
    """Next-token agreement means little on a vocabulary of a few dozen tokens."""
    return None if len(pair.tokenizer) >= 100 else f"a vocabulary of {len(pair.tokenizer)} tokens"


STABILITY = register_suite(Suite(
    "stability", "next-token stability on fixed prompts", (SAME_TOKEN, CONFIDENCE), run_stability,
    sizes={"smoke": 4, "standard": 8, "full": 12}, item_cost=0.01, preconditions=(large_vocabulary,),
))

test_stability = suite_test(STABILITY)
