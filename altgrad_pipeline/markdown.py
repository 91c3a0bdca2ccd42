"""Markdown tables from Polars frames, with every cell escaped (run names are untrusted text).
Used by report files and by the Markdown previews in Dagster metadata alike."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl

from altgrad_pipeline.escaping import escape_markdown


def format_cell(value: object, *, digits: int = 4) -> str:
    """Numbers with `digits` significant digits; NaN/inf spelled out; missing as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+inf" if value > 0 else "−inf"
        return f"{value:.{digits}g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return escape_markdown(", ".join(str(v) for v in value))
    return escape_markdown(value)


def markdown_table(frame: pl.DataFrame, *, digits: int = 4, max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table; every cell escaped, so no name can break the layout."""
    shown = frame if max_rows is None else frame.head(max_rows)
    header = "| " + " | ".join(escape_markdown(c) for c in shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    rows = ["| " + " | ".join(format_cell(v, digits=digits) for v in row) + " |" for row in shown.iter_rows()]
    more = [f"\n*… {frame.height - shown.height} more rows*"] if shown.height < frame.height else []
    return "\n".join([header, rule, *rows, *more])
