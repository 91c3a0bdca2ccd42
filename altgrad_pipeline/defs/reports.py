"""Report assets: Markdown + HTML files under `<data dir>/reports/`, figures in `reports/figures/`.

Each report asset's value is a one-row manifest (title, files, figures) stored like any table, so
the index is built from its inputs rather than from a directory listing; the Dagster UI shows the
report's path and its main figure inline.

Adding a report is one asset here, decorated with `@report_asset`: the decorator registers it in
`REPORT_ASSETS`, and `reports_index` (defined last) takes every registered report as an input, in
the order they are defined. The report's text and figures live in their own `reports/<name>.py`.
"""


import base64
import io
from pathlib import Path

import dagster as dg
import polars as pl
from PIL import Image

from altgrad_pipeline.analysis import columns, manifold
from altgrad_pipeline.analysis.attention import AttentionShape
from altgrad_pipeline.defs.automation import analysis_automation_condition
from altgrad_pipeline.defs.resources import ReportFiles
from altgrad_pipeline.defs.ui import table_schema
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.reports import failure_modes as failure_modes_doc
from altgrad_pipeline.reports import format_comparison, index, manifold_comparison, media
from altgrad_pipeline.reports import sweep_summary as sweep_summary_doc
from altgrad_pipeline.reports import training_dynamics as training_dynamics_doc
from altgrad_pipeline.reports.page import ReportEntry, ReportResult, link_target
from altgrad_pipeline.reports.style import PNG_COMPRESS_LEVEL

REPORTS_GROUP = "reports"
THUMBNAIL_SCALE = 0.45

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "title": pl.String(),
    "path": pl.String(),
    "html_path": pl.String(),
    "description": pl.String(),
    "figures": pl.List(pl.String()),
}


def _manifest(result: ReportResult) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "title": result.entry.title,
                "path": str(result.entry.path),
                "html_path": str(result.html_path),
                "description": result.entry.description,
                "figures": [str(p) for p in result.figure_paths],
            }
        ],
        schema=MANIFEST_SCHEMA,
    )


def _thumbnail_markdown(figure: Path | None) -> dg.MetadataValue:
    """The main figure, scaled down and inlined, so the asset page shows it without the file. Encoded
    at the figures' zlib level: PIL's `optimize` took twice the CPU for bigger files."""
    if figure is None or not figure.exists():
        return dg.MetadataValue.md("No figure: this report has no runs to draw yet.")
    buffer = io.BytesIO()
    with Image.open(figure) as picture:
        picture.thumbnail((int(picture.width * THUMBNAIL_SCALE), int(picture.height * THUMBNAIL_SCALE)))
        picture.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{figure.stem}](data:image/png;base64,{encoded})")


#: Every report asset, in definition order; `reports_index` links them all.
REPORT_ASSETS: list[dg.AssetsDefinition] = []


def _report_spec(description: str, kinds: tuple[str, ...], **kwargs: object):
    """The shape every report asset shares: the reports group, refreshed after the analysis by
    automation, its one-row manifest's column schema in the UI."""
    return dg.asset(
        group_name=REPORTS_GROUP,
        description=description,
        automation_condition=analysis_automation_condition(),
        metadata={"dagster/column_schema": table_schema(MANIFEST_SCHEMA, columns.REPORT_MANIFEST)},
        kinds=set(kinds),
        **kwargs,
    )


def report_asset(description: str, *, kinds: tuple[str, ...] = ("markdown", "matplotlib")):
    """A report asset, registered for the index."""

    def register(function):
        asset = _report_spec(description, kinds)(function)
        REPORT_ASSETS.append(asset)
        return asset

    return register


def _links(result: ReportResult, report_files: ReportFiles) -> dict[str, dg.MetadataValue]:
    """The report's files as URLs: the UI shows a URL as a link, a path only as text to copy."""
    return {
        "html_path": dg.MetadataValue.url(report_files.location(result.html_path)),
        "report_path": dg.MetadataValue.url(report_files.location(result.entry.path)),
    }


def report_result(result: ReportResult, report_files: ReportFiles) -> dg.MaterializeResult:
    """The manifest as the asset's value; links to the report's HTML and Markdown, figure count
    and main figure for the UI."""
    return dg.MaterializeResult(
        value=_manifest(result),
        metadata={
            **_links(result, report_files),
            "n_figures": len(result.figure_paths),
            "main_figure": _thumbnail_markdown(result.main_figure),
        },
    )


@report_asset(
    "ANAL-01 report `format_comparison.md`: AdamW rankings first and ManifoldAdamW beside them, final loss with "
    "intervals, the sweet spot's lead, per-layer criteria with spread, bit-stall ranking, loss curves, every run, conclusions."
)
def format_comparison_report(
    format_rankings: pl.DataFrame,
    raw_runs: pl.DataFrame,
    learning_curves: pl.LazyFrame,
    run_outcomes: pl.DataFrame,
    failure_modes: pl.DataFrame,
    report_files: ReportFiles,
) -> dg.MaterializeResult:
    return report_result(
        format_comparison.write_format_comparison_report(
            format_rankings, raw_runs, learning_curves, run_outcomes, failure_modes, report_files.reports_dir
        ),
        report_files,
    )


@report_asset(
    "ANAL-02 report `failure_modes.md`: runs without an exit record, every failed run with mode, step, stage, "
    "evidence and prevention; per failing format the traces up to each collapse; conclusions."
)
def failure_modes_report(
    failure_modes: pl.DataFrame,
    raw_runs: pl.DataFrame,
    learning_curves: pl.LazyFrame,
    layer_metrics: pl.LazyFrame,
    report_files: ReportFiles,
) -> dg.MaterializeResult:
    return report_result(
        failure_modes_doc.write_failure_modes_report(failure_modes, raw_runs, learning_curves, layer_metrics, report_files.reports_dir),
        report_files,
    )


@report_asset(
    "ANAL-03 report `manifold_comparison.md`: verdict per format, ManifoldAdamW − AdamW per metric with CI, "
    "percent and observed counts, effect on failure, formats lacking an arm, paired-seed plot, conclusions."
)
def manifold_comparison_report(
    manifold_stats: pl.DataFrame,
    raw_runs: pl.DataFrame,
    learning_curves: pl.LazyFrame,
    run_outcomes: pl.DataFrame,
    run_summaries: pl.LazyFrame,
    report_files: ReportFiles,
) -> dg.MaterializeResult:
    per_run = manifold.per_run_metrics(raw_runs, learning_curves, run_outcomes, run_summaries)
    return report_result(
        manifold_comparison.write_manifold_comparison_report(manifold_stats, per_run, raw_runs, report_files.reports_dir),
        report_files,
    )


@report_asset(
    "Report `training_dynamics.md`: selected learning-curve model per run and metric with parameters, "
    "knee, plateau, residual spectrum, and fits drawn over the data with residuals."
)
def training_dynamics_report(
    training_dynamics: pl.DataFrame, raw_runs: pl.DataFrame, learning_curves: pl.LazyFrame, report_files: ReportFiles
) -> dg.MaterializeResult:
    return report_result(
        training_dynamics_doc.write_training_dynamics_report(training_dynamics, raw_runs, learning_curves, report_files.reports_dir),
        report_files,
    )


@report_asset(
    "Report `sweep_summary.md`: varying hyperparameters per project, final metrics per setting with "
    "n, completeness and 95% CIs (t below 8 values, the bootstrap from 8), grouped curves with CI bands."
)
def sweep_summary_report(
    sweep_summary: pl.DataFrame, raw_runs: pl.DataFrame, learning_curves: pl.LazyFrame, report_files: ReportFiles
) -> dg.MaterializeResult:
    return report_result(
        sweep_summary_doc.write_sweep_summary_report(sweep_summary, raw_runs, learning_curves, report_files.reports_dir),
        report_files,
    )


class MediaReportConfig(dg.Config):
    """Which runs and steps the attention figures show (empty: every run, at its last table step),
    the KL / validation-loss key pattern, and the histogram keys (empty: all)."""

    runs: list[str] = []
    steps: list[int] = []
    curve_pattern: str = media.MediaReportOptions.curve_pattern
    histogram_keys: list[str] = []
    attention_matrix_column: str = AttentionShape.matrix_column


@report_asset(
    "Media report `media.md`: attention heads from W&B Tables (per head and heads as colour channels), "
    "histograms over training (step × bin), KL divergence and validation loss coloured by differing config."
)
def media_report(
    config: MediaReportConfig,
    run_media: pl.DataFrame,
    media_tables: pl.DataFrame,
    histograms: pl.DataFrame,
    raw_runs: pl.DataFrame,
    run_histories: pl.LazyFrame,
    run_summaries: pl.LazyFrame,
    report_files: ReportFiles,
) -> dg.MaterializeResult:
    options = media.MediaReportOptions(
        runs=tuple(config.runs) or None,
        steps=tuple(config.steps) or None,
        attention=AttentionShape(matrix_column=config.attention_matrix_column),
        curve_pattern=config.curve_pattern,
        histogram_keys=tuple(config.histogram_keys) or None,
    )
    return report_result(
        media.write_media_report(
            run_media, media_tables, histograms, run_histories, run_summaries, raw_runs, report_files.reports_dir, options=options
        ),
        report_files,
    )


# Defined last: it links every report registered above, in that order.
@_report_spec(
    "`reports/index.md` (and .html): links to every report with the build time and the runs they were built from.",
    ("markdown",),
    ins={asset.key.to_python_identifier(): dg.AssetIn(key=asset.key) for asset in REPORT_ASSETS},
)
def reports_index(raw_runs: pl.DataFrame, report_files: ReportFiles, **manifests: pl.DataFrame) -> dg.MaterializeResult:
    ordered = [manifests[asset.key.to_python_identifier()] for asset in REPORT_ASSETS]  # definition order
    rows = [row for manifest in ordered for row in manifest.select("title", "path", "html_path", "description").rows()]
    result = index.write_index([ReportEntry(title, Path(path), text) for title, path, _, text in rows], raw_runs, report_files.reports_dir)
    links = [f"- [{escape_markdown(title)}]({link_target(report_files.location(Path(html)))})" for title, _, html, _ in rows]
    return dg.MaterializeResult(
        value=_manifest(result),
        metadata={
            **_links(result, report_files),
            "n_reports": len(rows),
            "reports": dg.MetadataValue.md("\n".join(links) or "No reports have been built yet."),
        },
    )
