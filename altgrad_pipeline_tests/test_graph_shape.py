"""The asset graph's shape, pinned: asset keys with their group, partitions and inputs, the checks,
sensors, schedules and jobs. Moving code must not change it; when a change is meant, update
`EXPECTED` in the same commit (the failure prints the new shape)."""

from __future__ import annotations

from typing import Any

from altgrad_pipeline.definitions import defs


def graph_shape() -> dict[str, Any]:
    repository = defs.get_repository_def()
    graph = repository.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = getattr(node.partitions_def, "name", None) if node.partitions_def else None
        assets[key.to_user_string()] = (node.group_name, partitions, tuple(sorted(k.to_user_string() for k in node.parent_keys)))
    return {
        "assets": assets,
        "checks": sorted((c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys),
        "sensors": sorted(s.name for s in repository.sensor_defs),
        "schedules": sorted(s.name for s in repository.schedule_defs),
        "jobs": sorted(j.name for j in repository.get_all_jobs() if not j.name.startswith("__")),
    }


EXPECTED: dict[str, Any] = {
    "assets": {
        # asset: (group, partitions, inputs)
        "raw_runs": ("ingest", "fp8_format", ()),
        "run_histories": ("ingest", "fp8_format", ()),
        "ingest_issues": ("ingest", None, ()),
        "failure_reports": ("ingest", None, ("raw_runs",)),
        "run_media": ("media", "fp8_format", ("raw_runs",)),
        "media_tables": ("media", "fp8_format", ("raw_runs",)),
        "histograms": ("media", "fp8_format", ("raw_runs",)),
        "media_issues": ("media", "fp8_format", ("raw_runs",)),
        "layer_metrics": ("analysis", "fp8_format", ("raw_runs", "run_histories")),
        "run_summaries": ("analysis", "fp8_format", ("raw_runs", "run_histories")),
        "learning_curves": ("analysis", None, ("run_histories",)),
        "run_outcomes": ("analysis", None, ("learning_curves", "raw_runs", "run_summaries")),
        "failure_modes": ("analysis", None, ("failure_reports", "raw_runs", "run_histories", "run_outcomes", "run_summaries")),
        "format_rankings": ("analysis", None, ("layer_metrics", "learning_curves", "raw_runs", "run_outcomes")),
        "manifold_stats": ("analysis", None, ("failure_modes", "learning_curves", "raw_runs", "run_outcomes", "run_summaries")),
        "training_dynamics": ("analysis", None, ("learning_curves", "raw_runs")),
        "sweep_summary": ("analysis", None, ("learning_curves", "raw_runs")),
        "format_comparison_report": ("reports", None, ("failure_modes", "format_rankings", "learning_curves", "raw_runs", "run_outcomes")),
        "failure_modes_report": ("reports", None, ("failure_modes", "layer_metrics", "learning_curves", "raw_runs")),
        "manifold_comparison_report": (
            "reports", None, ("learning_curves", "manifold_stats", "raw_runs", "run_outcomes", "run_summaries"),
        ),
        "training_dynamics_report": ("reports", None, ("learning_curves", "raw_runs", "training_dynamics")),
        "sweep_summary_report": ("reports", None, ("learning_curves", "raw_runs", "sweep_summary")),
        "media_report": ("reports", None, ("histograms", "media_tables", "raw_runs", "run_histories", "run_media", "run_summaries")),
        "reports_index": (
            "reports",
            None,
            (
                "failure_modes_report", "format_comparison_report", "manifold_comparison_report", "media_report",
                "raw_runs", "sweep_summary_report", "training_dynamics_report",
            ),
        ),
    },
    "checks": [
        ("format_rankings", "formats_completed_or_marked_all_failed"),
        ("format_rankings", "partitions_cover_every_format"),
        ("manifold_stats", "every_format_has_both_optimizers"),
        ("manifold_stats", "intervals_contain_the_effect"),
        ("raw_runs", "no_duplicate_configurations"),
        ("run_histories", "every_run_has_a_loss_series"),
        ("run_histories", "steps_are_unique_and_increasing"),
    ],
    "sensors": ["analysis_automation_sensor", "finished_runs_sensor"],
    "schedules": ["stale_formats_schedule"],
    "jobs": ["full_rebuild", "refresh_analysis", "refresh_format"],
}  # fmt: skip


def test_graph_shape_is_the_expected_one() -> None:
    assert graph_shape() == EXPECTED
