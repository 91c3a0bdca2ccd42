"""The four dynamics assets materialized by Dagster on small example frames, the reports
written with every referenced image present, and honest empty reports."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import polars as pl

from altgrad_pipeline.defs import analysis as analysis_defs
from altgrad_pipeline.defs import reports as report_defs
from altgrad_pipeline.examples import example_spec
from altgrad_pipeline.reports.sweep_summary import write_sweep_summary_report
from altgrad_pipeline.reports.training_dynamics import write_training_dynamics_report
from altgrad_pipeline_tests.dynamics.synthetic import example_frames, materialize_on_frames


def _images(markdown_path: Path) -> list[Path]:
    text = markdown_path.read_text()
    return [markdown_path.parent / target for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def test_materialize_dynamics_assets_and_reports(tmp_path: Path) -> None:
    specs = [example_spec(fmt, "adamw", seed, max_steps=200) for fmt in ("BF16", "E5M2") for seed in (1, 2, 3)]
    raw, histories = example_frames(specs)

    # The test holds its instance: `output_for_node` loads through it after `materialize` returns,
    # and an ephemeral instance of its own could already be garbage-collected by then.
    with dg.instance_for_test() as instance:
        assets = [analysis_defs.learning_curves, analysis_defs.training_dynamics, analysis_defs.sweep_summary,
                  report_defs.training_dynamics_report, report_defs.sweep_summary_report]
        result = materialize_on_frames(raw, histories, assets, tmp_path, instance)
        dynamics = result.output_for_node("training_dynamics")
        summary = result.output_for_node("sweep_summary")
    assert result.success
    assert dynamics.filter(pl.col("metric") == "loss")["run_id"].n_unique() == 6
    # altgrad's BF16 baseline keeps fp8_format "E5M2", so against E5M2 only the flags vary
    assert list(summary["varying_keys"][0]) == ["use_fp8", "use_shadow"]
    assert set(summary.filter(pl.col("metric") == "loss")["n_runs"]) == {3}
    for name in ("training_dynamics", "sweep_summary"):
        markdown = tmp_path / "reports" / f"{name}.md"
        images = _images(markdown)
        assert images and all(p.is_file() for p in images)
        assert (tmp_path / "reports" / f"{name}.html").read_text().count("data:image/png;base64,") == len(images)
    assert (tmp_path / "assets" / "sweep_summary.parquet").is_file()


def test_empty_inputs_give_honest_reports(tmp_path: Path) -> None:
    empty = pl.DataFrame()
    dynamics = write_training_dynamics_report(pl.DataFrame(schema={"project": pl.String}), empty, empty, tmp_path)
    sweep = write_sweep_summary_report(pl.DataFrame(schema={"project": pl.String}), empty, empty, tmp_path)
    assert "nothing to fit" in dynamics.path.read_text() and not dynamics.figure_paths
    assert "no sweep to summarise" in sweep.path.read_text() and not sweep.figure_paths
    assert "No runs have been ingested yet." in sweep.path.read_text()
