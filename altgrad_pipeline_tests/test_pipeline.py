"""The whole graph, end to end, on a run store written by the real wandb SDK with known answers.

One store (18 runs: BF16, E3M4 and E5M2 with both optimizers, a NaN-stopped E7M0, a bit-stalling
E0M7, a killed E1M6 and an E7M0 run with a hostile name) goes through `refresh` into a real
Dagster instance; the tests then read the Parquet assets, the asset checks and the reports.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import wandb

from altgrad_pipeline.examples import example_spec, simulate_history, write_example_runs, write_run
from altgrad_pipeline.refresh import refresh
from altgrad_pipeline_tests.conftest import PUNCTUATED_RUN_IDS, write_punctuated_id_runs
from altgrad_pipeline_tests.sdk import finish_and_flush

EVIL_NAME = "| <script> ** [x](y)"
STEPS = 220

# ##### FIXTURES


def _study():
    specs = [example_spec("BF16", "adamw", seed, max_steps=STEPS + 40) for seed in (1, 2)]
    for fmt in ("E3M4", "E5M2"):  # quiet runs: the manifold effect (-0.08 on E5M2) is large against the noise
        specs += [
            example_spec(fmt, opt, seed, max_steps=STEPS, step_noise_sd=0.01)
            for opt in ("adamw", "manifold")
            for seed in (1, 2, 3)
        ]
    specs.append(example_spec("E7M0", "adamw", 1, max_steps=STEPS))
    specs.append(example_spec("E0M7", "adamw", 1, max_steps=STEPS))
    specs.append(example_spec("E1M6", "adamw", 4, max_steps=STEPS, kill_after_steps=90))
    return specs


def _write_evil_run(root: Path) -> None:
    """An E7M0 run whose display name is Markdown and HTML: it must appear escaped everywhere."""
    spec = example_spec("E7M0", "adamw", 9, max_steps=STEPS)
    run = wandb.init(
        mode="offline", dir=str(root), project="altgrad", name=EVIL_NAME, config=spec.config(),
        tags=["<b>bold</b>"], settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )  # fmt: skip
    for step, row in enumerate(simulate_history(spec)):
        run.log(row, step=step)
    finish_and_flush(run)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    store, data = base / "runs", base / "data"
    study = write_example_runs(store, _study())
    _write_evil_run(store)
    with dg.instance_for_test() as instance:
        messages: list[str] = []
        report = refresh(runs=str(store), data_dir=str(data), instance=instance, echo=messages.append)
        yield {"study": study, "store": store, "data": data, "instance": instance, "report": report, "messages": messages}


def _asset(data: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(data / "assets" / f"{name}.parquet")


def _partitioned(data: Path, name: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((data / "assets" / name).glob("*.parquet"))], how="diagonal_relaxed")


# ##### INGEST


def test_refresh_builds_every_format_partition(pipeline):
    report, data = pipeline["report"], pipeline["data"]
    assert report.ok, report.failed
    assert sorted(report.formats) == ["BF16", "E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]
    for asset in ("raw_runs", "run_histories", "layer_metrics"):
        assert sorted(p.stem for p in (data / "assets" / asset).glob("*.parquet")) == sorted(report.formats)
    partitions = dg.DynamicPartitionsDefinition(name="fp8_format").get_partition_keys(dynamic_partitions_store=pipeline["instance"])
    assert sorted(partitions) == sorted(report.formats)


def test_histories_hold_exactly_what_was_logged(pipeline):
    data = pipeline["data"]
    runs = _partitioned(data, "raw_runs")
    spec = example_spec("E7M0", "adamw", 1, max_steps=STEPS)
    run_id = runs.filter(pl.col("name") == spec.run_name).item(0, "run_id")
    stored = pl.read_parquet(data / "assets" / "run_histories" / "E7M0.parquet").filter(pl.col("run_id") == run_id)
    logged = {(step, key): value for step, row in enumerate(simulate_history(spec)) for key, value in row.items()}
    got = {(s, k): v for s, k, v in stored.select("step", "key", "value").iter_rows()}
    assert got.keys() == logged.keys()
    mismatched = [k for k, v in logged.items() if not (v == got[k] or (math.isnan(v) and math.isnan(got[k])))]
    assert mismatched == []
    assert sum(math.isnan(v) for v in got.values()) > 0  # the NaN evidence survived


def test_raw_runs_state_format_and_optimizer(pipeline):
    runs = _partitioned(pipeline["data"], "raw_runs")
    by_name = {r["name"]: r for r in runs.iter_rows(named=True)}
    assert by_name["bf16-adamw-s1"]["fp8_format"] == "BF16"  # config still says fp8_format: E5M2
    assert by_name["e5m2-manifold-s2"]["optimizer"] == "ManifoldAdamW"
    assert by_name["e7m0-adamw-s1"]["state"] == "finished"  # NaN-stopped, yet exit code 0
    assert by_name["e1m6-adamw-s4"]["state"] in ("crashed", "running")  # no exit record
    assert by_name["e1m6-adamw-s4"]["exit_code"] is None
    assert by_name[EVIL_NAME]["tags"] == ["<b>bold</b>"]
    assert runs.height == 18


# ##### ANALYSIS


def test_analysis_recovers_the_known_answers(pipeline):
    data, truth = pipeline["data"], pipeline["study"].truth
    rankings = _asset(data, "format_rankings")
    overall = rankings.filter((pl.col("layer_type") == "all") & pl.col("is_sweet_spot"))
    assert dict(overall.select("optimizer", "fp8_format").iter_rows()) == {"AdamW": "E3M4", "ManifoldAdamW": "E3M4"}
    modes = _asset(data, "failure_modes").join(
        _partitioned(data, "raw_runs").select("run_id", "name"), on="run_id"
    )
    by_name = {r["name"]: r for r in modes.iter_rows(named=True)}
    nan_run = by_name["e7m0-adamw-s1"]
    assert nan_run["failure_mode"] == "nan_loss" and nan_run["outcome"] == "nan_stopped"
    assert abs(nan_run["failure_step"] - 37) <= nan_run["nan_patience"]  # within the run's own patience
    stall_truth = truth.runs["e0m7-adamw-s1"]
    assert by_name["e0m7-adamw-s1"]["failure_mode"] == "bit_stall"
    assert abs(by_name["e0m7-adamw-s1"]["failure_step"] - stall_truth.bit_stall_crossing_step) <= 10
    assert by_name["e3m4-adamw-s1"]["failure_mode"] == "none"
    manifold = _asset(data, "manifold_stats").filter(pl.col("metric") == "final_loss")
    e5m2 = manifold.filter(pl.col("fp8_format") == "E5M2").row(0, named=True)
    assert e5m2["ci_low"] <= -0.08 <= e5m2["ci_high"] and e5m2["ci_high"] < 0
    e3m4 = manifold.filter(pl.col("fp8_format") == "E3M4").row(0, named=True)
    assert e3m4["ci_low"] <= 0.0 <= e3m4["ci_high"]  # no true effect on E3M4


def test_asset_checks_pass(pipeline):
    """Every check ran (partitioned ones once per format) and passed on this clean study."""
    from altgrad_pipeline.definitions import ASSET_CHECKS

    storage = pipeline["instance"].event_log_storage
    keys = [spec.key for check in ASSET_CHECKS for spec in check.check_specs]
    outcomes = {}
    for key in keys:
        history = storage.get_asset_check_execution_history(key, limit=50)
        assert history, f"{key.name} never ran"
        outcomes[key.name] = {r.status.value for r in history}
    partitioned = storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("run_histories"), "steps_are_unique_and_increasing"), limit=50
    )
    assert len(partitioned) == 6  # one per format partition
    # The study has no ManifoldAdamW arm for BF16, E1M6 and E7M0: that check warns, naming them.
    arms = outcomes.pop("every_format_has_both_optimizers")
    assert arms == {"FAILED"}
    (arm_check,) = storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("manifold_stats"), "every_format_has_both_optimizers"), limit=1
    )
    evaluation = arm_check.event.dagster_event.event_specific_data
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert all(fmt in evaluation.metadata["offending"].value for fmt in ("BF16", "E1M6", "E7M0"))
    assert all(statuses == {"SUCCEEDED"} for statuses in outcomes.values()), outcomes


def test_a_check_of_a_format_partition_executed_alone_runs_alone(pipeline, monkeypatch):
    """A format's three checks share one step; selecting one of them (as the UI's "Execute" on a
    check does) evaluates that check only, on the partition's tables."""
    from altgrad_pipeline.definitions import defs
    from altgrad_pipeline.defs.checks import STEPS_ARE_UNIQUE_AND_INCREASING

    monkeypatch.setenv("ALTGRAD_RUNS", str(pipeline["store"]))
    monkeypatch.setenv("ALTGRAD_DATA_DIR", str(pipeline["data"]))
    job = defs.resolve_job_def("refresh_format").get_subset(asset_selection=set(), asset_check_selection={STEPS_ARE_UNIQUE_AND_INCREASING})
    result = job.execute_in_process(instance=pipeline["instance"], partition_key="BF16")
    evaluations = [event.event_specific_data for event in result.all_events if event.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert result.success
    assert [(e.asset_key, e.check_name, e.passed) for e in evaluations] == [(dg.AssetKey("run_histories"), "steps_are_unique_and_increasing", True)]


# ##### REPORTS


def test_reports_exist_with_their_figures(pipeline):
    reports = pipeline["data"] / "reports"
    for name in ("format_comparison", "failure_modes", "manifold_comparison", "index"):
        text = (reports / f"{name}.md").read_text()
        assert "TBD" not in text and "placeholder" not in text.lower()
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            assert (reports / image).is_file(), image
        html = (reports / f"{name}.html").read_text()
        assert "<script" not in html


def test_every_report_table_has_its_csv_and_every_figure_its_svg(pipeline):
    """All reports (dynamics, sweep and media included) write the twins through the page kit."""
    reports = pipeline["data"] / "reports"
    for path in sorted(reports.glob("*.md")):
        text = path.read_text()
        n_tables = len(re.findall(r"^\|(?:---\|)+$", text, flags=re.MULTILINE))
        links = re.findall(r"\nTable as CSV: \[[^\]]*\]\((tables/[^)]+\.csv)\)", text)
        assert len(links) == n_tables, path.name
        assert all((reports / link).is_file() for link in links), path.name
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\.png\)", text):
            assert (reports / f"{image}.svg").is_file(), image


def test_killed_run_is_in_the_failure_report_from_the_first_refresh(pipeline):
    """The killed E1M6 run has no exit record on the first refresh: it is listed with its silence and last step."""
    text = (pipeline["data"] / "reports" / "failure_modes.md").read_text()
    assert "e1m6\\-adamw\\-s4" in text
    conclusions = text.split("## Conclusions", 1)[1]
    assert "**E1M6**" in conclusions and "**E7M0**: with AdamW" in conclusions
    if "### Runs without an exit record" in text:
        section = text.split("### Runs without an exit record", 1)[1].split("###", 1)[0]
        assert "e1m6\\-adamw\\-s4" in section and re.search(r"no exit record, silent for (1 minute|\d+ minutes) \(last write", section)


def test_hostile_run_name_is_escaped(pipeline):
    text = (pipeline["data"] / "reports" / "failure_modes.md").read_text()
    assert r"\| &lt;script&gt; \*\* \[x\]\(y\)" in text
    assert "<script>" not in text


def test_no_personal_data_reaches_tables_or_reports(pipeline):
    """The SDK records host and user names in the run folder's metadata: none reach our outputs."""
    import getpass
    import socket

    data = pipeline["data"]
    texts = [p.read_text() for p in (data / "reports").glob("*.md")]
    texts += [json.dumps(_partitioned(data, "raw_runs").select("config", "summary", "notes").to_dicts())]
    for secret in {socket.gethostname(), getpass.getuser()} - {"root"}:
        # As a whole token: a short host name ("vm") also occurs inside random run ids ("vmez7fcm").
        alone = re.compile(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])")
        assert not any(alone.search(t) for t in texts), secret


def test_second_refresh_is_a_no_op_and_a_new_format_is_picked_up(pipeline):
    store, data, instance = pipeline["store"], pipeline["data"], pipeline["instance"]
    again = refresh(runs=str(store), data_dir=str(data), instance=instance, echo=lambda _: None)
    assert again.refreshed_formats == [] and not again.analysis_refreshed
    write_run(store, example_spec("E3M4", "adamw", 7, max_steps=60, loss_floor=3.1))
    newer = refresh(runs=str(store), data_dir=str(data), instance=instance, echo=lambda _: None)
    assert newer.refreshed_formats == ["E3M4"] and newer.analysis_refreshed
    runs = pl.read_parquet(data / "assets" / "raw_runs" / "E3M4.parquet")
    assert "e3m4-adamw-s7" in runs.get_column("name").to_list()
    assert json.loads(runs.filter(pl.col("name") == "e3m4-adamw-s7").item(0, "config"))["max_steps"] == 60


def test_runs_with_punctuated_ids_are_ingested_and_analysed(tmp_path):
    """Run ids with '-', '_' and '.' reach the tables and the analysis like any other."""
    store, data = tmp_path / "runs", tmp_path / "data"
    write_punctuated_id_runs(store)
    with dg.instance_for_test() as instance:
        report = refresh(runs=str(store), data_dir=str(data), instance=instance, echo=lambda _: None)
    assert report.ok, report.failed
    assert sorted(report.formats) == ["BF16", "E3M4", "E5M2"]
    runs = _partitioned(data, "raw_runs")
    assert sorted(runs.get_column("run_id")) == sorted(PUNCTUATED_RUN_IDS)
    assert all(Path(location).name.endswith(run_id) for run_id, location in runs.select("run_id", "location").iter_rows())
    outcomes = _asset(data, "run_outcomes")
    assert dict(outcomes.select("run_id", "outcome").iter_rows()) == dict.fromkeys(PUNCTUATED_RUN_IDS, "completed")
    rankings = _asset(data, "format_rankings").filter(pl.col("layer_type") == "all")
    assert sorted(rankings.get_column("fp8_format")) == ["BF16", "E3M4", "E5M2"]
    assert rankings.get_column("n_completed").to_list() == [1, 1, 1]
    assert _asset(data, "ingest_issues").filter(pl.col("kind") == "unrecognised_run_folder").is_empty()
