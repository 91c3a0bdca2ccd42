"""Report assets: Markdown + HTML files under `<data dir>/reports/`, figures in `reports/figures/`.

Each report asset's value is a one-row manifest (title, files, figures) stored like any table, so
the index is built from its inputs rather than from a directory listing; the Dagster UI shows the
report's path and its main figure inline.
"""


import base64
import io
from pathlib import Path

import dagster as dg
import polars as pl
from PIL import Image

from altgrad_pipeline.analysis import manifold
from altgrad_pipeline.automation.conditions import analysis_automation_condition
from altgrad_pipeline.reports import documents
from altgrad_pipeline.resources import ReportFiles
from altgrad_pipeline.ui import table_schema

REPORTS_GROUP = "reports"
THUMBNAIL_SCALE = 0.45

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "title": pl.String(),
    "path": pl.String(),
    "html_path": pl.String(),
    "description": pl.String(),
    "figures": pl.List(pl.String()),
}


def _manifest(result: documents.ReportResult) -> pl.DataFrame:
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
    """The main figure, scaled down and inlined, so the asset page shows it without the file."""
    if figure is None or not figure.exists():
        return dg.MetadataValue.md("No figure: this report has no runs to draw yet.")
    buffer = io.BytesIO()
    with Image.open(figure) as picture:
        picture.thumbnail((int(picture.width * THUMBNAIL_SCALE), int(picture.height * THUMBNAIL_SCALE)))
        picture.save(buffer, format="PNG", optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{figure.stem}](data:image/png;base64,{encoded})")


def report_asset(description: str, *, kinds: tuple[str, ...] = ("markdown", "matplotlib")):
    """The shape every report asset shares: the reports group, refreshed after the analysis by
    automation, its one-row manifest's column schema in the UI."""
    return dg.asset(
        group_name=REPORTS_GROUP,
        description=description,
        automation_condition=analysis_automation_condition(),
        metadata={"dagster/column_schema": table_schema(MANIFEST_SCHEMA)},
        kinds=set(kinds),
    )


def report_result(result: documents.ReportResult, report_files: ReportFiles) -> dg.MaterializeResult:
    """The manifest as the asset's value; where to open the report and its HTML, figure count and
    main figure for the UI."""
    return dg.MaterializeResult(
        value=_manifest(result),
        metadata={
            "report_path": dg.MetadataValue.path(report_files.location(result.entry.path)),
            "html_path": dg.MetadataValue.path(report_files.location(result.html_path)),
            "n_figures": len(result.figure_paths),
            "main_figure": _thumbnail_markdown(result.main_figure),
        },
    )


@report_asset(
    "ANAL-01 report `format_comparison.md`: sweet spot overall and per layer type, ranking tables "
    "with n, completion rates, improvement over BF16, loss curves with CI bands, format × layer-type heatmap."
)
def format_comparison_report(
    format_rankings: pl.DataFrame, raw_runs: pl.DataFrame, run_histories: pl.LazyFrame, report_files: ReportFiles
) -> dg.MaterializeResult:
    return report_result(
        documents.write_format_comparison_report(format_rankings, raw_runs, run_histories, report_files.reports_dir),
        report_files,
    )


@report_asset(
    "ANAL-02 report `failure_modes.md`: every failed run with mode, failure step, last finite loss and "
    "evidence; per failing format the metric traces before collapse beside a successful format."
)
def failure_modes_report(
    failure_modes: pl.DataFrame,
    raw_runs: pl.DataFrame,
    run_histories: pl.LazyFrame,
    layer_metrics: pl.LazyFrame,
    report_files: ReportFiles,
) -> dg.MaterializeResult:
    return report_result(
        documents.write_failure_modes_report(failure_modes, raw_runs, run_histories, layer_metrics, report_files.reports_dir),
        report_files,
    )


@report_asset(
    "ANAL-03 report `manifold_comparison.md`: ManifoldAdamW − AdamW per format and metric with CI, "
    "method and n, a paired-seed plot, and 'observed' wording where n is low."
)
def manifold_comparison_report(
    manifold_stats: pl.DataFrame,
    raw_runs: pl.DataFrame,
    run_histories: pl.LazyFrame,
    run_outcomes: pl.DataFrame,
    run_summaries: pl.LazyFrame,
    report_files: ReportFiles,
) -> dg.MaterializeResult:
    per_run = manifold.per_run_metrics(raw_runs, run_histories, run_outcomes, run_summaries)
    return report_result(
        documents.write_manifold_comparison_report(manifold_stats, per_run, raw_runs, report_files.reports_dir),
        report_files,
    )


@report_asset(
    "`reports/index.md` (and .html): links to every report with the build time and the runs they were built from.",
    kinds=("markdown",),
)
def reports_index(
    format_comparison_report: pl.DataFrame,
    failure_modes_report: pl.DataFrame,
    manifold_comparison_report: pl.DataFrame,
    training_dynamics_report: pl.DataFrame,
    sweep_summary_report: pl.DataFrame,
    media_report: pl.DataFrame,
    raw_runs: pl.DataFrame,
    report_files: ReportFiles,
) -> dg.MaterializeResult:
    manifests = pl.concat(
        [
            format_comparison_report,
            failure_modes_report,
            manifold_comparison_report,
            training_dynamics_report,
            sweep_summary_report,
            media_report,
        ]
    )
    entries = [
        documents.ReportEntry(title, Path(path), description)
        for title, path, description in manifests.select("title", "path", "description").rows()
    ]
    return report_result(documents.write_index(entries, raw_runs, report_files.reports_dir), report_files)
