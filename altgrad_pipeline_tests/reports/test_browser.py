"""The Dagster UI and the HTML reports, as a person sees them: dagster-webserver on an instance where
`refresh` materialized a small example study, and the reports it wrote, opened in headless Chromium
(Debian's, driven by Playwright).

Screenshots are saved under `test-artifacts/browser/` for humans to look at.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from altgrad_pipeline.definitions import build_defs
from altgrad_pipeline.defs.sensors import finished_runs_sensor
from altgrad_pipeline.examples import example_spec, write_example_runs
from altgrad_pipeline.refresh import refresh

pytestmark = pytest.mark.browser

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
STARTUP_TIMEOUT_S = 90
#: Window widths the reports must fit without scrolling sideways: a laptop, and half a screen.
REPORT_WIDTHS = (1400, 800)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Dagster ignores SIGINT and can hang on SIGTERM: end the whole group, then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Path]:
    """A small example study after `altgrad-pipeline refresh`: its run store, data dir and instance."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
    base = tmp_path_factory.mktemp("ui")
    store, data = base / "runs", base / "data"
    specs = [example_spec("BF16", "adamw", 1, max_steps=160)]
    specs += [example_spec("E5M2", opt, seed, max_steps=120) for opt in ("adamw", "manifold") for seed in (1, 2)]
    specs.append(example_spec("E7M0", "adamw", 1, max_steps=120))
    write_example_runs(store, specs)
    assert refresh(runs=str(store), data_dir=str(data), echo=lambda _: None).ok
    # where refresh keeps the instance when DAGSTER_HOME is unset
    return {"base": base, "store": store, "data": data, "home": data / "dagster_home"}


@pytest.fixture(scope="module")
def webserver(study):
    base, store, data, home = study["base"], study["store"], study["data"], study["home"]
    env = {**os.environ, "DAGSTER_HOME": str(home), "ALTGRAD_RUNS": str(store), "ALTGRAD_DATA_DIR": str(data)}
    port = _free_port()
    log = (base / "webserver.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dagster-webserver did not start: {(base / 'webserver.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        _stop(process)
        log.close()


@pytest.fixture(scope="module")
def page(webserver):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        # The one-time "Join the Dagster community" dialog can open at any moment of the first visit
        # and cover what a test clicks: Playwright dismisses it whenever it shows, before any action.
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
        yield page
        browser.close()


def _open(page, url: str) -> None:
    page.goto(url, wait_until="networkidle")


@pytest.mark.parametrize(
    ("group", "assets"),
    [
        ("ingest", ("raw_runs", "run_histories", "ingest_issues", "failure_reports")),
        ("media", ("run_media", "media_tables", "histograms", "media_issues")),
        (
            "analysis",
            (
                "layer_metrics", "run_summaries", "run_outcomes", "format_rankings", "failure_modes", "manifold_stats",
                "training_dynamics", "sweep_summary",
            ),
        ),
        (
            "reports",
            (
                "format_comparison_report",
                "failure_modes_report",
                "manifold_comparison_report",
                "training_dynamics_report",
                "sweep_summary_report",
                "media_report",
                "reports_index",
            ),
        ),
    ],
)
def test_asset_graph_shows_every_asset(page, webserver, group, assets):
    _open(page, f"{webserver}/locations/altgrad_pipeline/asset-groups/{group}")
    page.get_by_text("Latest event", exact=True).first.wait_for(timeout=30_000)  # asset nodes drawn
    page.get_by_text("Loading...").first.wait_for(state="detached", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"asset_graph_{group}.png"))
    page.get_by_role("tab", name="List").click()  # the graph draws only the nodes in view
    for name in assets:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"asset_list_{group}.png"))


def test_report_asset_page_shows_metadata_and_figure(page, webserver):
    _open(page, f"{webserver}/assets/format_comparison_report")
    for text in ("report_path", "format_comparison.md", "html_path", "n_figures", "main_figure"):
        page.get_by_text(text).first.wait_for(timeout=30_000)
    link = page.locator("a[href$='/reports/format_comparison.html']").first  # a link, not text to copy
    assert link.get_attribute("href").startswith("file:///")
    page.screenshot(path=str(ARTIFACTS / "format_comparison_report.png"))
    page.get_by_text("[Show Markdown]").first.click()
    figure = page.locator("img[src^='data:image/png']").first
    figure.wait_for(timeout=30_000)
    assert figure.evaluate("img => img.complete && img.naturalWidth > 100")
    page.screenshot(path=str(ARTIFACTS / "format_comparison_report_figure.png"))


def test_asset_checks_show_their_result(page, webserver):
    _open(page, f"{webserver}/assets/manifold_stats?view=checks")
    check = page.get_by_text("intervals_contain_the_effect").first
    check.wait_for(timeout=30_000)
    # The list opens on its first check (every_format_has_both_optimizers, a warning where a format
    # lacks an arm): select the interval check before reading its result.
    check.click()
    page.get_by_text("Passed").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "manifold_stats_checks.png"))


def _refresh_runs(study) -> dict[str, str]:
    """Job name -> id of its latest run on the study's instance (refresh ran nothing else)."""
    with dg.DagsterInstance.from_config(str(study["home"])) as instance:
        return {run.job_name: run.run_id for run in reversed(instance.get_runs())}


def test_a_refresh_run_opens_its_job(page, webserver, study):
    runs = _refresh_runs(study)
    assert set(runs) == {"refresh_format", "refresh_analysis"}
    _open(page, f"{webserver}/runs/{runs['refresh_analysis']}")
    page.get_by_text("View job").first.click()
    page.wait_for_url("**/jobs/refresh_analysis/**", timeout=30_000)
    page.get_by_text("Analysis and reports over every format partition").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "refresh_run_job.png"))


def test_the_overview_timeline_lists_the_refresh_jobs(page, webserver):
    _open(page, f"{webserver}/overview/timeline")
    for job in ("refresh_format", "refresh_analysis"):
        page.get_by_text(job, exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "overview_timeline.png"))


def test_the_first_sensor_tick_after_refresh_requests_nothing(study):
    """What `dg dev` (or a daemon) does first on the refreshed instance: its sensor has no cursor."""
    defs = build_defs(runs=str(study["store"]), data_dir=str(study["data"]))
    with dg.DagsterInstance.from_config(str(study["home"])) as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs, resources={"run_stores": defs.resources["run_stores"]})
        result = finished_runs_sensor(context)
    assert result.run_requests == [] and not result.dynamic_partitions_requests


def test_the_columns_panel_describes_every_column(page, webserver):
    _open(page, f"{webserver}/assets/format_rankings")
    page.get_by_text("final_loss_ci_method", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("Mean over completed runs of each run's last").first.wait_for(timeout=30_000)
    page.get_by_text("final_loss_ci_method", exact=True).first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "format_rankings_columns.png"))


def test_the_index_asset_links_its_reports(page, webserver):
    _open(page, f"{webserver}/assets/reports_index")
    page.get_by_text("n_reports").first.wait_for(timeout=30_000)
    assert page.get_by_text("No figure").count() == 0
    page.get_by_text("n_reports").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "reports_index.png"))


@pytest.mark.parametrize("width", REPORT_WIDTHS)
def test_every_html_report_fits_the_window(page, study, width):
    """No sideways page scroll (a wide table scrolls in its own box), no Markdown escapes in the
    text, and a way back to the index."""
    reports = sorted((study["data"] / "reports").glob("*.html"))
    assert len(reports) == 7
    page.set_viewport_size({"width": width, "height": 1000})
    try:
        for report in reports:
            page.goto(report.as_uri(), wait_until="load")
            page.screenshot(path=str(ARTIFACTS / f"report_{report.stem}_{width}.png"))
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), report.name
            assert "\\_" not in page.inner_text("body"), report.name
            if report.stem != "index":
                assert page.locator("nav a[href='index.html']").count() == 1, report.name
    finally:
        page.set_viewport_size({"width": 1600, "height": 1000})
