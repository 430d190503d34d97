"""Housekeeping of the on-disk cache: staging left by killed runs, what the cache holds, and its size bound.

Layout: ``results/<namespace>/<key>.qxai`` (computed values), ``models/`` (converted GGUF models),
``quantized/<spec>-<key>/`` (quantized checkpoints), ``hashes/`` (signed file-hash memos). Every entry's
mtime is its last use. Nothing is removed while another process holds its lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .errors import QxaiUsageError

DEFAULT_MAX_SIZE = 20 * 1024**3
"""The cache's size bound unless ``$QXAI_CACHE_MAX_SIZE`` says otherwise (least recently used entries go first)."""
MAX_SIZE_ENV = "QXAI_CACHE_MAX_SIZE"
STAGING_MIN_AGE = 60.0
"""Seconds before an unlocked staging file counts as left behind (a memo is written in milliseconds)."""
_STAGING = re.compile(r"^\.(?P<name>.+?)\.[A-Za-z0-9_]{6,}(\.tmp)?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


@dataclass
class Entry:
    """One removable unit of the cache."""

    path: Path
    lock: Path
    area: str
    label: str
    size: int
    last_use: float


def parse_size(text: str) -> int:
    """``"20G"``, ``"500M"``, ``"1.5T"``, ``"0"`` (no bound) → bytes (powers of 1024); usage error otherwise."""
    found = _SIZE.match(text)
    if found is None:
        raise QxaiUsageError(f"cache size {text!r}: write a number with an optional K, M, G or T, e.g. 20G")
    return int(float(found[1]) * 1024 ** " KMGT".index(found[2].upper() or " "))


def max_size() -> int:
    """The configured size bound in bytes (0: none)."""
    value = os.environ.get(MAX_SIZE_ENV)
    return DEFAULT_MAX_SIZE if not value else parse_size(value)


@contextlib.contextmanager
def _unlocked(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` if nobody does (yield True), else yield False at once."""
    guard = FileLock(str(lock), timeout=0)
    try:
        guard.acquire()
    except (Timeout, OSError):
        yield False
        return
    try:
        yield True
    finally:
        guard.release()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def clean_staging(root: Path) -> list[Path]:
    """Remove staging folders and temporary files that killed runs left (their writer's lock is free)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for path in list(root.rglob(".*")):  # listed first: removing a folder must not disturb the walk
        found = _STAGING.match(path.name)
        if found is None or path.name.endswith(".lock"):
            continue
        with contextlib.suppress(OSError):
            if now - path.lstat().st_mtime < STAGING_MIN_AGE:
                continue
            with _unlocked(path.parent / f"{found['name']}.lock") as free:
                if free:
                    _remove(path)
                    removed.append(path)
    return removed


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _label(entry: Path) -> str:
    """The model side a results entry belongs to, read from its safetensors header (display only, unverified)."""
    try:
        with open(entry, "rb") as handle:
            handle.seek(6 + 64)
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(min(size, 1 << 20)))
        return str(header.get("__metadata__", {}).get("label", "?"))
    except (OSError, ValueError):
        return "?"


def entries(root: Path) -> list[Entry]:
    """Every removable entry of the cache at ``root``."""
    found: list[Entry] = []
    for path in sorted((root / "results").rglob("*.qxai")):
        found.append(Entry(path, Path(f"{path}.lock"), "results", _label(path), _size(path), path.stat().st_mtime))
    for path in sorted((root / "models").glob("[!.]*")):
        if path.is_dir():
            found.append(Entry(path, Path(f"{path}.lock"), "models", path.name, _size(path), path.stat().st_mtime))
    for path in sorted((root / "quantized").glob("[!.]*")):
        if path.is_dir():
            found.append(Entry(path, path / "checkpoint.lock", "quantized", path.name, _size(path),
                               path.stat().st_mtime))
    return found


def prune(root: Path, *, max_bytes: int, older_than: float | None = None,
          keep_since: float | None = None) -> list[Entry]:
    """Remove entries unused for ``older_than`` seconds, then least recently used ones until under ``max_bytes``.

    Entries used at or after ``keep_since`` (this run's) and entries another process holds are kept.
    ``max_bytes`` 0 means no size bound.
    """
    now = time.time()
    found = sorted(entries(root), key=lambda e: e.last_use)
    total = sum(e.size for e in found) + (_size(root / "hashes") if (root / "hashes").is_dir() else 0)
    removed: list[Entry] = []
    for entry in found:
        stale = older_than is not None and now - entry.last_use > older_than
        if not stale and not (max_bytes and total > max_bytes):
            continue
        if keep_since is not None and entry.last_use >= keep_since:
            continue
        with _unlocked(entry.lock) as free:
            if free:
                _remove(entry.path)
                removed.append(entry)
                total -= entry.size
    return removed


def info_lines(root: Path) -> list[str]:
    """What ``qxai cache info`` prints: totals per area and per model side, sizes and ages."""
    found = entries(root)
    now = time.time()
    lines = [f"cache {root}: {human(sum(e.size for e in found))} in {len(found)} entries "
             f"(bound {human(max_size()) if max_size() else 'none'}, ${MAX_SIZE_ENV})"]
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in found:
        groups.setdefault((entry.area, entry.label), []).append(entry)
    for (area, label), group in sorted(groups.items()):
        newest = max(e.last_use for e in group)
        oldest = min(e.last_use for e in group)
        lines.append(f"  {area:<9} {label}: {len(group)} entries, {human(sum(e.size for e in group))}, "
                     f"last used {_age(now - newest)} ago, oldest {_age(now - oldest)} ago")
    return lines


def human(size: float) -> str:
    """Bytes in the largest unit that keeps the number at or above 1 (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"
