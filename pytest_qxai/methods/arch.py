"""Where the interpretability probes find a decoder's parts: final norm, unembedding, layers, attention, MLP, W_down.

The parts are found from the model's structure, not from a list of names: the decoder layers are the longest
``ModuleList`` whose blocks each hold an attention module and an MLP (their class names end in ``Attention`` and
``MLP``, as in every transformers decoder: Llama 1-3, Mistral, Qwen 2/2.5/3, Gemma 1-3, Phi-3, OLMo 2, SmolLM 1-3,
GPT-2); the down projection is the MLP's linear map back to the model width (``down_proj`` in the gated MLPs,
GPT-2's ``Conv1D`` ``c_proj``, whose weight is stored transposed as ``[n_neurons, d_model]``); the final norm is
the base model's (or its ``language_model``'s) ``norm``/``ln_f``/``final_layernorm``/``final_layer_norm``; the
unembedding is ``get_output_embeddings()``, its logits scaled as the model scales them (Cohere, Granite).
:func:`model_parts` raises :class:`ArchitectureError` when one of them is missing, so a probe never guesses.

Residual contributions: most decoders are pre-norm (``h = x + attn(norm(x))``, ``y = h + mlp(norm(h))``). Gemma 2/3
and OLMo 2 also normalise each sublayer's *output* before adding it (``post_attention_layernorm`` and
``post_feedforward_layernorm`` on the sublayer outputs; a block with a ``post_feedforward_layernorm`` is read this
way); the probes then take those norms' outputs as the attention and MLP contributions. A value neuron
``m_k · W_down[:, k]`` is an additive part of the residual stream only without such a norm and without a final
logit soft-cap (Gemma 2): :attr:`ModelParts.neuron_caveat` says why not otherwise.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ArchitectureError
from ..runtime import final_norm

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ..backends.base import QuantBackend

POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
"""A block holding the second of these normalises both sublayer outputs with them before the residual add."""


@dataclass(frozen=True)
class LayerParts:
    """One decoder layer: the block, the modules whose outputs it adds to the residual stream, the down projection."""

    block: "torch.nn.Module"
    contributions: "tuple[torch.nn.Module, torch.nn.Module] | str"
    """The attention and MLP modules, or the norms applied to their outputs (post-norm blocks); a string says why
    no module's output is what the block adds (:attr:`attn` and :attr:`mlp` then raise it)."""
    down: "torch.nn.Module"

    @property
    def attn(self) -> "torch.nn.Module":
        """The module whose output is the attention contribution; :class:`ArchitectureError` where there is none."""
        return self._contribution(0)

    @property
    def mlp(self) -> "torch.nn.Module":
        """The module whose output is the MLP contribution; :class:`ArchitectureError` where there is none."""
        return self._contribution(1)

    def _contribution(self, index: int) -> "torch.nn.Module":
        if isinstance(self.contributions, str):
            raise ArchitectureError(self.contributions)
        return self.contributions[index]


@dataclass(frozen=True)
class ModelParts:
    """The modules a probe needs, resolved on one loaded model; tensors come back float32 on the CPU unless noted."""

    model_type: str
    final_norm: "torch.nn.Module"
    unembed: "torch.nn.Module"
    layers: tuple[LayerParts, ...]
    down_transposed: bool
    softcap: float | None = None
    """Final logit soft-cap ``c``: logits become ``c · tanh(logits / c)`` (Gemma 2)."""
    logit_scale: float = 1.0
    """Factor on the LM head's output: Cohere's ``logit_scale``, ``1 / logits_scaling`` in Granite."""
    neuron_caveat: str | None = None
    """Why single value neurons are not additive parts of the residual stream here (None when they are)."""

    @property
    def device(self) -> "torch.device":
        """Where the model's unembedding (and so the probes' arithmetic) lives."""
        return next(self.unembed.parameters()).device

    def _final(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """``FinalNorm(hidden)`` on the model's device, in its dtype."""
        weight = next(self.unembed.parameters())
        return self.final_norm(hidden.to(device=weight.device, dtype=weight.dtype))

    def _log_softmax(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """``log_softmax(W_U · FinalNorm(hidden))``, float32 on the model's device."""
        import torch

        logits = self.unembed(self._final(hidden)).float() * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)

    def normed(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """``FinalNorm(hidden)`` for residual vectors ``[..., d]``, float32 on the model's device."""
        return self._final(hidden).float()

    def log_probs(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """The logit lens: ``log_softmax(W_U · FinalNorm(hidden))`` for residual vectors ``[..., d]``."""
        return self._log_softmax(hidden).cpu()

    def token_log_probs(self, hidden: "torch.Tensor", tokens: "torch.Tensor", chunk: int = 256) -> "torch.Tensor":
        """Logit-lens log-probability of one token per residual vector (``[N, d]``, ``[N]`` → ``[N]``).

        The softmax needs the full vocabulary, so rows go through the unembedding ``chunk`` at a time; only the
        picked log-probabilities leave the model's device.
        """
        import torch

        tokens = tokens.to(self.device)
        return torch.cat([
            self._log_softmax(hidden[start : start + chunk]).gather(-1, tokens[start : start + chunk, None])[:, 0].cpu()
            for start in range(0, hidden.shape[0], chunk)
        ]) if hidden.shape[0] else hidden.new_zeros(0).cpu()

    def token_log_probs_and_grads(
        self, hidden: "torch.Tensor", tokens: "torch.Tensor", chunk: int = 256,
    ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """:meth:`token_log_probs` and its gradient with respect to each residual vector, ``[N]`` and ``[N, d]``."""
        import torch

        tokens = tokens.to(self.device)
        values, grads = [], []
        with torch.enable_grad():
            for start in range(0, hidden.shape[0], chunk):
                rows = hidden[start : start + chunk].detach().clone().requires_grad_(True)
                picked = self._log_softmax(rows).gather(-1, tokens[start : start + chunk, None])[:, 0]
                grads.append(torch.autograd.grad(picked.sum(), rows)[0])
                values.append(picked.detach().cpu())
        if not values:
            return hidden.new_zeros(0), hidden.new_zeros(hidden.shape)
        return torch.cat(values), torch.cat(grads)

    def unembed_transpose(self, vectors: "torch.Tensor") -> "torch.Tensor":
        """``W_U^T v`` (times :attr:`logit_scale`) for vocabulary vectors ``[r, V]`` → ``[r, d]``, read off the
        unembedding by autograd.

        The unembedding is linear, so the gradient of ``v · unembed(x)`` is ``W_U^T v`` at any ``x``; this
        works for tied, biased and quantized heads alike without touching their weight layout.
        """
        import torch

        weight = next(self.unembed.parameters())
        with torch.enable_grad():
            point = torch.zeros(vectors.shape[0], self.unembed.in_features, dtype=weight.dtype,
                                device=weight.device, requires_grad=True)
            value = (self.unembed(point).float() * vectors.to(weight.device).float()).sum()
            return torch.autograd.grad(value, point)[0].float().cpu() * self.logit_scale

    def down_weight(self, index: int, backend: "QuantBackend | None" = None) -> "torch.Tensor | None":
        """Layer ``index``'s ``W_down`` ``[d_model, n_neurons]`` on the model's device; column k is value neuron k.

        Without ``backend`` the module's own float weight is read (the reference; no copy, in its dtype); with one,
        the backend dequantizes its packed weight (None when it cannot).
        """
        down = self.layers[index].down
        if backend is None:
            weight = down.weight.detach()
            weight = weight.t() if self.down_transposed else weight
        else:
            found = backend.dequantized_weight(down)
            if found is None:
                return None
            weight = found.detach()
            if self.down_transposed and tuple(weight.shape) == tuple(down.weight.shape):
                weight = weight.t()  # an adapter that hands back Conv1D's own [in, out] layout
        return weight.to(self.device)


def model_parts(model: "PreTrainedModel") -> ModelParts:
    """Resolve the probe modules of ``model`` from its structure; :class:`ArchitectureError` when a part is missing."""
    config = model.config
    model_type = str(getattr(config, "model_type", "unknown"))
    blocks = _decoder_layers(model, model_type)
    post_norm = all(hasattr(block, POST_NORMS[1]) for block in blocks)
    layers = []
    for block in blocks:
        attn, mlp = _child(block, "Attention", model_type), _child(block, "MLP", model_type)
        split: tuple[Any, Any] | str = (attn, mlp)
        if post_norm:
            split = (_resolve(block, POST_NORMS[0], model_type), _resolve(block, POST_NORMS[1], model_type))
        elif any("residual" in inspect.signature(module.forward).parameters for module in (attn, mlp)):
            split = (f"the probes cannot split {model_type}'s residual stream into attention and MLP contributions "
                     "(its attention and MLP modules add the residual to their output)")
        elif getattr(config, "residual_multiplier", 1.0) != 1.0:
            split = (f"the probes cannot split {model_type}'s residual stream into attention and MLP contributions "
                     f"(it scales them by residual_multiplier = {config.residual_multiplier} before adding them)")
        layers.append(LayerParts(block=block, contributions=split, down=_down(mlp, model_type)))
    softcap = getattr(config, "final_logit_softcapping", None)
    caveats = ([f"{model_type} normalises the MLP output before adding it to the residual stream"] if post_norm else [])
    caveats += [f"{model_type} soft-caps its final logits (c = {softcap})"] if softcap else []
    return ModelParts(
        model_type=model_type,
        final_norm=final_norm(model),
        unembed=_output_embeddings(model, model_type),
        layers=tuple(layers),
        down_transposed=type(layers[0].down).__name__ == "Conv1D",
        softcap=float(softcap) if softcap else None,
        logit_scale=float(getattr(config, "logit_scale", None) or 1.0) / float(getattr(config, "logits_scaling", 1.0)),
        neuron_caveat=" and ".join(caveats) or None,
    )


def _missing(model: Any, model_type: str, what: str) -> ArchitectureError:
    """The one-line error for a part the probes cannot find."""
    return ArchitectureError(f"the probes cannot find {what} in architecture {type(model).__name__} "
                             f"(model_type={model_type})")


def _decoder_layers(model: Any, model_type: str) -> list[Any]:
    """The longest ``ModuleList`` whose every block holds an attention module and an MLP."""
    import torch

    found: list[Any] = []
    for module in model.modules() if isinstance(model, torch.nn.Module) else ():
        if (isinstance(module, torch.nn.ModuleList) and len(module) > len(found)
                and all(_has_child(block, "Attention") and _has_child(block, "MLP") for block in module)):
            found = list(module)
    if not found:
        raise _missing(model, model_type, "decoder layers (blocks holding an attention module and an MLP)")
    return found


def _has_child(block: Any, suffix: str) -> bool:
    """Whether one of ``block``'s direct children is of a class named ``...<suffix>``."""
    return any(type(child).__name__.endswith(suffix) for child in block.children())


def _child(block: Any, suffix: str, model_type: str) -> Any:
    """The first direct child of ``block`` whose class name ends in ``suffix``."""
    for child in block.children():
        if type(child).__name__.endswith(suffix):
            return child
    raise _missing(block, model_type, f"a {suffix} module in the decoder layer")


def _down(mlp: Any, model_type: str) -> Any:
    """The MLP's projection back to the model width: its last linear (or ``Conv1D``) child that maps to ``d_model``."""
    linear = [child for child in mlp.children() if _widths(child) is not None]
    if len(linear) < 2:
        raise _missing(mlp, model_type, "the MLP's down projection")
    d_model = _widths(linear[0])[0]  # type: ignore[index]
    back = [child for child in linear[1:] if _widths(child)[1] == d_model]  # type: ignore[index]
    if not back:
        raise _missing(mlp, model_type, "the MLP's down projection")
    return back[-1]


def _widths(module: Any) -> tuple[int, int] | None:
    """``(in, out)`` width of a linear layer (``nn.Linear``, a quantized linear, GPT-2's ``Conv1D``), else None."""
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0]), int(module.nf)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    return None


def _output_embeddings(model: Any, model_type: str) -> Any:
    """The unembedding (LM head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise _missing(model, model_type, "the unembedding (no output embeddings: not a causal LM)")
    return head


def _resolve(root: Any, path: str, model_type: str) -> Any:
    """Follow a dotted attribute path, or raise :class:`ArchitectureError` naming the missing part."""
    found = root
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ArchitectureError(
                f"the probes expected module {path!r} in this {model_type} model ({type(root).__name__}) "
                "and did not find it"
            )
    return found
