"""What a cached value depends on: the model's bytes, the code that computed it, the libraries that ran.

Cache keys are built from these (docs/cache.md has the table). Cached model folders (a converted GGUF,
a quantized checkpoint) carry a signed manifest of their files' hashes and must hold data-only files.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import warnings
from pathlib import Path

from ..storage import CacheWarning, full_hash, memo_file_hash, read_signed_text, stable_hash, write_signed_text

VALUE_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "accelerate", "safetensors", "numpy", "scipy")
"""Libraries whose version can change a computed value on either side (a backend's own join the quantized side)."""
CONVERTER_DISTRIBUTIONS = ("gguf",)
"""Libraries that dequantize a GGUF file into the reference (with torch and transformers)."""
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".json", ".jinja", ".model", ".txt", ".tiktoken", ".py")
"""Files of a model folder that can change an output: weights, configs (generation too), tokenizer, template, code."""
DATA_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken", ".log", ".csv", ".md")
"""What a cached model folder may hold: no pickles (.bin/.pt), no code (.py)."""
MANIFEST = "qxai-manifest.json"


def distribution_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``names`` (``missing`` when absent)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def value_versions() -> dict[str, str]:
    """Python and :data:`VALUE_DISTRIBUTIONS` versions: what every cached result's key holds."""
    return {"python": platform.python_version(), **distribution_versions(VALUE_DISTRIBUTIONS)}


SHARED_CODE = ("pytest_qxai.runtime",)
"""Modules every method reaches through the model pair rather than by import: part of every code hash."""


@functools.lru_cache(maxsize=None)
def code_hash(module: str) -> str:
    """A hash of ``module``'s source, of :data:`SHARED_CODE`, and of every module of the same package they
    import, transitively (found by parsing, never importing).

    Imports under ``if TYPE_CHECKING:`` are skipped (they run no code). A module without a source file
    (an interactive session) is keyed by its name only.
    """
    seen: dict[str, bytes] = {}
    pending = [module, *SHARED_CODE]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _module_file(name)
        seen[name] = path.read_bytes() if path else b""
        if path:
            pending += [m for m in _imports(name, path, seen[name])
                        if m.partition(".")[0] == name.partition(".")[0] and _module_file(m)]
    return full_hash({name: full_hash(source.decode("utf-8", "replace")) for name, source in seen.items()})[:16]


def _package_root(top: str) -> Path | None:
    """The folder of a top-level package (its spec only: a top-level package is imported already)."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)


def _module_file(module: str) -> Path | None:
    """The ``.py`` file of ``module`` found on disk without importing it, None when there is none."""
    top, _, rest = module.partition(".")
    root = _package_root(top)
    if root is None:
        return None
    if root.suffix == ".py":
        return root if not rest else None
    base = root.joinpath(*rest.split(".")) if rest else root
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str, path: Path, source: bytes) -> list[str]:
    """Modules imported by ``source`` (relative imports resolved; ``from pkg import mod`` counts mod)."""
    tree = ast.parse(source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If) and _is_type_checking(stmt.test)
               for body in stmt.body for node in ast.walk(body)}
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def folder_content_hash(folder: Path, cache_root: Path | None) -> str:
    """A sha256 over every file of a model folder that can change an output (:data:`MODEL_FILE_SUFFIXES`).

    Each file's hash is memoised by inode, size, mtime and ctime, and the memo is signed
    (:func:`pytest_qxai.storage.memo_file_hash`): a file replaced with one of the same size and mtime is re-hashed.
    """
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES and p.name != MANIFEST)
    return stable_hash([(p.name, memo_file_hash(p, cache_root)) for p in files])


# --- signed manifests of cached model folders --------------------------------------------------------------

def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, slot: str, cache_root: Path) -> str:
    """Sign the list of ``folder``'s files and hashes for cache slot ``slot``; '' or why it cannot be cached."""
    unsafe = [p.name for p in _files(folder) if p.suffix not in DATA_SUFFIXES]
    if unsafe:
        return f"it holds files that are not data-only ({', '.join(unsafe[:3])})"
    files = {str(p.relative_to(folder)): memo_file_hash(p, cache_root) for p in _files(folder)}
    write_signed_text(folder / MANIFEST, f"manifest {slot}", json.dumps(files, sort_keys=True))
    return ""


def manifest_problem(folder: Path, slot: str, cache_root: Path) -> str:
    """'' when ``folder`` holds exactly the files its signed manifest lists, with those hashes; else why not."""
    text = read_signed_text(folder / MANIFEST, f"manifest {slot}")
    if text is None:
        return "no valid signed manifest"
    listed: dict[str, str] = json.loads(text)
    present = {str(p.relative_to(folder)): p for p in _files(folder)}
    if set(present) != set(listed):
        return f"files differ from its manifest ({', '.join(sorted(set(present) ^ set(listed))[:3])})"
    changed = [name for name, path in present.items() if memo_file_hash(path, cache_root) != listed[name]]
    return f"{', '.join(changed[:3])} changed since it was written" if changed else ""


def reject_folder(folder: Path, why: str) -> None:
    """Warn in one line and remove a cached model folder that cannot be trusted (it is rebuilt)."""
    warnings.warn(CacheWarning(f"qxai cache: rejected {folder}: {why}; rebuilding it"), stacklevel=2)
    shutil.rmtree(folder, ignore_errors=True)


def slot_name(folder: Path, cache_root: Path) -> str:
    """A cached folder's place in the cache, which its manifest is bound to (symlinked cache folders keep theirs)."""
    return str(Path(os.path.abspath(folder)).relative_to(os.path.abspath(cache_root)))
