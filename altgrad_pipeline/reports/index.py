"""`index.md` (and .html): links to every report, in the order given, with the build time and the
runs the reports were built from."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.reports.page import (
    ReportEntry,
    ReportResult,
    data_summary,
    header,
    link_target,
    write_report,
)


def write_index(
    entries: Sequence[ReportEntry],
    raw_runs: pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`index.md` linking every report in `entries` (any number, in the order given), with the
    build time and the runs the reports were built from."""
    reports_dir = Path(reports_dir)
    lines = header("altgrad analysis reports", "The FP8 quantization study, report by report.", built_at)
    if not entries:
        lines += ["No reports have been built yet.", ""]
    for entry in entries:
        target = link_target(Path(os.path.relpath(Path(entry.path).resolve(), reports_dir.resolve())).as_posix())
        lines.append(f"- [{escape_markdown(entry.title)}]({target}): {escape_markdown(entry.description)}")
    lines += ["", "## Data", "", data_summary(raw_runs, reports_dir, "index"), ""]
    return write_report(reports_dir, "index", "altgrad analysis reports", "All reports.", "\n".join(lines), (), None)
