"""Progress bars for long suite computations, shown on the terminal past pytest's output capture.

The plugin configures one :class:`ProgressSink` per process: enabled on an interactive terminal,
quiet under ``-q``, in CI logs (``$CI``), on xdist workers, and when stderr is not a TTY. Suites wrap
their work in :func:`track` and call ``advance`` as items finish; tqdm draws items done, rate and the
time left.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator


@dataclass
class ProgressSink:
    """Where bars go: ``suspend`` lifts pytest's capture while a bar is drawn."""

    enabled: bool = False
    suspend: Callable[[], ContextManager[Any]] = contextlib.nullcontext
    scope: str = ""
    """What is running now (the suite module), prefixed to every bar's description."""


_SINK = ProgressSink()


def configure(enabled: bool, suspend: Callable[[], ContextManager[Any]] | None = None) -> None:
    """Set this process's sink (called by the plugin at configure time)."""
    from .config import is_ci

    _SINK.enabled = enabled and not is_ci() and sys.stderr.isatty()
    _SINK.suspend = suspend or contextlib.nullcontext


def set_scope(name: str) -> None:
    """Name the work that follows (the plugin sets the suite module before each test's setup)."""
    _SINK.scope = name


class Bar:
    """One suite's bar; a no-op when progress is off."""

    def __init__(self, description: str, total: int) -> None:
        self._bar: Any = None
        if _SINK.enabled and total > 0:
            from tqdm import tqdm

            with _SINK.suspend():
                desc = f"{_SINK.scope} {description}".strip()
                self._bar = tqdm(total=total, desc=desc, unit="item", leave=False, file=sys.stderr)

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` more items done."""
        if self._bar is not None:
            with _SINK.suspend():
                self._bar.update(n)

    def close(self) -> None:
        """Remove the bar from the terminal."""
        if self._bar is not None:
            with _SINK.suspend():
                self._bar.close()
            self._bar = None


@contextlib.contextmanager
def track(description: str, total: int) -> Iterator[Bar]:
    """A progress bar for ``total`` items of work named ``description``."""
    bar = Bar(description, total)
    try:
        yield bar
    finally:
        bar.close()
