"""The model that rates explanations: the reference, or ``--qxai-judge`` loaded like the pair's own models.

A separate judge is loaded once per pair, on the reference's device and dtype, and joins the pair's
:class:`~pytest_qxai.models.residency.Residency`, so it takes its turn on the GPU when the models take turns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import QxaiConfig
    from ..runtime import Runtime
    from .pair import ModelPair


def judge(pair: "ModelPair") -> tuple["Runtime", str]:
    """The judge's runtime and a description that identifies it (the reference model unless ``--qxai-judge``).

    The description names the judge's weights by content, never the machine or library versions it runs with: it
    is part of the stored baseline's fingerprint, and a baseline recorded on another CPU is not stale for that."""
    cfg = pair.config
    if cfg.judge is None:
        return pair.reference.runtime, (f"reference model {pair.metadata.get('model', '')} "
                                         f"({pair.metadata.get('model_hash', '')})")
    key = (cfg.judge, str(cfg.cache_dir), cfg.trust_remote_code, cfg.batch_size)
    if key not in pair.judges:
        pair.judges[key] = _load_judge(cfg, pair.reference.runtime)
    return pair.judges[key]


def _load_judge(cfg: "QxaiConfig", reference: "Runtime") -> tuple["Runtime", str]:
    """Load ``cfg.judge`` next to the reference: same device and dtype, same residency; its runtime and identity."""
    from ..runtime import Runtime
    from .loading import load_reference, load_tokenizer, materialize, scratch_dir
    from .source import resolve_source

    assert cfg.judge is not None
    source = resolve_source(cfg.judge)
    location, content_id = materialize(source, cfg.cache_dir, scratch_dir("qxai-judge-"))
    tokenizer = load_tokenizer(location, revision=source.revision, trust_remote_code=cfg.trust_remote_code)
    residency = reference.residency
    waits = residency is not None and residency.turns  # loaded on the CPU; it moves to the GPU for its turn
    model = load_reference(location, device="cpu" if waits else str(reference.device), dtype=reference.model.dtype,
                           revision=source.revision, trust_remote_code=cfg.trust_remote_code)
    if residency is not None:
        residency.add(model, movable=True)
    runtime = Runtime(model, tokenizer, batch_size=cfg.batch_size, label="judge", device=str(reference.device),
                      residency=residency)
    return runtime, f"{source.label} ({content_id})"
