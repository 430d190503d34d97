"""Where the interpretability probes find a decoder's parts: final norm, unembedding, layers, attention, MLP, W_down.

One table row per supported model family names the attribute paths; :func:`model_parts` resolves them on a
loaded (reference or quantized) model and raises :class:`ArchitectureError` for anything else, so a probe
never guesses. The MLP's value neurons are the columns of ``W_down`` (``[d_model, n_neurons]``) and their
coefficients ``m`` are the down projection's input (Llama, Qwen2, Mistral, Gemma: ``mlp.down_proj``; GPT-2:
``mlp.c_proj``, a ``Conv1D`` whose weight is stored transposed, ``[n_neurons, d_model]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ArchitectureError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ..backends.base import QuantBackend


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths of one model family: model-level modules, then paths inside one decoder layer."""

    layers: str
    final_norm: str
    unembed: str
    attn: str
    mlp: str
    down: str
    down_transposed: bool = False
    """The down projection stores its weight as ``[n_neurons, d_model]`` (GPT-2's ``Conv1D``)."""


_LLAMA_LIKE = ArchSpec("model.layers", "model.norm", "lm_head", "self_attn", "mlp", "mlp.down_proj")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gpt2": ArchSpec("transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp", "mlp.c_proj", down_transposed=True),
}
"""``config.model_type`` → paths. Every listed family is pre-norm: ``h = x + attn(norm(x))``, then
``y = h + mlp(norm(h))``."""


@dataclass(frozen=True)
class LayerParts:
    """One decoder layer: the block, its attention and MLP sublayers and the MLP's down projection."""

    block: "torch.nn.Module"
    attn: "torch.nn.Module"
    mlp: "torch.nn.Module"
    down: "torch.nn.Module"


@dataclass(frozen=True)
class ModelParts:
    """The modules a probe needs, resolved on one loaded model; tensors come back float32 on the CPU unless noted."""

    model_type: str
    final_norm: "torch.nn.Module"
    unembed: "torch.nn.Module"
    layers: tuple[LayerParts, ...]
    down_transposed: bool

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

        return torch.log_softmax(self.unembed(self._final(hidden)).float(), dim=-1)

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
        """``W_U^T v`` for vocabulary vectors ``[r, V]`` → ``[r, d]``, read off the unembedding by autograd.

        The unembedding is linear, so the gradient of ``v · unembed(x)`` is ``W_U^T v`` at any ``x``; this
        works for tied, biased and quantized heads alike without touching their weight layout.
        """
        import torch

        weight = next(self.unembed.parameters())
        with torch.enable_grad():
            point = torch.zeros(vectors.shape[0], self.unembed.in_features, dtype=weight.dtype,
                                device=weight.device, requires_grad=True)
            value = (self.unembed(point).float() * vectors.to(weight.device).float()).sum()
            return torch.autograd.grad(value, point)[0].float().cpu()

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
    """Resolve the probe modules of ``model``; :class:`ArchitectureError` for an unknown or unexpected layout."""
    model_type = str(getattr(model.config, "model_type", "unknown"))
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        raise ArchitectureError(
            f"the probes do not know architecture {type(model).__name__} (model_type={model_type}); "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    layers = _resolve(model, spec.layers, model_type)
    return ModelParts(
        model_type=model_type,
        final_norm=_resolve(model, spec.final_norm, model_type),
        unembed=_resolve(model, spec.unembed, model_type),
        layers=tuple(
            LayerParts(
                block=block,
                attn=_resolve(block, spec.attn, model_type),
                mlp=_resolve(block, spec.mlp, model_type),
                down=_resolve(block, spec.down, model_type),
            )
            for block in layers
        ),
        down_transposed=spec.down_transposed,
    )


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
