"""The report page kit every report module builds on: Markdown building blocks (tables, run
links, images, headers, per-project sections), the Markdown-to-HTML copy, and `write_report`.

Each report module (`format_comparison`, `failure_modes`, `manifold_comparison`,
`training_dynamics`, `sweep_summary`, `media`, `index`) has a `write_*` function that takes the
analysis frames and a reports directory, writes `<reports_dir>/<name>.md`, `<reports_dir>/<name>.html`
and its figures under `<reports_dir>/figures/`, and returns a `ReportResult` (paths for the Dagster
UI). Every number in the text and tables is taken from the input frames and printed with
`format_cell`; every run name, tag, project and failure-report string is escaped; file names come
from fixed stems, format names and `safe_filename`, never from run names. An empty input gives a
sentence saying that there are no runs of that kind yet, never a stand-in text.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from markdown_it import MarkdownIt
from markdown_it.token import Token

from altgrad_pipeline import atomic
from altgrad_pipeline.escaping import escape_csv_text, escape_html, escape_markdown, safe_filename
from altgrad_pipeline.markdown import format_cell, markdown_table
from altgrad_pipeline.reports.style import VECTOR_FORMAT, checked_format_name, ordered_formats
from altgrad_pipeline.study import is_safe_format_name

FIGURES_DIR = "figures"
#: Every report table's CSV twin sits here, `<report>_<stem>[_<project>][_<part>...].csv`.
TABLES_DIR = "tables"

#: Readable from a phone to a wide screen, and on paper: the page never scrolls sideways (a table as
#: wide as its content scrolls inside its own box, long text wraps, figures shrink to the column),
#: and printing drops the navigation, fits tables to the page and keeps rows, figures and headings together.
HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #222;
       overflow-wrap: anywhere; }
nav.back { margin-bottom: 1rem; font-size: 0.9rem; }
.table-scroll { overflow-x: auto; margin: 1rem 0; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.9rem; width: max-content; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; overflow-wrap: normal; max-width: 30rem; }
td a { white-space: nowrap; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 0.2rem; }
@media (max-width: 50rem) { body { margin: 1rem auto; } table { font-size: 0.8rem; } }
@media print {
  body { max-width: none; margin: 0; padding: 0; font-size: 10pt; }
  nav.back { display: none; }
  .table-scroll { overflow: visible; }
  table { font-size: 7pt; width: 100%; table-layout: fixed; }
  th, td { max-width: none; padding: 0.1rem 0.2rem; overflow-wrap: anywhere; }
  td a { white-space: normal; }
  thead { display: table-header-group; }
  tr, img { break-inside: avoid; }
  h1, h2, h3 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


@dataclass(frozen=True)
class ReportEntry:
    """One line of the index: a report's title, its Markdown file and what it answers."""

    title: str
    path: Path
    description: str


@dataclass(frozen=True)
class ReportResult:
    """What a report function wrote: the Markdown and HTML files and the figures (the main one
    is the figure to show in the Dagster UI; None when the report has no figure)."""

    entry: ReportEntry
    html_path: Path
    figure_paths: tuple[Path, ...] = field(default_factory=tuple)
    main_figure: Path | None = None

    @property
    def path(self) -> Path:
        return self.entry.path


# ---------------------------------------------------------------- Markdown building blocks


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table whose cells are already Markdown (escaped text, links); headers escaped."""
    lines = ["| " + " | ".join(escape_markdown(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def link_target(target: str) -> str:
    """A link destination with every character Markdown could read as syntax percent-encoded."""
    return urllib.parse.quote(target, safe=":/?#&=%@+,;~!$*'")


def run_link(run: dict, report_dir: Path) -> str:
    """Markdown for a run: its escaped name linked to its W&B page (API runs), or to its local
    directory (relative from the report when both sit under a common root below the filesystem
    root), else the escaped name with the absolute path as text."""
    text = escape_markdown(run.get("name") or run.get("run_id"))
    url = run.get("url")
    if url and urllib.parse.urlparse(url).scheme in ("http", "https"):
        return f"[{text}]({link_target(url)})"
    location = run.get("location")
    if not location:
        return text
    path = Path(location)
    report_dir = Path(report_dir).resolve()
    if path.is_absolute() and os.path.commonpath([path, report_dir]) != path.anchor:
        return f"[{text}]({link_target(Path(os.path.relpath(path, report_dir)).as_posix())})"
    return f"{text} ({escape_markdown(location)})"


def run_lookup(raw_runs: pl.DataFrame) -> dict[str, dict]:
    columns = [c for c in ("run_id", "name", "url", "location") if c in raw_runs.columns]
    return {row["run_id"]: row for row in raw_runs.select(columns).iter_rows(named=True)}


def image(figure: Path, reports_dir: Path, alt: str) -> str:
    return f"![{escape_markdown(alt)}]({link_target(figure.relative_to(reports_dir).as_posix())})"


def figure_block(figure: Path, reports_dir: Path, alt: str) -> str:
    """The PNG inline and a link to its vector twin (`style.save_figure` writes both), so a figure
    can go into a paper without a screenshot."""
    vector = figure.with_suffix(f".{VECTOR_FORMAT}")
    return f"{image(figure, reports_dir, alt)}\n\nVector copy: [{escape_markdown(vector.name)}]({link_target(vector.relative_to(reports_dir).as_posix())})"


def table_path(reports_dir: Path, report: str, stem: str, *, project: str | None = None, parts: Sequence[str] = ()) -> Path:
    """`<reports_dir>/tables/<report>_<stem>[_<project>][_<part>...].csv`: report and stem are fixed
    by the caller, the project (free text) goes through `safe_filename`, and each other part (a
    format, optimizer or layer type) is kept when it is a safe name, else cleaned and hashed. Run
    names never reach a file name."""
    names = [checked_format_name(report), checked_format_name(stem)]
    if project is not None:
        names.append(safe_filename(project))
    names += [part if is_safe_format_name(part) else safe_filename(part) for part in parts]
    return Path(reports_dir) / TABLES_DIR / ("_".join(names) + ".csv")


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """Cells a CSV can hold: lists joined with "; ", structs as JSON, and text guarded so a
    spreadsheet never reads a run name as a formula."""
    columns = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if isinstance(dtype, pl.List | pl.Array):
            inner = dtype.inner
            column = column.list.eval(pl.element().struct.json_encode() if isinstance(inner, pl.Struct) else pl.element().cast(pl.String)).list.join("; ")
        elif isinstance(dtype, pl.Struct):
            column = column.struct.json_encode()
        if isinstance(dtype, pl.String | pl.List | pl.Array | pl.Struct | pl.Categorical | pl.Enum):
            column = column.cast(pl.String).map_elements(escape_csv_text, return_dtype=pl.String)
        columns.append(column.alias(name))
    return frame.select(columns)


def data_table(
    frame: pl.DataFrame,
    reports_dir: Path,
    report: str,
    stem: str,
    *,
    project: str | None = None,
    parts: Sequence[str] = (),
    markdown: str | None = None,
) -> str:
    """A report table and its CSV twin: writes `frame` (raw values, every row) to `table_path`
    and returns the Markdown table (`markdown` when the caller rendered cells itself, e.g. run
    links; else `frame` escaped) followed by the link to the CSV."""
    path = table_path(reports_dir, report, stem, project=project, parts=parts)
    with atomic.atomic_path(path) as tmp:  # parents created; whole or not at all
        _csv_ready(frame).write_csv(tmp)
    rendered = markdown if markdown is not None else markdown_table(frame)
    return f"{rendered}\n\nTable as CSV: [{escape_markdown(path.name)}]({link_target(path.relative_to(reports_dir).as_posix())})"


def projects(frame: pl.DataFrame) -> list[str | None]:
    """The projects in a frame, sorted (a frame without a project column is one study)."""
    if "project" not in frame.columns:
        return [None]
    return sorted(frame["project"].unique().to_list(), key=lambda p: (p is None, p or ""))


def in_project(frame: pl.DataFrame, project: str | None) -> pl.DataFrame:
    if "project" not in frame.columns:
        return frame
    return frame.filter(pl.col("project").is_null() if project is None else pl.col("project") == project)


def project_heading(project: str | None) -> str:
    return f"## Project {escape_markdown(project)}" if project is not None else "## All runs"


def format_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows in the report order of formats (baseline first, then study order)."""
    order = ordered_formats(frame["fp8_format"].unique())
    return frame.with_columns(pl.col("fp8_format").replace_strict(order, list(range(len(order))), return_dtype=pl.Int64).alias("_order")).sort(
        "_order", maintain_order=True
    ).drop("_order")


def data_summary(raw_runs: pl.DataFrame, reports_dir: Path | None = None, report: str | None = None) -> str:
    """How many runs the reports were built from, by format and state, and the newest update; the
    counts table gets its CSV twin when `reports_dir` and `report` are given."""
    if raw_runs.is_empty():
        return "No runs have been ingested yet."
    counts = (
        raw_runs.group_by("fp8_format", "state")
        .len("n_runs")
        .pivot(on="state", index="fp8_format", values="n_runs", sort_columns=True)
        .fill_null(0)
    )
    states = [c for c in counts.columns if c != "fp8_format"]
    counts = format_order(counts.with_columns(pl.sum_horizontal(states).alias("total")))
    newest = raw_runs["updated_at"].max() if "updated_at" in raw_runs.columns else None
    newest_text = f"newest run update {format_cell(newest)} UTC" if newest is not None else "no run reports an update time"
    counts_table = data_table(counts, reports_dir, report, "runs_per_format") if reports_dir is not None and report is not None else markdown_table(counts)
    return f"Built from {format_cell(raw_runs.height)} runs ({newest_text}). Runs per format and tracker state:\n\n{counts_table}"


# ---------------------------------------------------------------- HTML


def _scroll_boxes(tokens: list[Token]) -> list[Token]:
    """Each table inside a `.table-scroll` box, so a wide table scrolls instead of the page."""
    boxed: list[Token] = []
    for token in tokens:
        if token.type == "table_open":
            boxed.append(Token("html_block", "", 0, content='<div class="table-scroll">\n'))
        boxed.append(token)
        if token.type == "table_close":
            boxed.append(Token("html_block", "", 0, content="</div>\n"))
    return boxed


def markdown_to_html(markdown: str, *, title: str, base_dir: Path, index: str | None = "index.html") -> str:
    """A self-contained HTML page from report Markdown: raw HTML in the Markdown is not
    interpreted (html=False, so escaped names stay text), images under `base_dir` are embedded as
    base64 PNG data URIs, links to sibling `.md` reports point at their `.html` copies, and the page
    links back to `index` (None: the page is the index)."""
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = _scroll_boxes(renderer.parse(markdown))
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                source = base_dir / urllib.parse.unquote(str(child.attrGet("src")))
                child.attrSet("src", "data:image/png;base64," + base64.b64encode(source.read_bytes()).decode("ascii"))
            elif child.type == "link_open":
                href = str(child.attrGet("href"))
                if not urllib.parse.urlparse(href).scheme and href.endswith(".md"):
                    child.attrSet("href", href[: -len(".md")] + ".html")
    body = renderer.renderer.render(tokens, renderer.options, {})
    back = f'<nav class="back"><a href="{escape_html(index)}">← All reports</a></nav>\n' if index else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape_html(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n{back}{body}</body>\n</html>\n"
    )


def write_report(reports_dir: Path, name: str, title: str, description: str, markdown: str, figures: Sequence[Path], main: Path | None) -> ReportResult:
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"{name}.md"
    atomic.write_text(path, markdown)  # a kill or a full disk never leaves half a report
    html_path = reports_dir / f"{name}.html"
    index = None if name == "index" else "index.html"
    atomic.write_text(html_path, markdown_to_html(markdown, title=title, base_dir=reports_dir, index=index))
    return ReportResult(ReportEntry(title, path, description), html_path, tuple(figures), main)


def header(title: str, question: str, built_at: dt.datetime | None) -> list[str]:
    built = built_at or dt.datetime.now(dt.UTC)
    if built.tzinfo is not None:
        built = built.astimezone(dt.UTC).replace(tzinfo=None)
    return [f"# {title}", "", question, "", f"Built {format_cell(built)} UTC.", ""]
