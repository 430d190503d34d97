"""The one layer every suite uses for model calls: batched scoring, generation, hidden states, gradients.

Batches are length-sorted and left-padded; scoring computes the LM head only at the positions it
needs (``logits_to_keep``), never the full vocabulary at every position; a batch that runs out of
GPU memory is split in half and retried. Results come back in the caller's order.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from .progress import Bar, track

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .models.residency import Residency

STATIC_BUCKET = 64
"""Prompt widths are rounded up to this many tokens when generating with a static KV cache."""
STATIC_MIN_PARAMETERS = 1_000_000_000
"""Below this size a decode step is too cheap for compilation to pay off: on an H100 the smoke profile of
SmolLM2-135M took 280 s with a static cache (compiling each new shape) against 102 s without; an 8B model
decodes 3.7 times faster with it (``benchmarks/bench_decode.py``)."""

FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")
"""Names of the norm after the last decoder layer on the base model or its ``language_model`` (Llama-style, GPT-2,
Phi-2, GPT-NeoX/Pythia; Gemma 3's multimodal models)."""

GREEDY: dict[str, Any] = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "min_length": 0,
    "min_new_tokens": None, "bad_words_ids": None, "sequence_bias": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None, "guidance_scale": None, "remove_invalid_values": False,
    "renormalize_logits": False, "temperature": None, "top_k": None, "top_p": None, "min_p": None, "typical_p": None,
    "top_h": None, "epsilon_cutoff": None, "eta_cutoff": None, "dola_layers": None, "penalty_alpha": None,
    "token_healing": False, "watermarking_config": None, "prompt_lookup_num_tokens": None, "max_time": None,
    "output_scores": False, "output_attentions": False, "output_hidden_states": False,
}
"""Generation settings that make ``generate`` a pure argmax whatever the model's ``generation_config.json`` says
(repetition penalties, banned or forced tokens, sampling knobs). Passed as keyword arguments, not as a
``GenerationConfig``: transformers fills a passed config's unset (None) fields from the model's own."""


@functools.cache
def greedy_settings() -> dict[str, Any]:
    """:data:`GREEDY` cut to the fields this transformers version's ``GenerationConfig`` has (``generate`` refuses
    any other keyword as an unused model argument)."""
    from transformers import GenerationConfig

    known = GenerationConfig()
    return {key: value for key, value in GREEDY.items() if hasattr(known, key)}

T = TypeVar("T")
R = TypeVar("R")
CallObserver = Callable[[str, dict[str, Any]], None]
"""Sees one model call before it runs: its kind (``forward``, ``gradient``, ``generate``) and keyword inputs."""


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
        label: str = "model",
        static_cache: bool | None = None,
        device: str | None = None,
        residency: "Residency | None" = None,
        share_prefix: bool = False,
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        """Where the model runs (it may wait elsewhere between turns, see :class:`Residency`)."""
        self.residency = residency
        self.batch_size = batch_size or (16 if self.device.type == "cpu" else 64)
        self.max_length = max_length
        self.stats = CallStats()
        self.label = label
        """Which side this is (``reference`` or ``quantized``), shown on progress bars."""
        if static_cache is None:
            static_cache = self.device.type == "cuda" and model.num_parameters() >= STATIC_MIN_PARAMETERS
        self.static_cache = static_cache
        """Generate with a static KV cache (default on GPU for models of :data:`STATIC_MIN_PARAMETERS` or more):
        transformers then compiles the decode step where the backend allows it. Prompts are left-padded to a
        multiple of :data:`STATIC_BUCKET` tokens so the cache shape, and the compiled graph, repeat across batches."""
        self.share_prefix = share_prefix
        """Run the token prefix a call's prompts share once, and a prompt's options after its cache (float noise
        only on a full-precision model). The pair turns it on for the reference (and a ``--quant=none`` copy); off
        elsewhere: LLM.int8 (bnb8) picks its outlier columns over all tokens of a pass, so a token's value depends
        on the tokens it runs with, and the batches stay as they were (docs/measurements.md, "Cost per item")."""
        self.observers: list[CallObserver] = []
        """Called with every model call's kind and inputs before it runs (e.g. the benchmark's recorder)."""

    def _notify(self, kind: str, kwargs: dict[str, Any]) -> None:
        for observer in self.observers:
            observer(kind, kwargs)

    def forward(self, **kwargs: Any) -> Any:
        """One forward pass of the model, shown to the observers first.

        A pass whose ``inputs_embeds`` require a gradient (captum's integrated gradients) is of kind
        ``gradient``, so an observer that replays calls (the benchmark) redoes its backward pass too.
        """
        import torch

        embeds = kwargs.get("inputs_embeds")
        gradient = embeds is not None and embeds.requires_grad and torch.is_grad_enabled()
        self._notify("gradient" if gradient else "forward", kwargs)
        self.make_resident()
        return self.model(**kwargs)

    def _generate(self, **kwargs: Any) -> Any:
        """One ``generate`` call of the model, shown to the observers first."""
        if self.static_cache:
            kwargs["cache_implementation"] = "static"
        self._notify("generate", kwargs)
        self.make_resident()
        with deferred_stop_check("cuda" if self.static_cache and self.device.type == "cuda" else None):
            return self.model.generate(**kwargs)

    def make_resident(self) -> None:
        """Put this model on its device before it runs, when the pair's models take turns there."""
        if self.residency is not None:
            self.residency.ensure(self.model)

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
        with track(f"{self.label} {kind}", len(lengths)) as bar:
            self._drain(kind, pending, fn, results, bar)
        return results  # type: ignore[return-value]

    def _drain(self, kind: str, pending: list[list[int]], fn: Callable[[list[int]], list[R]],
               results: list[Any], bar: Bar) -> None:
        """Run ``pending`` batches into ``results``; an out-of-memory batch is split in two and retried."""
        import torch

        while pending:
            batch = pending.pop(0)
            start = time.perf_counter()
            try:
                with torch.no_grad():  # not inference_mode: quanto's packed int2/int4 weights refuse it
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
            bar.advance(len(batch))

    def _eos_ids(self) -> list[int]:
        """Where generation stops: the tokenizer's EOS plus the ids a generation config lists (Llama 3's ``<|eot_id|>``,
        Gemma's ``<end_of_turn>``); a config's single id is not added (the embedded SmolLM2's baselines stop at 1)."""
        declared = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        found = [self.tokenizer.eos_token_id, *(declared if isinstance(declared, list) else [])]
        return list(dict.fromkeys(i for i in found if i is not None))

    @property
    def _generate_multiple(self) -> int:
        """Prompt-width multiple for ``generate``: :data:`STATIC_BUCKET` with a static cache, else 1."""
        return STATIC_BUCKET if self.static_cache else 1

    def encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text (no padding). The tokenizer's leading special tokens (BOS) are not added again to a
        text that already begins with them (a rendered chat template), and those it appends (EOS) are left off."""
        encoded = [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]
        return encoded if not add_special_tokens else [ids[self._kept(ids)] for ids in encoded]

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """:meth:`encode`'s token ids of each text with each token's character span in it (a fast tokenizer's
        offsets; a special token the tokenizer added spans nothing), for methods that map tokens back to words."""
        encoded = self.tokenizer(list(texts), return_offsets_mapping=True)
        found = []
        for ids, spans in zip(encoded["input_ids"], encoded["offset_mapping"]):
            kept = self._kept(ids)
            found.append((list(ids)[kept], [tuple(pair) for pair in spans][kept]))
        return found

    def _kept(self, ids: Sequence[int]) -> slice:
        """The part of a text's ids with special tokens added that :meth:`encode` keeps: without a second copy of
        the leading ones (a rendered chat template writes its own BOS) and without the trailing ones (EOS)."""
        lead, trail = self._added_specials
        return slice(len(lead) if list(ids[len(lead) : 2 * len(lead)]) == lead else 0, len(ids) - len(trail))

    @functools.cached_property
    def _added_specials(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text when it adds special tokens (found once per runtime)."""
        bare, full = (list(self.tokenizer(["a"], add_special_tokens=add)["input_ids"][0]) for add in (False, True))
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    def pad(self, seqs: Sequence[Sequence[int]], multiple: int = 1) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Left-pad token id lists into ``input_ids`` and ``attention_mask`` on the model's device.

        ``multiple`` rounds the width up (so generation with a static cache meets few distinct shapes).
        """
        import torch

        width = -(-max(len(s) for s in seqs) // multiple) * multiple
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
            ids, mask = self.pad([seqs[i] for i in batch])
            keep = max(tail_lens[i] for i in batch) + 1
            logits = self.forward(
                input_ids=ids, attention_mask=mask, position_ids=self._position_ids(mask), logits_to_keep=keep
            ).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predictions for the last keep-1 tokens
            targets = ids[:, -(keep - 1) :] if keep > 1 else ids[:, :0]
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            self.stats.tokens_scored += int(mask.sum())
            return [picked[row, picked.shape[1] - tail_lens[i] :].cpu().numpy() for row, i in enumerate(batch)]

        return self._run_batched("score", [len(s) for s in seqs], run)

    def option_logprobs(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """For each prompt, the summed log-probability of each of its answer options.

        Each prompt runs once and its options continue its key/value cache (:meth:`grouped_logprobs`), after
        the prefix all prompts share; prompts too long for ``max_length`` are scored pair by pair, truncated.
        """
        prompt_ids = self.encode(prompts)
        option_ids = [self.encode(list(opts), add_special_tokens=False) for opts in options]
        if not self.share_prefix or any(len(p) + max(map(len, o), default=0) > self.max_length or not all(o) or not p
                                        for p, o in zip(prompt_ids, option_ids)):
            flat = self.score([p for p, opts in zip(prompts, options) for _ in opts], [o for opts in options for o in opts])
            bounds = np.cumsum([0, *map(len, options)])
            return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        shared = shared_prefix(prompt_ids)
        scores = self.grouped_logprobs(prompt_ids[0][:shared] if prompt_ids else [],
                                       [p[shared:] for p in prompt_ids], option_ids)
        return [np.array([float(v.sum()) for v in group]) for group in scores]

    def next_token_logprobs(self, prompts: Sequence[str]) -> np.ndarray:
        """Log-softmax over the vocabulary at the last position of each prompt, ``[n, vocab]``.

        The token prefix all prompts share (a chat template's system turn) runs once; its key/value cache
        serves every batch (:meth:`_prefix_cache`).
        """
        import torch

        seqs = [s[-self.max_length :] for s in self.encode(prompts)]
        offset = shared_prefix(seqs) if self.share_prefix else 0
        base = self._prefix_cache(seqs[0][:offset]) if seqs else None

        def run(batch: list[int]) -> list[np.ndarray]:
            ids, mask = self.pad([seqs[i][offset:] for i in batch])
            logits = self._after_prefix(ids, mask, base, offset, keep=1).logits[:, -1].float()
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
        return [text for text, _ in self._greedy(prompts, max_new_tokens, stop, scored=False)]

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
            ids, mask = self.pad([seqs[i] for i in batch])
            out = self.forward(
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

    def activations(
        self,
        prompts: Sequence[str],
        taps: dict[str, tuple["torch.nn.Module", str]],
        positions: Sequence[int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Inputs or outputs of chosen modules at one token per prompt, ``{name: [n, width]}``.

        ``taps[name] = (module, "input" | "output")``: "input" is the module's first argument (e.g. the MLP
        down projection's input, the neuron coefficients), "output" its output (a tuple's first element,
        e.g. an attention block's). ``positions`` as in :meth:`hidden_states`.
        """
        import torch

        seqs = [s[-self.max_length :] for s in self.encode(prompts)]
        where = list(positions) if positions is not None else [-1] * len(seqs)
        found: dict[str, torch.Tensor] = {}
        index: list[tuple[torch.Tensor, torch.Tensor]] = []

        def keep(name: str, value: Any) -> None:
            main = value[0] if isinstance(value, tuple) else value
            rows, cols = index[-1]
            found[name] = main[rows, cols].float().cpu()

        def input_hook(name: str) -> Callable[..., None]:
            return lambda _module, args, kwargs: keep(name, args[0] if args else kwargs["hidden_states"])

        def output_hook(name: str) -> Callable[..., None]:
            return lambda _module, _args, output: keep(name, output)

        handles = [
            module.register_forward_pre_hook(input_hook(name), with_kwargs=True) if kind == "input"
            else module.register_forward_hook(output_hook(name))
            for name, (module, kind) in taps.items()
        ]

        def run(batch: list[int]) -> list[dict[str, np.ndarray]]:
            ids, mask = self.pad([seqs[i] for i in batch])
            ends = [where[i] if where[i] < 0 else where[i] - len(seqs[i]) for i in batch]  # end-relative
            index.append((torch.arange(len(batch)), torch.tensor(ends) + ids.shape[1]))
            found.clear()
            self.forward(input_ids=ids, attention_mask=mask, position_ids=self._position_ids(mask), logits_to_keep=1)
            self.stats.tokens_scored += int(mask.sum())
            return [{name: found[name][row].numpy() for name in taps} for row in range(len(batch))]

        try:
            rows = self._run_batched("hidden", [len(s) for s in seqs], run)
        finally:
            for handle in handles:
                handle.remove()
        return {name: np.stack([row[name] for row in rows]) for name in taps}

    def output_gradients(
        self,
        prompts: Sequence[str],
        modules: Sequence["torch.nn.Module"],
        positions: Sequence[int],
        objective: Callable[["torch.Tensor", list[int]], "torch.Tensor"],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each module's output at one token per prompt and the gradient of a next-token objective there.

        ``objective(log_probs [b, vocab], item_indices) -> [b]`` scores each prompt's next-token
        distribution. Returns ``(outputs, grads)``, both ``[n, len(modules), width]``: ``grads[i, j]`` is
        d objective_i / d output_j[positions[i]], the first-order effect of adding a vector to that module's
        output there (activation patching). Needs a backward pass through the model (:func:`probe_backward`).
        """
        import torch

        seqs = [s[-self.max_length :] for s in self.encode(prompts)]
        where = list(positions)

        def run(batch: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
            with torch.enable_grad():
                ids, mask = self.pad([seqs[i] for i in batch])
                ends = [where[i] if where[i] < 0 else where[i] - len(seqs[i]) for i in batch]
                rows, cols = torch.arange(len(batch)), torch.tensor(ends) + ids.shape[1]
                deltas: dict[int, torch.Tensor] = {}
                outputs: dict[int, torch.Tensor] = {}

                def patch(module: torch.nn.Module, _args: Any, output: Any) -> Any:
                    main = output[0] if isinstance(output, tuple) else output
                    at = (rows.to(main.device), cols.to(main.device))
                    outputs[id(module)] = main[at].detach().float().cpu()
                    delta = torch.zeros(main.shape[0], main.shape[-1], dtype=main.dtype, device=main.device,
                                        requires_grad=True)
                    deltas[id(module)] = delta
                    main = main.index_put(at, delta, accumulate=True)
                    return (main, *output[1:]) if isinstance(output, tuple) else main

                handles = [module.register_forward_hook(patch) for module in modules]
                try:
                    logits = self.forward(
                        input_ids=ids, attention_mask=mask, position_ids=self._position_ids(mask),
                        logits_to_keep=1, use_cache=False,
                    ).logits[:, -1].float()
                finally:
                    for handle in handles:
                        handle.remove()
                value = objective(torch.log_softmax(logits, dim=-1), batch).sum()
                grads = torch.autograd.grad(value, [deltas[id(module)] for module in modules])
            self.stats.tokens_scored += int(mask.sum())
            found = torch.stack([outputs[id(module)] for module in modules], dim=1).numpy()
            stacked = torch.stack(grads, dim=1).float().cpu().numpy()
            return list(zip(found, stacked))

        pairs = self._run_batched("gradient", [len(s) for s in seqs], run)
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _prefix_cache(self, prefix: Sequence[int]) -> Any:
        """The key/value cache of ``prefix`` run once at batch size 1 (None for an empty prefix)."""
        import torch
        from transformers import DynamicCache

        if not prefix:
            return None
        base = DynamicCache()
        start = time.perf_counter()
        with torch.no_grad():
            self.forward(input_ids=torch.tensor([list(prefix)], device=self.device), past_key_values=base,
                         use_cache=True, logits_to_keep=1)
        self.stats.add("score", time.perf_counter() - start)
        self.stats.tokens_scored += len(prefix)
        return base

    def _after_prefix(self, ids: "torch.Tensor", mask: "torch.Tensor", base: Any, offset: int, keep: int,
                      use_cache: bool = False) -> Any:
        """One forward pass of left-padded ``ids`` that continue the cached prefix ``base`` (``offset`` tokens).

        Each row gets its own copy of the prefix cache; the padding sits between prefix and row, masked out.
        """
        import copy

        import torch

        cache = None
        if base is not None:
            cache = copy.deepcopy(base)
            cache.batch_repeat_interleave(ids.shape[0])
        return self.forward(
            input_ids=ids, past_key_values=cache, use_cache=use_cache or base is not None, logits_to_keep=keep,
            attention_mask=torch.cat([mask.new_ones(ids.shape[0], offset), mask], dim=1),
            position_ids=offset + self._position_ids(mask),
        )

    def prefixed_tail_logprobs(
        self, prefix: Sequence[int], seqs: Sequence[Sequence[int]], tails: Sequence[int]
    ) -> list[np.ndarray]:
        """Log-probabilities of the last ``tails[i]`` tokens of each token-id sequence after a shared prefix.

        The prefix (few-shot demonstrations, a question shared by its answer options) runs once and its
        key/value cache serves every batch, so scoring many continuations or perturbations of one prompt
        (Shapley sampling) costs only their own tokens. Sequences are left-padded after the prefix;
        ``0 < tails[i] < len(seqs[i])``.
        """
        import torch

        if len(tails) != len(seqs) or any(not 0 < t < len(s) for s, t in zip(seqs, tails)):
            raise ValueError("prefixed_tail_logprobs needs one tail per sequence, each shorter than its sequence")
        offset = len(prefix)
        base = self._prefix_cache(prefix) if seqs else None

        def run(batch: list[int]) -> list[np.ndarray]:
            ids, mask = self.pad([seqs[i] for i in batch])
            keep = max(tails[i] for i in batch) + 1
            logits = self._after_prefix(ids, mask, base, offset, keep).logits[:, :-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, -(keep - 1) :, None])[..., 0]
            self.stats.tokens_scored += int(mask.sum())
            return [picked[row, picked.shape[1] - tails[i] :].cpu().numpy() for row, i in enumerate(batch)]

        return self._run_batched("score", [len(s) for s in seqs], run)

    def grouped_logprobs(
        self, prefix: Sequence[int], stems: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[list[np.ndarray]]:
        """Per-token log-probabilities of each stem's continuations, after a prefix all stems share.

        ``out[i][j]`` scores ``continuations[i][j]`` after ``prefix + stems[i]``. The prefix runs once, each stem
        once (its cache copied to its continuations), each continuation's own tokens once: a question's answer
        options share the question's pass instead of repeating it. Stems and continuations must be non-empty.
        """
        import torch

        if len(stems) != len(continuations) or any(not s for s in stems) or any(
                not c for group in continuations for c in group):
            raise ValueError("grouped_logprobs needs one non-empty stem per group and non-empty continuations")
        if not self.share_prefix:  # each continuation with its whole stem, as one sequence
            flat = self.prefixed_tail_logprobs(prefix, [list(stem) + list(c) for stem, group in zip(stems, continuations)
                                                        for c in group], [len(c) for group in continuations for c in group])
            bounds = np.cumsum([0, *map(len, continuations)])
            return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        offset = len(prefix)
        base = self._prefix_cache(prefix) if stems else None

        def run(batch: list[int]) -> list[list[np.ndarray]]:
            ids, mask = self.pad([stems[i] for i in batch])
            out = self._after_prefix(ids, mask, base, offset, keep=1, use_cache=True)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            rows = [(row, j) for row, i in enumerate(batch) for j in range(len(continuations[i]))]
            tokens = [list(continuations[batch[row]][j]) for row, j in rows]
            if not tokens:
                return [[] for _ in batch]
            width = max(len(t) for t in tokens)
            picked = first[[row for row, _ in rows], [t[0] for t in tokens]][:, None]
            if width > 1:  # tokens after the first: one pass over every continuation, right-padded
                index = torch.tensor([row for row, _ in rows], device=ids.device)
                cache = out.past_key_values
                cache.reorder_cache(index)
                pad = [self.tokenizer.pad_token_id] * width
                feed = torch.tensor([t[:-1] + pad[len(t):] for t in tokens], device=ids.device)
                targets = torch.tensor([t[1:] + pad[len(t):] for t in tokens], device=ids.device)
                real = torch.tensor([[1] * (len(t) - 1) + [0] * (width - len(t)) for t in tokens], device=ids.device)
                logits = self.forward(
                    input_ids=feed, past_key_values=cache, use_cache=True, logits_to_keep=width - 1,
                    attention_mask=torch.cat([mask.new_ones(len(rows), offset), mask[index], real], dim=1),
                    position_ids=offset + mask[index].sum(-1, keepdim=True) + torch.arange(width - 1, device=ids.device),
                ).logits.float()
                rest = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
                picked = torch.cat([picked, rest], dim=1)
                self.stats.tokens_scored += int(real.sum())
            self.stats.tokens_scored += int(mask.sum())
            values = picked.cpu().numpy()
            grouped: list[list[np.ndarray]] = [[] for _ in batch]
            for (row, _), value, t in zip(rows, values, tokens):
                grouped[row].append(value[: len(t)])
            return grouped

        return self._run_batched("score", [len(s) for s in stems], run)

    def generate_scored(
        self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n",
    ) -> tuple[list[str], np.ndarray]:
        """Greedy continuations as :meth:`generate`, plus the first step's log-softmax ``[n, vocab]``.

        The first step's distribution is :meth:`next_token_logprobs` of each prompt, read off the same
        prefill instead of a second forward pass (suites that need both save half their model time).
        """
        done = self._greedy(prompts, max_new_tokens, stop, scored=True)
        return [text for text, _ in done], np.stack([row for _, row in done])

    def _greedy(
        self, prompts: Sequence[str], max_new_tokens: int, stop: str | None, scored: bool,
    ) -> list[tuple[str, np.ndarray | None]]:
        """Batched greedy generation; with ``scored``, each prompt's first-step log-softmax too (else None).

        With the dynamic cache, the token prefix all prompts share (few-shot demonstrations, a chat template's
        system turn) is prefilled once and each batch starts from a copy of its key/value cache.
        """
        import copy

        import torch

        seqs = [s[-self.max_length :] for s in self.encode(prompts)]
        offset = shared_prefix(seqs) if self.share_prefix and not self.static_cache else 0
        base = self._prefix_cache(seqs[0][:offset]) if seqs else None

        def run(batch: list[int]) -> list[tuple[str, np.ndarray | None]]:
            ids, mask = self.pad([seqs[i][offset:] for i in batch], self._generate_multiple)
            cache: dict[str, Any] = {}
            if base is not None:  # the prefix sits before each row's left padding, its cache already filled
                cache = {"past_key_values": copy.deepcopy(base)}
                cache["past_key_values"].batch_repeat_interleave(len(batch))
                ids = torch.cat([ids.new_tensor(seqs[batch[0]][:offset]).expand(len(batch), -1), ids], dim=1)
                mask = torch.cat([mask.new_ones(len(batch), offset), mask], dim=1)
            kwargs: dict[str, Any] = {"tokenizer": self.tokenizer} if stop else {}
            out = self._generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **greedy_settings(),
                stop_strings=[stop] if stop else None, return_dict_in_generate=scored, output_logits=scored,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self._eos_ids(), **cache, **kwargs,
            )
            new = (out.sequences if scored else out)[:, ids.shape[1] :]
            first: list[np.ndarray | None] = (
                list(torch.log_softmax(out.logits[0].float(), dim=-1).cpu().numpy()) if scored else [None] * len(batch)
            )
            self.stats.tokens_scored += int(mask.sum()) - (offset if base is not None else 0) * len(batch)
            self.stats.tokens_generated += int((new != self.tokenizer.pad_token_id).sum())
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            return [(t.split(stop)[0].strip() if stop else t.strip(), row) for t, row in zip(texts, first)]

        return self._run_batched("generate", [len(s) for s in seqs], run)


@contextlib.contextmanager
def deferred_stop_check(device_type: str | None) -> Iterator[None]:
    """Let transformers' greedy loop read its stop flag one step late on ``device_type`` (CUDA) too, so the host
    queues the next decode step while the device runs this one; None: leave it as it is.

    transformers (5.x) has this deferral (``DeferredStopCheck``: the flag is copied asynchronously, one extra step
    runs and is undone) but turns it on for Apple's MPS only. The tokens are the same; the runtime uses it with the
    static cache, where an 8B model's compiled decode step at batch 16 on an H200 took 7.4–7.8 ms with it against
    9.2–10.5 ms without; with the dynamic cache it doubled the eager step (93 vs 46 ms), so that stays as it is
    (docs/measurements.md). Where the installed transformers has no such class, nothing changes.
    """
    from transformers.generation import utils

    check = getattr(utils, "DeferredStopCheck", None)
    if device_type is None or check is None or not isinstance(check.__dict__.get("is_supported"), staticmethod):
        yield
        return
    original = check.__dict__["is_supported"]

    def is_supported(device: Any, cache: Any, cache_is_returned: bool, is_assistant: bool = False) -> bool:
        if device.type != device_type:
            return original.__func__(device, cache, cache_is_returned, is_assistant=is_assistant)
        return not is_assistant and (cache is None or cache.is_croppable or not cache_is_returned)

    check.is_supported = staticmethod(is_supported)
    try:
        yield
    finally:
        check.is_supported = original


def shared_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every sequence shares, leaving each at least one token of its own."""
    import os

    if not seqs:
        return 0
    return max(0, min(len(os.path.commonprefix([list(s) for s in seqs])), min(len(s) for s in seqs) - 1))


def final_norm(model: "PreTrainedModel") -> "torch.nn.Module":
    """The norm applied after the last decoder layer (``norm`` in Llama-style models, ``ln_f`` in GPT-2)."""
    from .errors import ArchitectureError

    for base in (model.base_model, getattr(model.base_model, "language_model", None)):
        for name in FINAL_NORMS:
            module = getattr(base, name, None)
            if module is not None:
                return module  # type: ignore[no-any-return]
    raise ArchitectureError(
        f"the probes cannot find the final norm (base model or language_model attribute {' / '.join(FINAL_NORMS)}) "
        f"in architecture {type(model).__name__} (model_type={getattr(model.config, 'model_type', '?')})"
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
