"""The model runtime that methods rely on, as a :class:`typing.Protocol` (no torch import).

A method (a suite's measuring code) reaches each model of the pair only through ``pair.reference.runtime`` and
``pair.quantized.runtime``: batched, cached-friendly calls that return NumPy arrays. :class:`pytest_qxai.runtime.
Runtime` implements it; a test double or another engine can too. docs/extending.md shows a suite that uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@runtime_checkable
class Runtime(Protocol):
    """Batched calls on one model (the reference or the quantized one); arrays come back on the CPU."""

    model: "PreTrainedModel"
    """The model itself, for methods that hook its modules (probes); prefer the calls below."""
    tokenizer: "PreTrainedTokenizerBase"
    device: "torch.device"
    """Where the model runs (it may wait elsewhere between turns when the pair's models take turns on a GPU)."""
    batch_size: int
    label: str
    """``reference``, ``quantized`` or ``judge``: shown on progress bars."""
    observers: list[Callable[[str, dict[str, Any]], None]]
    """Called with each model call's kind (``forward``, ``gradient``, ``generate``) and inputs before it runs."""

    def encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text."""

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """:meth:`encode`'s ids of each text with each token's character span in the text (attribution's words)."""

    def pad(self, seqs: Sequence[Sequence[int]], multiple: int = 1) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Token id lists left-padded into ``input_ids`` and ``attention_mask`` on the model's device."""

    def forward(self, **kwargs: Any) -> Any:
        """One forward pass of the model (its keyword inputs), seen by the observers first."""

    def make_resident(self) -> None:
        """Put the model on its device before a method uses its modules directly."""

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """Summed log-probability of each continuation after its prompt, ``[n]``."""

    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[np.ndarray]:
        """Per-token log-probabilities of each continuation after its prompt."""

    def option_logprobs(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Summed log-probability of each answer option after its prompt, one array of options per prompt."""

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        """Log-softmax of the next token after each prompt, ``[n, vocab]``."""

    def token_nll(self, texts: Sequence[str], prefixes: Sequence[str] | None = None) -> list[np.ndarray]:
        """Negative log-likelihood of each token of each text (after its prefix, when given)."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n") -> list[str]:
        """Greedy continuations, cut at ``stop``."""

    def generate_scored(self, prompts: Sequence[str], max_new_tokens: int,
                        stop: str | None = "\n") -> tuple[list[str], np.ndarray]:
        """Greedy continuations plus the first step's log-softmax ``[n, vocab]``."""

    def hidden_states(self, prompts: Sequence[str], positions: Sequence[int] | None = None) -> np.ndarray:
        """Residual stream after every decoder layer at one token per prompt, ``[n, layers + 1, d]``."""

    def activations(self, prompts: Sequence[str], taps: dict[str, tuple["torch.nn.Module", str]],
                    positions: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Inputs or outputs of chosen modules at one token per prompt, ``{name: [n, width]}``."""

    def output_gradients(self, prompts: Sequence[str], modules: Sequence["torch.nn.Module"],
                         positions: Sequence[int],
                         objective: Callable[["torch.Tensor", list[int]], "torch.Tensor"],
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Each module's output at one token per prompt and the gradient of a next-token objective there."""

    def prefixed_tail_logprobs(self, prefix: Sequence[int], seqs: Sequence[Sequence[int]],
                               tails: Sequence[int]) -> list[np.ndarray]:
        """Log-probabilities of the last ``tails[i]`` tokens of each sequence after a shared token prefix."""

    def grouped_logprobs(self, prefix: Sequence[int], stems: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[Sequence[int]]]) -> list[list[np.ndarray]]:
        """Per-token log-probabilities of each stem's continuations after a shared prefix (each stem run once)."""
