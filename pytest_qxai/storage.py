"""Crash-safe file writes and a signed, data-only on-disk cache shared by processes and xdist workers.

Every file the plugin writes (baselines, reports, cache entries) goes through :func:`atomic_write`:
a temporary file in the same folder, fsync, then ``os.replace``, so an interrupted run leaves the
previous file intact. A cache entry is a safetensors file (arrays) whose JSON metadata holds the rest
of the value; it is signed with an HMAC over its namespace, its key and its bytes, with a secret kept
outside the cache folder (:func:`cache_secret`). An entry that is torn, forged, moved to another key or
signed with another secret is rejected with one warning and recomputed; nothing in it is ever executed
(see docs/security.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import os
import stat
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from filelock import FileLock, Timeout

T = TypeVar("T")

FORMAT = "qxai-cache/2"
_MAGIC = b"QXAI2\n"
_MAC_LEN = 64
SUFFIX = ".qxai"
LOCK_NOTICE_SECONDS = 30.0
"""How long a lock wait runs before each progress line (waits never time out: a holder that dies frees it)."""
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


class CacheWarning(UserWarning):
    """A cache entry was rejected or could not be written; the run goes on with a computed value."""


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
def locked(path: Path, what: str = "") -> Iterator[None]:
    """Hold an inter-process lock tied to ``path`` (a sibling ``.lock`` file), waiting as long as it takes.

    The lock is an OS file lock, so a holder that crashes releases it. While another process holds it
    (computing the same entry, quantizing the same model), a line on stderr says so every
    :data:`LOCK_NOTICE_SECONDS`; the wait itself has no timeout, since the holder's work may take long.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    started = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=LOCK_NOTICE_SECONDS)
            break
        except Timeout:
            waited = time.monotonic() - started
            print(f"qxai: waiting {waited:.0f} s for another process to finish {what or path.name} "
                  f"(lock {path}.lock; no time limit)", file=sys.__stderr__, flush=True)
    try:
        yield
    finally:
        lock.release()


def stable_hash(obj: Any) -> str:
    """A short hex digest of a JSON-serialisable object, independent of dict order."""
    return full_hash(obj)[:16]


def full_hash(obj: Any) -> str:
    """The sha256 hex digest of an object's canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_hash(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- the signing secret ------------------------------------------------------------------------------------

SECRET_ENV = "QXAI_CACHE_SECRET"


def secret_path() -> Path:
    """Where the per-user signing secret lives: ``$XDG_CONFIG_HOME/pytest-qxai/cache-secret`` (not the cache)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "pytest-qxai" / "cache-secret"


def cache_secret() -> bytes:
    """The HMAC secret: ``$QXAI_CACHE_SECRET`` (e.g. a CI secret shared by trusted jobs), else a private file.

    The file is created once with 32 random bytes and mode 0600.
    """
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode()
    path = secret_path()
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".cache-secret.", dir=path.parent)  # mkstemp: mode 0600
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(32).hex().encode())
    try:
        os.link(tmp, path)  # never replaces a secret another process created meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def sign(*parts: bytes) -> str:
    """HMAC-SHA256 of ``parts`` (length-prefixed, so part boundaries cannot shift) under :func:`cache_secret`."""
    mac = hmac.new(cache_secret(), digestmod=hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big") + part)
    return mac.hexdigest()


def verify(mac: str | bytes, *parts: bytes) -> bool:
    """Whether ``mac`` is :func:`sign` of ``parts`` (constant-time comparison)."""
    expected = sign(*parts).encode()
    return hmac.compare_digest(mac if isinstance(mac, bytes) else mac.encode(), expected)


def read_signed_text(path: Path, context: str) -> str | None:
    """The text of a small file written by :func:`write_signed_text` for ``context``; None if absent or forged."""
    try:
        text, _, mac = path.read_text().rpartition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    return text if verify(mac, context.encode(), text.encode()) else None


def write_signed_text(path: Path, context: str, text: str) -> None:
    """Store ``text`` signed for ``context`` (a memo); a failed write only warns."""
    try:
        atomic_write(path, f"{text}\n{sign(context.encode(), text.encode())}".encode())
    except OSError as exc:
        warnings.warn(CacheWarning(f"qxai cache: could not write {path}: {exc.strerror or exc}"), stacklevel=2)


def file_stamp(path: Path) -> list[Any]:
    """What identifies a file's current bytes without reading them: device, inode, size, mtime and ctime (ns).

    The ctime changes on every write and cannot be set back (``touch``, ``rsync -t`` set the mtime only).
    """
    info = path.stat()
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def memo_file_hash(path: Path, cache_root: Path | None) -> str:
    """:func:`file_hash`, memoised in ``cache_root/hashes`` under :func:`file_stamp` and signed."""
    if cache_root is None:
        return file_hash(path)
    context = full_hash(["file-hash", file_stamp(path)])
    memo = cache_root / "hashes" / f"{context[:32]}.txt"
    found = read_signed_text(memo, context)
    if found is not None:
        return found
    if memo.exists():
        warnings.warn(CacheWarning(f"qxai cache: rejected {memo}: signature does not match; re-hashing {path}"),
                      stacklevel=2)
    digest = file_hash(path)
    write_signed_text(memo, context, digest)
    return digest


# --- data-only values --------------------------------------------------------------------------------------

_TYPES: dict[str, type] = {}


def cache_type(cls: type[T]) -> type[T]:
    """Allow a dataclass of plain fields in cache entries (decoded by calling its constructor, nothing else)."""
    assert dataclasses.is_dataclass(cls)
    _TYPES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


class _Encoder:
    """Turns a value into JSON plus a dict of numpy arrays (for safetensors)."""

    def __init__(self) -> None:
        self.arrays: dict[str, Any] = {}

    def encode(self, value: Any) -> Any:
        import numpy as np

        if value is None or isinstance(value, (bool, str)) or type(value) is int:
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"$f": repr(value)}
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "U":
                return {"$u": value.tolist(), "shape": list(value.shape)}
            name = str(len(self.arrays))
            self.arrays[name] = np.ascontiguousarray(value)
            return {"$a": name, "shape": list(value.shape)}  # safetensors stores a 0-d array as shape [1]
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return {"$s": [value.dtype.str, self.encode(value.item())]}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {"$t": [self.encode(v) for v in value]}
        if isinstance(value, dict):
            return {"$d": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        if _TYPES.get(name) is type(value):
            return {"$c": name, "f": {f.name: self.encode(getattr(value, f.name))
                                      for f in dataclasses.fields(value)}}  # type: ignore[arg-type]
        raise TypeError(f"a cache entry cannot hold {name}")


def _decode(node: Any, arrays: dict[str, Any]) -> Any:
    """The inverse of :class:`_Encoder` for data from a verified entry; unknown tags are an error."""
    import numpy as np

    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    (tag, body), *rest = node.items()
    if tag == "$a":
        return arrays[body].reshape(node["shape"])
    if tag == "$f":
        return float(body)  # "nan", "inf", "-inf" only: float() parses numbers, never code
    if tag == "$u":
        return np.array(body, dtype=str).reshape(node["shape"])
    if tag == "$s" and np.dtype(body[0]).kind in "biuf":
        return np.dtype(body[0]).type(_decode(body[1], arrays))
    if tag == "$t":
        return tuple(_decode(v, arrays) for v in body)
    if tag == "$d":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in body}
    if tag == "$c" and body in _TYPES:
        return _TYPES[body](**{k: _decode(v, arrays) for k, v in node["f"].items()})
    raise ValueError(f"unknown entry tag {tag!r}")


def encode_entry(value: Any, label: str = "") -> bytes:
    """A value as safetensors bytes: arrays as tensors, the rest as JSON in the header's metadata.

    ``label`` (which model side computed it) is only shown by ``qxai cache info``.
    """
    from safetensors.numpy import save

    encoder = _Encoder()
    tree = json.dumps(encoder.encode(value), allow_nan=False, separators=(",", ":"))
    return save(encoder.arrays, metadata={"format": FORMAT, "value": tree, "label": label})


def decode_entry(blob: bytes) -> Any:
    """The value of :func:`encode_entry` bytes (safetensors and JSON parsing only)."""
    from safetensors.numpy import load

    meta = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")]).get("__metadata__", {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
    return _decode(json.loads(meta["value"]), load(blob))


# --- the cache ---------------------------------------------------------------------------------------------

class DiskCache:
    """Signed data-only results keyed by a hash of their inputs; disabled when ``root`` is None.

    ``activity`` lists what this process reused and computed (``"<namespace> <label>"``), for the report.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0
        self.activity: dict[str, list[str]] = {"reused": [], "computed": [], "rejected": []}

    def path_for(self, namespace: str, key: Any) -> Path | None:
        """Where the entry for ``key`` lives, or None when caching is off."""
        if self.root is None:
            return None
        return self.root / "results" / namespace / f"{full_hash(key)[:32]}{SUFFIX}"

    def load(self, namespace: str, key: Any) -> tuple[bool, Any]:
        """Return ``(True, value)`` for a valid entry, ``(False, None)`` if absent or rejected (with a warning)."""
        path = self.path_for(namespace, key)
        if path is None:
            return False, None
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return False, None
        except OSError as exc:
            return self._reject(path, f"unreadable ({exc.strerror or exc})")
        mac, payload = blob[len(_MAGIC) : len(_MAGIC) + _MAC_LEN], blob[len(_MAGIC) + _MAC_LEN :]
        if not blob.startswith(_MAGIC) or len(mac) != _MAC_LEN:
            return self._reject(path, "not a pytest-qxai cache entry of this version")
        try:
            genuine = verify(mac, namespace.encode(), full_hash(key).encode(), payload)
        except OSError as exc:  # no secret can be read or created: the entry cannot be trusted, but is kept
            warnings.warn(CacheWarning(f"qxai cache: cannot read the signing secret ({exc}); not using {path}"),
                          stacklevel=2)
            return False, None
        if not genuine:
            return self._reject(path, "signature does not match (forged, torn, moved, or signed with another secret)")
        try:
            value = decode_entry(payload)
        except Exception as exc:  # noqa: BLE001 - a signed entry this version cannot read: recompute
            return self._reject(path, f"unreadable content ({type(exc).__name__}: {exc})")
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for `qxai cache prune` (atime is often not kept)
        return True, value

    def _reject(self, path: Path, why: str) -> tuple[bool, None]:
        """Warn in one line, drop the entry (when allowed) and report a miss."""
        warnings.warn(CacheWarning(f"qxai cache: rejected {path}: {why}; recomputing"), stacklevel=3)
        self.activity["rejected"].append(str(path))
        with contextlib.suppress(OSError):
            path.unlink()
        return False, None

    def store(self, namespace: str, key: Any, value: Any, label: str = "") -> None:
        """Write an entry atomically; a failure (disk full, read-only, unsupported type) only warns."""
        path = self.path_for(namespace, key)
        if path is None:
            return
        try:
            payload = encode_entry(value, label)
            mac = sign(namespace.encode(), full_hash(key).encode(), payload).encode()
            atomic_write(path, _MAGIC + mac + payload)
        except (OSError, TypeError, ValueError) as exc:
            self._unstored(namespace, path, exc)

    @staticmethod
    def _unstored(namespace: str, path: Path, exc: Exception) -> None:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        warnings.warn(CacheWarning(f"qxai cache: could not store {namespace} in {path.parent}: {detail}; "
                                   "the run goes on with the computed value"), stacklevel=4)

    def memo(self, namespace: str, key: Any, compute: Callable[[], T], label: str = "") -> T:
        """Return the cached value for ``key`` or compute, store and return it (one writer at a time)."""
        what = f"{namespace} {label}".strip()
        found, value = self.load(namespace, key)
        if found:
            return self._hit(what, value)
        path = self.path_for(namespace, key)
        self.misses += 1
        if path is None:
            return compute()
        guard = contextlib.ExitStack()
        try:
            guard.enter_context(locked(path, what))
        except OSError as exc:  # e.g. a read-only cache: compute without storing
            self._unstored(namespace, path, exc)
            self.activity["computed"].append(what)
            return compute()
        with guard:
            found, value = self.load(namespace, key)  # another worker may have finished it meanwhile
            if found:
                self.misses -= 1
                return self._hit(what, value)
            self.activity["computed"].append(what)
            value = compute()
            self.store(namespace, key, value, label)
            return value

    def _hit(self, what: str, value: Any) -> Any:
        self.hits += 1
        self.activity["reused"].append(what)
        return value
