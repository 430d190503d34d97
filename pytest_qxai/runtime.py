"""The one layer every suite uses for model calls: batched scoring, generation, hidden states, gradients.

Batches are length-sorted and left-padded; scoring computes the LM head only at the positions it
needs (``logits_to_keep``), never the full vocabulary at every position; a batch that runs out of
GPU memory is split in half and retried. Results come back in the caller's order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class CallStats:
    """Counters of model work, for the benchmark and the report."""

    calls: int = 0
    seconds: float = 0.0
    tokens_scored: int = 0
    tokens_generated: int = 0
    oom_backoffs: int = 0
    by_kind: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, seconds: float) -> None:
        """Account one model call of ``kind`` that took ``seconds``."""
        self.calls += 1
        self.seconds += seconds
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + seconds


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Runtime:
    """Batched model calls on one model (the reference or the quantized one)."""

    def __init__(
        self,
        model: "PreTrainedModel",
        tokenizer: "PreTrainedTokenizerBase",
        *,
        batch_size: int | None = None,
        max_length: int = 1024,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.batch_size = batch_size or (16 if self.device.type == "cpu" else 64)
        self.max_length = max_length
        self.stats = CallStats()
        self.progress: Callable[[int], None] | None = None
        """Called with the number of items finished after each batch (the suite's progress bar)."""

    # ---- batching -------------------------------------------------------------------------------

    def _batches(self, lengths: Sequence[int], size: int) -> Iterator[list[int]]:
        """Index batches of similar length (longest first, so an OOM shows up at once)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        for start in range(0, len(order), size):
            yield order[start : start + size]

    def _run_batched(self, kind: str, lengths: Sequence[int], fn: Callable[[list[int]], list[R]]) -> list[R]:
        """Apply ``fn`` to length-sorted index batches, halving the batch on out-of-memory."""
        import torch

        results: list[R | None] = [None] * len(lengths)
        pending = list(self._batches(lengths, self.batch_size))
        while pending:
            batch = pending.pop(0)
            start = time.perf_counter()
            try:
                with torch.inference_mode():
                    out = fn(batch)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, everything else re-raised
                if not _is_oom(exc) or len(batch) == 1:
                    if _is_oom(exc):
                        raise MemoryError(
                            "out of memory even at batch size 1: lower --qxai-batch-size is not enough; "
                            "use --qxai-offload, a smaller --qxai-profile, or a larger GPU"
                        ) from None
                    raise
                torch.cuda.empty_cache()
                self.stats.oom_backoffs += 1
                self.batch_size = max(1, len(batch) // 2)
                half = len(batch) // 2
                pending[:0] = [batch[:half], batch[half:]]
                continue
            self.stats.add(kind, time.perf_counter() - start)
            for index, value in zip(batch, out):
                results[index] = value
            if self.progress is not None:
                self.progress(len(batch))
        return results  # type: ignore[return-value]

    def encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text (no padding)."""
        return [
            list(ids)
            for ids in self.tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
        ]

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Left-pad token id lists into ``input_ids`` and ``attention_mask`` on the model's device."""
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            if seq:
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _position_ids(self, mask: "torch.Tensor") -> "torch.Tensor":
        """Positions that ignore left padding, so padded and unpadded runs agree."""
        return (mask.cumsum(-1) - 1).clamp(min=0)

    # ---- scoring --------------------------------------------------------------------------------

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """Summed log-probability of each continuation after its prompt (pairs, same length)."""
        per_token = self.continuation_logprobs(prompts, continuations)
        return np.array([float(v.sum()) for v in per_token])

    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[np.ndarray]:
        """Per-token log-probabilities of each continuation given its prompt."""
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations must pair up")
        prompt_ids = self.encode(prompts)
        cont_ids = self.encode(continuations, add_special_tokens=False)
        seqs = [(p + c)[-self.max_length :] for p, c in zip(prompt_ids, cont_ids)]
        cont_lens = [min(len(c), len(s) - 1) for c, s in zip(cont_ids, seqs)]
        return self._score_tails(seqs, cont_lens)

    def _score_tails(self, seqs: Sequence[Sequence[int]], tail_lens: Sequence[int]) -> list[np.ndarray]:
        """Log-probabilities of the last ``tail_lens[i]`` tokens of each sequence."""
        import torch

        def run(batch: list[int]) -> list[np.ndarray]:
            ids, mask = self._pad([seqs[i] for i in batch])
            keep = max(tail_lens[i] for i in batch) + 1
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=self._position_ids(mask), logits_to_keep=keep
            ).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predictions for the last keep-1 tokens
            targets = ids[:, -(keep - 1) :] if keep > 1 else ids[:, :0]
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            self.stats.tokens_scored += int(mask.sum())
            return [picked[row, picked.shape[1] - tail_lens[i] :].cpu().numpy() for row, i in enumerate(batch)]

        return self._run_batched("score", [len(s) for s in seqs], run)

    def option_logprobs(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """For each prompt, the summed log-probability of each of its answer options."""
        flat_prompts = [p for p, opts in zip(prompts, options) for _ in opts]
        flat_opts = [o for opts in options for o in opts]
        scores = self.score(flat_prompts, flat_opts)
        out, start = [], 0
        for opts in options:
            out.append(scores[start : start + len(opts)])
            start += len(opts)
        return out

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        """Log-softmax over the vocabulary at the last position of each prompt, ``[n, vocab]``."""
        import torch

        seqs = [s[-self.max_length :] for s in self.encode(prompts)]

        def run(batch: list[int]) -> list[np.ndarray]:
            ids, mask = self._pad([seqs[i] for i in batch])
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=self._position_ids(mask), logits_to_keep=1
            ).logits[:, -1].float()
            self.stats.tokens_scored += int(mask.sum())
            return list(torch.log_softmax(logits, dim=-1).cpu().numpy())

        return np.stack(self._run_batched("score", [len(s) for s in seqs], run))

    def token_nll(self, texts: Sequence[str], prefixes: Sequence[str] | None = None) -> list[np.ndarray]:
        """Negative log-likelihood of each token of ``texts`` (after an optional prefix), for perplexity."""
        if prefixes is None:
            bos = self.tokenizer.bos_token or self.tokenizer.eos_token or ""
            prefixes = [bos] * len(texts)
        return [-v for v in self.continuation_logprobs(prefixes, texts)]

    # ---- generation -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n") -> list[str]:
        """Greedy continuations (KV cache, left padding), cut at the first ``stop`` string."""
        seqs = [s[-self.max_length :] for s in self.encode(prompts)]
        eos = self.tokenizer.eos_token_id

        def run(batch: list[int]) -> list[str]:
            ids, mask = self._pad([seqs[i] for i in batch])
            kwargs = {"stop_strings": [stop], "tokenizer": self.tokenizer} if stop else {}
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=eos,
                **kwargs,
            )
            new = out[:, ids.shape[1] :]
            self.stats.tokens_scored += int(mask.sum())
            self.stats.tokens_generated += int((new != self.tokenizer.pad_token_id).sum())
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            return [t.split(stop)[0].strip() if stop else t.strip() for t in texts]

        return self._run_batched("generate", [len(s) for s in seqs], run)

    # ---- internals ------------------------------------------------------------------------------

    def hidden_states(self, prompts: Sequence[str], positions: Sequence[int] | None = None) -> np.ndarray:
        """Residual stream after every decoder layer at one token per prompt, ``[n, layers + 1, d]``.

        ``positions[i]`` indexes prompt i's own tokens (negative counts from the end); default -1.
        Index 0 is the embedding output and index l the output of decoder layer l, all *before* the
        final norm (transformers hands back the last one normed; it is restored here so a logit lens
        applies FinalNorm uniformly at every layer).
        """
        import torch

        seqs = [s[-self.max_length :] for s in self.encode(prompts)]
        where = list(positions) if positions is not None else [-1] * len(seqs)
        norm = final_norm(self.model)
        captured: list[torch.Tensor] = []
        hook = norm.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))

        def run(batch: list[int]) -> list[np.ndarray]:
            captured.clear()
            ids, mask = self._pad([seqs[i] for i in batch])
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=self._position_ids(mask),
                output_hidden_states=True,
                logits_to_keep=1,
            )
            layers = list(out.hidden_states)
            layers[-1] = captured[-1]
            stacked = torch.stack(layers, dim=1).float()  # [b, layers+1, t, d]
            width = ids.shape[1]
            rows = []
            for row, i in enumerate(batch):
                pos = where[i] if where[i] < 0 else where[i] - len(seqs[i])  # to an end-relative index
                rows.append(stacked[row, :, width + pos].cpu().numpy())
            self.stats.tokens_scored += int(mask.sum())
            return rows

        try:
            return np.stack(self._run_batched("hidden", [len(s) for s in seqs], run))
        finally:
            hook.remove()


def final_norm(model: "PreTrainedModel") -> "torch.nn.Module":
    """The norm applied after the last decoder layer (``norm`` in Llama-style models, ``ln_f`` in GPT-2)."""
    from .errors import ArchitectureError

    base = model.base_model
    for name in ("norm", "ln_f", "final_layernorm"):
        module = getattr(base, name, None)
        if module is not None:
            return module  # type: ignore[no-any-return]
    raise ArchitectureError(
        f"cannot find the final norm of model_type={getattr(model.config, 'model_type', '?')}"
    )


def probe_backward(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> tuple[bool, str]:
    """Try one backward pass to the input embeddings; return whether it worked and why not."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"].to(device)
    embed = model.get_input_embeddings()
    try:
        with torch.enable_grad():
            inputs = embed(ids).detach().clone().requires_grad_(True)
            logits = model(inputs_embeds=inputs, logits_to_keep=1).logits[0, -1].float()
            torch.log_softmax(logits, -1).max().backward()
        grad = inputs.grad
    except Exception as exc:  # noqa: BLE001 - any failure means "no backward through this kernel"
        return False, f"backward failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if grad is None:
        return False, "backward produced no input gradient"
    if not bool(torch.isfinite(grad).all()):
        return False, "backward produced non-finite gradients"
    if float(grad.abs().sum()) == 0.0:
        return False, "backward produced all-zero gradients"
    return True, "ok"
