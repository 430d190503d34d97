"""Crash-safe file writes and a content-addressed on-disk cache shared by processes and xdist workers.

Every file the plugin writes (baselines, reports, cache entries) goes through :func:`atomic_write`:
a temporary file in the same folder, fsync, then ``os.replace``, so an interrupted run leaves the
previous file intact. Cache entries carry a checksum; a corrupt entry is detected and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from filelock import FileLock

T = TypeVar("T")

_MAGIC = b"QXAI1\n"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


def _file_mode(path: Path) -> int:
    """The permission bits ``path`` keeps on rewrite: its current ones, else what ``open()`` would give."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_UMASK


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    The file keeps its permission bits (a new one gets the umask's), not ``mkstemp``'s private 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold an inter-process lock tied to ``path`` (a sibling ``.lock`` file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def stable_hash(obj: Any) -> str:
    """A short hex digest of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class DiskCache:
    """Pickled results keyed by a stable hash of their inputs; disabled when ``root`` is None."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    def path_for(self, namespace: str, key: Any) -> Path | None:
        """Where the entry for ``key`` lives, or None when caching is off."""
        if self.root is None:
            return None
        return self.root / "results" / namespace / f"{stable_hash(key)}.pkl"

    def load(self, namespace: str, key: Any) -> tuple[bool, Any]:
        """Return ``(True, value)`` for a valid entry, ``(False, None)`` if absent or corrupt."""
        path = self.path_for(namespace, key)
        if path is None or not path.exists():
            return False, None
        try:
            blob = path.read_bytes()
            if not blob.startswith(_MAGIC):
                raise ValueError("bad header")
            digest, payload = blob[len(_MAGIC) : len(_MAGIC) + 64], blob[len(_MAGIC) + 64 :]
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                raise ValueError("checksum mismatch")
            return True, pickle.loads(payload)  # noqa: S301 - our own checksummed files only
        except Exception:
            # A torn or tampered entry is never trusted: drop it and recompute.
            with contextlib.suppress(OSError):
                path.unlink()
            return False, None

    def store(self, namespace: str, key: Any, value: Any) -> None:
        """Write an entry atomically (no-op when caching is off)."""
        path = self.path_for(namespace, key)
        if path is None:
            return
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        atomic_write(path, _MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload)

    def memo(self, namespace: str, key: Any, compute: Callable[[], T]) -> T:
        """Return the cached value for ``key`` or compute, store and return it (one writer at a time)."""
        found, value = self.load(namespace, key)
        if found:
            self.hits += 1
            return value  # type: ignore[no-any-return]
        path = self.path_for(namespace, key)
        if path is None:
            self.misses += 1
            return compute()
        with locked(path):
            found, value = self.load(namespace, key)  # another worker may have finished it meanwhile
            if found:
                self.hits += 1
                return value  # type: ignore[no-any-return]
            self.misses += 1
            value = compute()
            self.store(namespace, key, value)
            return value
