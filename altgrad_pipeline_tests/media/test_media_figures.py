"""The media assets through Dagster on SDK-written runs, and the media report looked at in
headless Chromium: every figure loads; a screenshot goes to `test-artifacts/media/`."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from altgrad_pipeline.definitions import build_resources
from altgrad_pipeline.defs import analysis as analysis_defs
from altgrad_pipeline.defs import ingest as ingest_defs
from altgrad_pipeline.defs import media as media_defs
from altgrad_pipeline.defs import reports as report_defs
from altgrad_pipeline.reports import media as media_report_doc
from altgrad_pipeline_tests.media.sdk_runs import write_media_run

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "media"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("media_pipeline")
    store, data = base / "runs", base / "data"
    logged = [write_media_run(store, f"med{i}", seed=i, lr=lr) for i, lr in ((1, 0.001), (2, 0.003))]
    # A deleted table file: reported in media_issues, every other table kept.
    gone = next((logged[1].folder / "files/media/table").glob("samples_*.table.json"))
    gone.unlink()
    defs = dg.Definitions(
        assets=[ingest_defs.ingest_format, media_defs.media_format, analysis_defs.run_summaries, report_defs.media_report],
        resources=build_resources(runs=str(store), data_dir=str(data)),
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("fp8_format", ["E5M2"])
    job = defs.get_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, partition_key="E5M2", asset_selection=[
        dg.AssetKey(k) for k in ("raw_runs", "run_histories", "run_media", "media_tables", "histograms", "media_issues", "run_summaries")])  # fmt: skip
    assert result.success
    assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("media_report")]).success
    return data, gone


def test_assets_hold_the_logged_media(built) -> None:
    data, gone = built
    run_media = pl.read_parquet(data / "assets/run_media/E5M2.parquet")
    assert run_media.height == 24 and set(run_media["run_id"]) == {"med1", "med2"}
    index = pl.read_parquet(data / "assets/media_tables/E5M2.parquet")
    assert index.height == 17  # 18 logged, one file deleted
    issues = pl.read_parquet(data / "assets/media_issues/E5M2.parquet")
    assert issues.select("kind", "run_id").rows() == [("missing_table_file", "med2")]
    assert issues["location"][0] == str(gone)
    table = pl.read_parquet(index.filter((pl.col("run_id") == "med1") & (pl.col("key") == "samples") & (pl.col("step") == 2))["table_file"][0])
    assert table["col.step"].to_list() == [20 + i for i in range(7)] and table["step"].unique().to_list() == [2]
    histograms = pl.read_parquet(data / "assets/histograms/E5M2.parquet")
    assert histograms.height == 6 and histograms.filter(pl.col("step") == 1)["counts"].to_list()[0] == [2.0, 0.0, 2.5, 7.0]
    summaries = pl.read_parquet(data / "assets/run_summaries/E5M2.parquet")
    assert summaries.filter(pl.col("key") == "val_loss").select("run_id", "last").sort("run_id").rows() == [("med1", 2.8), ("med2", pytest.approx(2.4))]


def test_media_report_figures_load_in_the_browser(built) -> None:
    data, _ = built
    manifest = pl.read_parquet(data / "assets/media_report.parquet").row(0, named=True)
    text = Path(manifest["path"]).read_text()
    figures = [Path(p) for p in manifest["figures"]]
    assert "step 2, table attn/layer0" in text and "No tables logged yet" not in text
    # attention at the last step: 2 runs × 2 tables × (per head + colour channels); 2 histogram heatmaps; 1 curves figure
    assert len(figures) == 8 + 2 + 1 and all(p.exists() for p in figures)
    # the differing config without noise keys: the seed differs too, but a seed never splits a colour
    assert r"(med1\): lr=0\.001" in text and r"(med2\): lr=0\.003" in text and "seed=" not in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        shutil.copy(figure, ARTIFACTS / figure.name)
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(Path(manifest["html_path"]).as_uri())
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        page.screenshot(path=str(ARTIFACTS / "media_report.png"), full_page=True)
        browser.close()
    assert len(widths) == len(figures) and all(w > 0 for w in widths)


def test_empty_inputs_say_so(tmp_path: Path) -> None:
    from altgrad_pipeline.analysis.summaries import RUN_SUMMARIES_SCHEMA
    from altgrad_pipeline.ingest.media import tables, values
    from altgrad_pipeline.ingest.model import empty_history

    result = media_report_doc.write_media_report(
        pl.DataFrame(schema=values.RUN_MEDIA_SCHEMA), pl.DataFrame(schema=tables.MEDIA_TABLES_SCHEMA),
        pl.DataFrame(schema=values.HISTOGRAMS_SCHEMA), empty_history(), pl.DataFrame(schema=RUN_SUMMARIES_SCHEMA), pl.DataFrame(), tmp_path,
    )  # fmt: skip
    text = result.path.read_text()
    assert "No media (tables, histograms, images) logged yet." in text
    assert "No tables logged yet." in text and "No histograms logged yet." in text
    assert result.figure_paths == ()
