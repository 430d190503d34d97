"""Is the reference a working English language model? Checked once, after loading (and GGUF conversion).

A broken reference (a converted tokenizer that splits words into characters, scrambled or missing weights)
makes both sides produce the same nothing, and every paired check then passes. So before any suite runs, the
reference must, on a few bundled English sentences (:data:`SANITY_TEXT`, written for this project):

* have an end-of-sequence and a padding token, and special-token ids inside its embedding;
* round-trip the text through its tokenizer (decode(encode(text)) == text, whitespace normalised);
* use at most :data:`MAX_TOKENS_PER_WORD` tokens per word;
* reach a perplexity of at most ``sqrt(V)`` on the text, V the model's vocabulary (embedding rows);
* continue "The capital of France is" greedily with some text.

docs/models.md says how each bound was chosen and what was measured. A failure is a
:class:`SanityError` (a usage error, one line); ``--qxai-skip-sanity`` runs the suites anyway.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import QxaiUsageError

if TYPE_CHECKING:
    from ..protocols import Runtime

VERSION = "sanity-v1"
SANITY_TEXT = (
    "The sun rises in the east and sets in the west. "
    "Water freezes when it gets cold enough, and it boils when it gets very hot. "
    "Many people drink a cup of coffee or tea in the morning before they go to work. "
    "Children learn to read and write at school, and they play with their friends after class. "
    "Paris is the capital of France, and Berlin is the capital of Germany."
)
"""Plain English sentences written for this check (no licence attached)."""
PROMPT = "The capital of France is"
NEW_TOKENS = 8
MAX_TOKENS_PER_WORD = 3.0
"""Subword tokenizers of current models use 1.2-1.4 tokens per word on :data:`SANITY_TEXT`, a character-level
split 5.5 (docs/models.md): 3.0 lies between them with a margin of more than twice on either side."""
CHARACTER_SHARE = 0.8
"""A split with at least this many tokens per non-space character is called a split into single characters."""


class SanityError(QxaiUsageError):
    """The reference model failed a sanity check: not usable as the full-precision reference."""


def check_reference(runtime: "Runtime", converted: bool = False) -> dict[str, Any]:
    """The sanity figures of a loaded reference; :class:`SanityError` naming the first check that fails."""
    figures: dict[str, Any] = {"version": VERSION}
    tokenizer = "the converted tokenizer" if converted else "the tokenizer"
    rows = int(runtime.model.get_input_embeddings().weight.shape[0])
    figures["vocabulary"] = rows
    _special_tokens(runtime, rows, tokenizer, figures)
    ids = runtime.encode([SANITY_TEXT], add_special_tokens=False)[0]
    decoded = runtime.tokenizer.decode(ids, skip_special_tokens=True)
    if " ".join(decoded.split()) != " ".join(SANITY_TEXT.split()):
        at = next((i for i, (a, b) in enumerate(zip(" ".join(decoded.split()), SANITY_TEXT)) if a != b),
                  min(len(decoded), len(SANITY_TEXT)))
        raise SanityError(f"{tokenizer} does not round-trip English text: {SANITY_TEXT[max(0, at - 10):at + 20]!r} "
                          f"came back as {decoded[max(0, at - 10):at + 20]!r}")
    words, characters = len(SANITY_TEXT.split()), len("".join(SANITY_TEXT.split()))
    figures |= {"tokens": len(ids), "words": words, "tokens_per_word": round(len(ids) / words, 3)}
    if len(ids) / words > MAX_TOKENS_PER_WORD:
        how = "single characters" if len(ids) >= CHARACTER_SHARE * characters else "too many pieces"
        raise SanityError(f"{tokenizer} splits English into {how}: {len(ids)} tokens for {words} words "
                          f"(at most {MAX_TOKENS_PER_WORD:g} per word expected)")
    nll = float(runtime.token_nll([SANITY_TEXT])[0].mean())
    bound = math.sqrt(rows)
    figures |= {"perplexity": round(math.exp(nll), 2), "perplexity_bound": round(bound, 2)}
    if nll > math.log(bound):
        raise SanityError(f"the model does not predict English: perplexity {math.exp(nll):,.0f} on the bundled "
                          f"sentences, above the bound {bound:,.0f} (the square root of its {rows:,}-token "
                          "vocabulary; a model that knows nothing is near the vocabulary size)")
    continuation = runtime.generate([PROMPT], NEW_TOKENS, stop=None)[0]
    figures["continuation"] = continuation
    if not continuation.strip():
        raise SanityError(f"the model's greedy continuation of {PROMPT!r} is empty (it stops at once or produces "
                          "only special tokens)")
    return figures


def _special_tokens(runtime: "Runtime", rows: int, tokenizer: str, figures: dict[str, Any]) -> None:
    """EOS and padding configured, every special id inside the embedding, BOS consistent with the model's config."""
    tok, config = runtime.tokenizer, runtime.model.config
    found = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    figures |= {f"{name}_token_id": value for name, value in found.items()}
    figures["adds_bos"] = bool(tok.bos_token_id is not None and runtime.encode(["a"])[0][:1] == [tok.bos_token_id])
    for name, what in (("eos", "end-of-sequence (EOS)"), ("pad", "padding")):
        if found[name] is None:
            raise SanityError(f"{tokenizer} has no {what} token")
    for name, value in found.items():
        if value is not None and not 0 <= value < rows:
            raise SanityError(f"{tokenizer}'s {name.upper()} token id {value} is outside the model's {rows}-row "
                              "embedding")
    if len(tok) > rows:
        raise SanityError(f"{tokenizer} has {len(tok):,} tokens but the model's embedding only {rows:,} rows")
    expected = getattr(config, "bos_token_id", None)
    if isinstance(expected, int) and found["bos"] is not None and found["bos"] != expected:
        raise SanityError(f"{tokenizer}'s BOS token id {found['bos']} differs from the model's ({expected})")
