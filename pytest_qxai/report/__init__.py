"""Reports of a gate run: JSON for machines, Markdown for pull requests, HTML with plots for releases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..storage import atomic_write
from .json_report import build_report, json_text, load_json, results_of, write_json


def write_reports(report: dict[str, Any], *, json_path: Path | None = None, md_path: Path | None = None,
                  html_path: Path | None = None) -> list[Path]:
    """Write each requested report atomically and return the paths written.

    An :class:`OSError` (disk full, no permission) names the file in ``filename``; files written before it stay.
    """
    written = []
    for path, render in ((json_path, json_text), (md_path, _markdown_text), (html_path, _html_text)):
        if path is None:
            continue
        try:
            atomic_write(path, render(report).encode())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        written.append(path)
    return written


def _markdown_text(report: dict[str, Any]) -> str:
    from .markdown import render_markdown

    return render_markdown(report)


def _html_text(report: dict[str, Any]) -> str:
    from .html import render_html

    return render_html(report)


__all__ = ["build_report", "load_json", "results_of", "write_json", "write_reports"]
