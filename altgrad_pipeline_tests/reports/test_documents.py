"""The three analysis reports, the index and their HTML copies, built from a synthetic study run
through the real analysis functions: every number in a table equals its frame value, every
image exists and is embedded in the HTML, every table and figure has its CSV / SVG twin, no tick
label is mathtext, each analysis report ends with its conclusions, untrusted names stay escaped,
and empty inputs give honest sentences."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import polars as pl
import pytest
from matplotlib.figure import Figure

from altgrad_pipeline.analysis.failures import failure_modes
from altgrad_pipeline.analysis.layers import layer_metrics
from altgrad_pipeline.analysis.manifold import manifold_stats, per_run_metrics
from altgrad_pipeline.analysis.outcomes import run_outcomes
from altgrad_pipeline.analysis.rankings import format_rankings
from altgrad_pipeline.analysis.summaries import run_summaries
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell
from altgrad_pipeline.reports.failure_modes import minutes_text, write_failure_modes_report
from altgrad_pipeline.reports.format_comparison import (
    LAYER_RANKING_COLUMNS,
    OVERALL_RANKING_COLUMNS,
    RUN_RESULT_COLUMNS,
    write_format_comparison_report,
)
from altgrad_pipeline.reports.index import write_index
from altgrad_pipeline.reports.manifold_comparison import MANIFOLD_COLUMNS, write_manifold_comparison_report
from altgrad_pipeline.reports.page import ReportEntry, run_link

# ##### SYNTHETIC STUDY

EVIL_NAME = "| <script> ** [x](y)"
EVIL_ESCAPED = r"\| &lt;script&gt; \*\* \[x\]\(y\)"
FORMATS = {"BF16": (0.0, 2.0), "E5M2": (0.05, 2.1), "E3M4": (0.02, 2.05), "E7M0": (0.2, 2.6)}
PARAMS = ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.ln_1.weight")
MAX_STEPS = 60
NAN_RUN = "E7M0-AdamW-0"
EVIL_RUN = NAN_RUN  # the failed run, so its name shows in the failure tables
BUILT_AT = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def _history_rows(run_id: str, fmt: str, optimizer: str, seed: int) -> list[dict]:
    stall, floor = FORMATS[fmt]
    bonus = 0.03 if optimizer == "ManifoldAdamW" else 0.0
    last = 38 if run_id == NAN_RUN else MAX_STEPS - 1
    rows = []
    for step in range(last + 1):
        loss = floor - bonus + 3.0 * math.exp(-step / 15) + 0.01 * seed + 0.002 * ((step * 7 + seed) % 5)
        if run_id == NAN_RUN and step >= 30:
            loss = float("nan")
        values = {"loss": loss, "grad_norm": 1.0 + 0.01 * step + 0.1 * seed}
        if fmt != "BF16":
            values["quantization/bit_stall_rate"] = stall + 0.001 * step
        for i, param in enumerate(PARAMS):
            values[f"dead_neuron_frac/{param}"] = 0.5 if "wte" in param else stall / 2 + 0.01 * i
            values[f"grad_snr/{param}"] = 1.0 - stall + 0.1 * i + 0.01 * seed
            values[f"grad_norm_l2/{param}"] = 0.5 + 0.01 * ((step + i) % 4)
        rows += [{"run_id": run_id, "step": step, "key": k, "value": v, "runtime": float(step), "timestamp": 1.7e9 + step} for k, v in values.items()]
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("study")
    runs, history = [], []
    for fmt in FORMATS:
        for optimizer in ("AdamW", "ManifoldAdamW"):
            for seed in range(3):
                run_id = f"{fmt}-{optimizer}-{seed}"
                api = seed != 2
                runs.append(
                    {
                        "run_id": run_id,
                        "source": "wandb_api" if api else "local",
                        "location": str(root / "runs" / run_id),
                        "url": f"https://wandb.ai/team/altgrad/runs/{run_id}" if api else None,
                        "project": "altgrad",
                        "name": EVIL_NAME if run_id == EVIL_RUN else f"{fmt.lower()}-{optimizer.lower()}-s{seed}",
                        "tags": ["fp8", "<b>tag</b>"],
                        "state": "finished",
                        "fp8_format": fmt,
                        "optimizer": optimizer,
                        "seed": seed,
                        "max_steps": MAX_STEPS,
                        "last_step": 38 if run_id == NAN_RUN else MAX_STEPS - 1,
                        "updated_at": dt.datetime(2026, 11, 20, 8, seed, tzinfo=dt.UTC),
                    }
                )
                history += _history_rows(run_id, fmt, optimizer, seed)
    raw_runs = pl.DataFrame(runs)
    histories = pl.DataFrame(history, schema={"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64, "runtime": pl.Float64, "timestamp": pl.Float64})
    outcomes = run_outcomes(raw_runs, histories)
    layers = layer_metrics(histories)
    summaries = run_summaries(histories)
    return {
        "root": root,
        "raw_runs": raw_runs,
        "histories": histories,
        "outcomes": outcomes,
        "layer_metrics": layers,
        "rankings": format_rankings(raw_runs, histories, outcomes, layers),
        "failures": failure_modes(raw_runs, histories, outcomes),
        "manifold": manifold_stats(raw_runs, histories, outcomes, summaries, n_resamples=199),
        "manifold_per_run": per_run_metrics(raw_runs, histories, outcomes, summaries),
    }


#: Tick labels of every figure the `reports` fixture draws, by file stem.
TICK_LABELS: dict[str, list[str]] = {}


def _recording_draw(original):
    """Figure.draw that records the tick labels it drew, by the stem of the file `save_figure` is
    writing (its SVG renderer is named after the file)."""

    def draw(self, renderer):
        original(self, renderer)
        TICK_LABELS[Path(renderer.svg.basename).stem] = [
            label.get_text() for axes in self.get_axes() for axis in (axes.xaxis, axes.yaxis) for label in axis.get_ticklabels(which="both")
        ]

    return draw


@pytest.fixture(scope="module")
def reports(study: dict) -> dict:
    patch = pytest.MonkeyPatch()
    patch.setattr(Figure, "draw", _recording_draw(Figure.draw))
    try:
        return _write_reports(study, study["root"] / "reports")
    finally:
        patch.undo()


def _write_reports(study: dict, reports_dir: Path) -> dict:
    results = {
        "format_comparison": write_format_comparison_report(
            study["rankings"], study["raw_runs"], study["histories"], study["outcomes"], study["failures"], reports_dir, built_at=BUILT_AT
        ),
        "failure_modes": write_failure_modes_report(
            study["failures"], study["raw_runs"], study["histories"], study["layer_metrics"], reports_dir, built_at=BUILT_AT
        ),
        "manifold_comparison": write_manifold_comparison_report(
            study["manifold"], study["manifold_per_run"], study["raw_runs"], reports_dir, built_at=BUILT_AT
        ),
    }
    results["index"] = write_index([r.entry for r in results.values()], study["raw_runs"], reports_dir, built_at=BUILT_AT)
    return results


# ##### MARKDOWN TABLE PARSING


def _unescape(cell: str) -> str:
    return re.sub(r"\\(.)", r"\1", cell).replace("&lt;", "<").replace("&gt;", ">")


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every Markdown table as a list of {unescaped header: raw cell}."""
    found, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(---\|)+", lines[i + 1]) and (i == 0 or not lines[i - 1].startswith("|")):
            headers = [_unescape(h) for h in _split_row(line)]
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(headers, _split_row(row), strict=True)))
            found.append(body)
    return found


def tables_with(markdown: str, *columns: str) -> list[list[dict[str, str]]]:
    return [t for t in tables(markdown) if t and all(c in t[0] for c in columns)]


def assert_rows_match(table_rows: list[dict[str, str]], frame: pl.DataFrame, key: tuple[str, ...], columns: tuple[str, ...]) -> None:
    """Each table row equals the frame row with the same key, cell by cell, via `format_cell`."""
    assert len(table_rows) == frame.height
    for row in table_rows:
        match = frame.filter(*(pl.col(k) == _unescape(row[k]) for k in key))
        assert match.height == 1, row
        for column in columns:
            assert row[column] == format_cell(match[column][0]), (column, row)


# ##### TESTS


def test_format_comparison_tables_equal_the_rankings_per_optimizer(study: dict, reports: dict) -> None:
    """AdamW's tables come first, ManifoldAdamW's beside them, each ranked among its own runs."""
    markdown = reports["format_comparison"].path.read_text()
    assert markdown.index("### AdamW (the study's method)") < markdown.index("### ManifoldAdamW (ranked among its own runs")
    overall_tables = tables_with(markdown, "final_loss", "final_loss_ci_method")
    layer_tables = tables_with(markdown, "mean_rank", "grad_snr_std")
    layer_types = sorted(set(study["rankings"]["layer_type"]) - {"all"})
    assert len(overall_tables) == 2 and len(layer_tables) == 2 * len(layer_types) == 8
    for index, optimizer in enumerate(("AdamW", "ManifoldAdamW")):
        ranking = study["rankings"].filter(pl.col("optimizer") == optimizer)
        assert_rows_match(overall_tables[index], ranking.filter(pl.col("layer_type") == "all"), ("fp8_format",), OVERALL_RANKING_COLUMNS)
        for offset, layer_type in enumerate(layer_types):
            layer_table = layer_tables[index * len(layer_types) + offset]
            assert_rows_match(layer_table, ranking.filter(pl.col("layer_type") == layer_type), ("fp8_format",), LAYER_RANKING_COLUMNS)
    assert "health score" not in markdown.lower()
    assert re.search(r"mean rank \d\.\d of \d", markdown)


def test_every_run_of_the_store_is_in_the_results_table(study: dict, reports: dict) -> None:
    markdown = reports["format_comparison"].path.read_text()
    [results] = tables_with(markdown, "run", "final_bit_stall_rate")
    assert len(results) == study["raw_runs"].height
    assert {row["run"] for row in results} == {run_link(r, reports["index"].path.parent) for r in study["raw_runs"].iter_rows(named=True)}
    assert set(results[0]) == {"run", *RUN_RESULT_COLUMNS}
    assert sum(EVIL_ESCAPED in row["run"] for row in results) == 1


def test_format_comparison_names_the_sweet_spot_with_its_numbers(study: dict, reports: dict) -> None:
    markdown = reports["format_comparison"].path.read_text()
    spot = study["rankings"].filter((pl.col("optimizer") == "AdamW") & (pl.col("layer_type") == "all") & pl.col("is_sweet_spot")).row(0, named=True)
    assert spot["fp8_format"] == "E3M4"
    assert f"- Overall: **E3M4**, final loss {format_cell(spot['final_loss'])} (95% CI [{format_cell(spot['final_loss_ci_low'])}, " in markdown
    assert f"n = {spot['n_completed']} completed of {spot['n_runs']} runs" in markdown
    assert f"It leads the runner-up **{spot['runner_up']}** by {format_cell(spot['lead_over_runner_up'])} nats" in markdown
    assert ("so the lead is beyond seed noise" if spot["lead_beyond_noise"] else "so the lead is within seed noise") in markdown
    assert "two-sided 95% Student-t interval" in markdown
    assert "Layer type \"all\" is ranked by `final_loss`" in markdown  # Method taken from the analysis docstring


def test_failure_table_has_the_nan_run_with_its_values(study: dict, reports: dict) -> None:
    markdown = reports["failure_modes"].path.read_text()
    failed = study["failures"].filter(pl.col("failure_mode") != "none")
    assert failed["run_id"].to_list() == [NAN_RUN]
    [failure_table] = tables_with(markdown, "failure_step", "evidence", "recommendation")
    assert len(failure_table) == 1
    row, expected = failure_table[0], failed.row(0, named=True)
    for column in ("failure_step", "failure_stage", "last_finite_loss", "last_finite_loss_step"):
        assert row[column] == format_cell(expected[column])
    assert row["failure_mode"] == "nan\\_loss"
    assert row["evidence"] == escape_markdown(expected["failure_evidence"])
    assert row["recommendation"] == escape_markdown(expected["recommendation"])
    assert row["run"] == f"[{EVIL_ESCAPED}](https://wandb.ai/team/altgrad/runs/{NAN_RUN})"
    [trend_table] = tables_with(markdown, "ref_loss_slope")
    for column in ("loss_slope", "ref_loss_slope", "grad_norm_growth", "n_ref_runs"):
        assert trend_table[0][column] == format_cell(expected[column])
    assert "figures/failure_trace_altgrad-" in markdown and "_E7M0.png" in markdown


def test_manifold_table_and_wording(study: dict, reports: dict) -> None:
    markdown = reports["manifold_comparison"].path.read_text()
    stats = study["manifold"]
    [effect_table] = tables_with(markdown, "metric", "ci_low", "n_lower")
    assert_rows_match(effect_table, stats, ("fp8_format", "metric"), MANIFOLD_COLUMNS)
    effect_lines = [line for line in markdown.splitlines() if line.startswith("- ")]
    for row in stats.iter_rows(named=True):
        [line] = [line for line in effect_lines if line.startswith(f"- {row['fp8_format']} {row['metric'].replace('_', chr(92) + '_')}:")]
        if row["diff"] is None:
            assert "no values in at least one arm" in line
        else:  # every arm has fewer than 8 runs: observed counts, never a probability
            assert f"**{escape_markdown(row['verdict'])}**; observed difference {format_cell(row['diff'])}" in line
            assert f"in {row['n_lower']} of {row['n_pairs']} " in line
    assert "expected probability" not in markdown.lower()
    assert "probability" not in markdown.split("## Method")[0].replace("not probabilities", "")
    assert re.search(r"\*\*Intervals used\*\*: 95% (t paired|Welch t unpaired)", markdown)
    [verdicts] = [t for t in tables_with(markdown, "verdict", "diff_pct") if "metric" not in t[0]]
    expected_verdicts = stats.filter(pl.col("metric") == "final_loss").select("fp8_format", "verdict")
    assert {r["fp8_format"]: _unescape(r["verdict"]) for r in verdicts} == dict(expected_verdicts.iter_rows())
    assert "Excluded as not completed: 0 ManifoldAdamW and 1 AdamW runs." in markdown


def test_every_referenced_image_exists_and_results_list_them(reports: dict) -> None:
    for name in ("format_comparison", "failure_modes", "manifold_comparison"):
        result = reports[name]
        markdown = result.path.read_text()
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
        assert images, name
        assert {result.path.parent / i for i in images} == set(result.figure_paths)
        assert all(p.is_file() and p.stat().st_size > 1000 for p in result.figure_paths)
        assert result.main_figure == result.figure_paths[0]


def test_evil_run_name_is_escaped_everywhere(study: dict, reports: dict) -> None:
    reports_dir = reports["index"].path.parent
    link = run_link(study["raw_runs"].filter(pl.col("run_id") == EVIL_RUN).row(0, named=True), reports_dir)
    assert link == f"[{EVIL_ESCAPED}](https://wandb.ai/team/altgrad/runs/{EVIL_RUN})"
    markdown = reports["failure_modes"].path.read_text()
    assert markdown.count(EVIL_ESCAPED) == 2  # failed-runs table and trend table
    assert markdown.count("script") == 2
    assert '>| &lt;script&gt; ** [x](y)</a>' in reports["failure_modes"].html_path.read_text()
    for result in reports.values():
        html = result.html_path.read_text()
        assert "<script" not in html.lower()
        assert "<b>" not in html
    assert not any("script" in p.name or "|" in p.name for p in reports_dir.rglob("*"))


def test_local_runs_link_relative_to_the_report(study: dict, reports: dict) -> None:
    reports_dir = reports["index"].path.parent
    local = study["raw_runs"].filter(pl.col("url").is_null()).row(0, named=True)
    assert run_link(local, reports_dir) == f"[{local['name'].replace('-', chr(92) + '-')}](../runs/{local['run_id']})"
    outside = {**local, "location": "relative/dir"}
    assert run_link(outside, reports_dir).endswith("(relative/dir)")


def test_html_is_self_contained(reports: dict) -> None:
    for result in reports.values():
        html = result.html_path.read_text()
        sources = re.findall(r"""src="([^"]*)\"""", html)
        assert len(sources) == len(result.figure_paths)
        assert all(s.startswith("data:image/png;base64,") for s in sources)
        assert "<link" not in html and "@import" not in html
    index_html = reports["index"].html_path.read_text()
    assert 'href="format_comparison.html"' in index_html


def test_index_links_every_report_and_summarises_the_data(study: dict, reports: dict) -> None:
    markdown = reports["index"].path.read_text()
    for name in ("format_comparison", "failure_modes", "manifold_comparison"):
        assert f"]({name}.md)" in markdown
    assert "Built 2026-11-23 12:00:00 UTC." in markdown
    assert "Built from 24 runs (newest run update 2026-11-20 08:02:00 UTC)" in markdown
    [counts] = tables_with(markdown, "finished", "total")
    assert {r["fp8_format"]: r["total"] for r in counts} == {"BF16": "6", "E5M2": "6", "E3M4": "6", "E7M0": "6"}


def test_index_takes_any_list_of_entries(tmp_path: Path, study: dict) -> None:
    extra = tmp_path / "later" / "layer_health.md"
    extra.parent.mkdir()
    extra.write_text("# later\n")
    result = write_index([ReportEntry("Layer <health>", extra, "added later")], study["raw_runs"], tmp_path, built_at=BUILT_AT)
    assert "- [Layer &lt;health&gt;](later/layer_health.md): added later" in result.path.read_text()
    assert 'href="later/layer_health.html"' in result.html_path.read_text()


def test_no_placeholder_text(reports: dict) -> None:
    for result in reports.values():
        for path in (result.path, result.html_path):
            text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", path.read_text())
            assert not re.search(r"\b(tbd|todo|placeholder|lorem)\b", text, flags=re.IGNORECASE)


def test_empty_inputs_give_honest_sections(tmp_path: Path, study: dict) -> None:
    empty_runs = study["raw_runs"].clear()
    empty_history = study["histories"].clear()
    comparison = write_format_comparison_report(
        study["rankings"].clear(), empty_runs, empty_history, study["outcomes"].clear(), study["failures"].clear(), tmp_path
    )
    failures = write_failure_modes_report(study["failures"].clear(), empty_runs, empty_history, study["layer_metrics"].clear(), tmp_path)
    manifold = write_manifold_comparison_report(study["manifold"].clear(), study["manifold_per_run"].clear(), empty_runs, tmp_path)
    index = write_index([], empty_runs, tmp_path)
    assert "No runs with a known format have been ranked yet" in comparison.path.read_text()
    assert "No runs have been classified yet" in failures.path.read_text()
    for result in (comparison, failures, manifold):
        assert _last_section(result.path.read_text())[0] == "## Conclusions"
    assert "No format has runs with both AdamW and ManifoldAdamW yet" in manifold.path.read_text()
    assert "No reports have been built yet." in index.path.read_text()
    for result in (comparison, failures, manifold, index):
        assert result.figure_paths == () and result.main_figure is None
        assert "No runs have been ingested yet." in result.path.read_text()
        assert result.html_path.is_file()


def test_no_failures_says_so(tmp_path: Path, study: dict) -> None:
    healthy = study["failures"].filter(pl.col("failure_mode") == "none")
    result = write_failure_modes_report(healthy, study["raw_runs"], study["histories"], study["layer_metrics"], tmp_path)
    assert f"No failed runs yet: all {healthy.height} classified runs have failure mode `none`." in result.path.read_text()


def _last_section(markdown: str) -> tuple[str, str]:
    """The last level-2 heading and the text under it."""
    headings = list(re.finditer(r"^## .*$", markdown, flags=re.MULTILINE))
    return headings[-1].group(0), markdown[headings[-1].end() :].strip()


def test_three_analysis_reports_end_with_conclusions(reports: dict) -> None:
    for name in ("format_comparison", "failure_modes", "manifold_comparison"):
        heading, body = _last_section(reports[name].path.read_text())
        assert heading == "## Conclusions", name
        assert body.startswith(("- ", "**")), (name, body[:80])
    comparison = _last_section(reports["format_comparison"].path.read_text())[1]
    assert "- AdamW: **E3M4**" in comparison and "**Formats to avoid.**" in comparison
    assert "every FP8 format trails BF16 at step" in comparison  # the synthetic FP8 formats all trail BF16 by design
    failures = _last_section(reports["failure_modes"].path.read_text())[1]
    assert "- **E7M0**: with AdamW 1 of 3 runs fail by nan\\_loss" in failures and "Prevention:" in failures
    manifold = _last_section(reports["manifold_comparison"].path.read_text())[1]
    assert "Benefits most" in manifold or "No format benefits detectably" in manifold


def test_every_table_has_a_csv_twin_and_every_figure_an_svg_twin(reports: dict) -> None:
    for name, result in reports.items():
        markdown = result.path.read_text()
        reports_dir = result.path.parent
        blocks = re.findall(r"((?:^\|.*\n)+)\nTable as CSV: \[[^\]]*\]\(([^)]+)\)", markdown, flags=re.MULTILINE)
        assert len(blocks) == len(tables(markdown)), name  # every table is followed by its CSV link
        for block, link in blocks:
            csv = reports_dir / link
            assert csv.parent == reports_dir / "tables" and csv.is_file(), link
            assert pl.read_csv(csv).height == len(block.strip().splitlines()) - 2, link
        for figure in result.figure_paths:
            vector = figure.with_suffix(".svg")
            assert vector.is_file() and vector.read_bytes().startswith(b"<?xml"), figure
            assert f"Vector copy: [{escape_markdown(vector.name)}]" in markdown
    assert not any("script" in p.name for p in (reports["index"].path.parent / "tables").iterdir())


def test_no_tick_label_is_mathtext(reports: dict) -> None:
    """Every figure drawn for the reports (the log-scaled loss curves included) has plain tick labels."""
    assert any(stem.startswith("loss_curves_") for stem in TICK_LABELS)
    for stem, labels in TICK_LABELS.items():
        assert labels, stem
        assert not [label for label in labels if "$" in label], stem


def test_run_without_exit_record_has_its_own_heading(tmp_path: Path, study: dict) -> None:
    """A run still without an exit record is listed apart, with the minutes since its last write."""
    silent_id = "E5M2-AdamW-1"
    silent = pl.col("run_id") == silent_id
    failures = study["failures"].with_columns(
        pl.when(silent).then(pl.lit("no_exit_record")).otherwise(pl.col("failure_mode")).alias("failure_mode"),
        pl.when(silent).then(pl.lit(BUILT_AT - dt.timedelta(minutes=42))).otherwise(pl.col("last_write_at")).alias("last_write_at"),
    )
    result = write_failure_modes_report(failures, study["raw_runs"], study["histories"], study["layer_metrics"], tmp_path, built_at=BUILT_AT)
    markdown = result.path.read_text()
    section = markdown.split("### Runs without an exit record", 1)[1].split("###", 1)[0]
    assert "e5m2\\-adamw\\-s1" in section and "no exit record, silent for 42 minutes" in section
    assert f"last logged step {MAX_STEPS - 1} of max_steps {MAX_STEPS}" in section
    [failure_table] = tables_with(markdown, "failure_step", "evidence")
    assert all("e5m2" not in row["run"] for row in failure_table)
    assert "one AdamW run has no exit record (silent for 42 minutes)" in _last_section(markdown)[1]
    assert [minutes_text(n) for n in (0, 1, 2)] == ["0 minutes", "1 minute", "2 minutes"]
