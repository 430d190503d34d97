"""Reports of a gate run: JSON for machines, Markdown for pull requests, HTML with plots for releases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..storage import atomic_write
from .json_report import build_report, load_json, results_of, write_json


def write_reports(report: dict[str, Any], *, json_path: Path | None = None, md_path: Path | None = None,
                  html_path: Path | None = None) -> list[Path]:
    """Write each requested report atomically and return the paths written."""
    written = []
    if json_path is not None:
        write_json(json_path, report)
        written.append(json_path)
    if md_path is not None:
        from .markdown import render_markdown

        atomic_write(md_path, render_markdown(report).encode())
        written.append(md_path)
    if html_path is not None:
        from .html import render_html

        atomic_write(html_path, render_html(report).encode())
        written.append(html_path)
    return written


__all__ = ["build_report", "load_json", "results_of", "write_json", "write_reports"]
