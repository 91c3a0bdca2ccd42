"""Figure style and builders: one colour per format in every figure, the loss-curve band values,
the failure-trace series, file-name guards, and None (not an empty plot) when there is no data."""

from __future__ import annotations

import errno
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
import pytest
from matplotlib.colors import to_hex
from scipy import stats as sps

import altgrad_pipeline.reports.figures as figures_module
from altgrad_pipeline.analysis import curves, fits
from altgrad_pipeline.analysis.report_series import (
    failure_trace_series,
    loss_curve_summary,
    loss_curve_view,
    reference_trace_means,
)
from altgrad_pipeline.analysis.training import training_dynamics
from altgrad_pipeline.atomic import OutOfSpaceError
from altgrad_pipeline.reports import training_dynamics as dynamics_report
from altgrad_pipeline.reports.figures import (
    failure_trace_figure,
    figure_path,
    loss_curves_figure,
    paired_seed_figure,
    score_heatmap_figure,
)
from altgrad_pipeline.reports.style import (
    FIGURE_DPI,
    FORMAT_COLOURS,
    PNG_COMPRESS_LEVEL,
    checked_format_name,
    format_colour,
    new_figure,
    ordered_formats,
    plain_log_ticks,
    report_style,
    save_figure,
)
from altgrad_pipeline_tests.dynamics.synthetic import curve_history, runs_frame

HISTORY_SCHEMA = {"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64}
LAYER_SCHEMA = {"run_id": pl.String, "step": pl.Int64, "metric": pl.String, "layer_type": pl.String, "quantized": pl.Boolean, "value": pl.Float64}


def _history(rows: list[tuple[str, int, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=HISTORY_SCHEMA, orient="row")


def _line_colours(axes) -> dict[str, str]:
    """label -> hex colour of every labelled line in the axes."""
    return {line.get_label(): to_hex(line.get_color()) for line in axes.get_lines() if not line.get_label().startswith("_")}


def test_backend_is_agg_and_colours_are_fixed() -> None:
    assert matplotlib.get_backend().lower() == "agg"
    assert list(FORMAT_COLOURS) == ["BF16", "E5M2", "E3M4", "E1M6", "E0M7", "E7M0"]
    assert len(set(FORMAT_COLOURS.values())) == len(FORMAT_COLOURS)
    assert format_colour("E5M2") == FORMAT_COLOURS["E5M2"] == "#0072B2"
    assert format_colour("E2M5") == format_colour("E2M5")  # unknown formats: stable fallback
    assert format_colour("E2M5") not in FORMAT_COLOURS.values()
    assert ordered_formats(["E7M0", "E2M5", "BF16", "E5M2", None]) == ["BF16", "E5M2", "E7M0", "E2M5"]


def test_format_names_are_guarded_in_file_names(tmp_path: Path) -> None:
    assert checked_format_name("E5M2") == "E5M2"
    assert checked_format_name("E4M3-FNUZ") == "E4M3-FNUZ"  # the sensor's partition keys are the reports' names
    for bad in ("../E5M2", "E5M2/x", ".E5M2", "E5 M2", "E5M2\n", ""):
        with pytest.raises(ValueError):
            checked_format_name(bad)
    path = figure_path(tmp_path, "failure_trace", project="team/<alt grad>", fp8_format="E7M0")
    assert path.parent == tmp_path
    assert path.name.startswith("failure_trace_team_alt_grad-") and path.name.endswith("_E7M0.png")


def test_save_figure_writes_png_at_the_report_dpi(tmp_path: Path) -> None:
    with report_style():
        figure, axes = new_figure()
        axes.plot([1, 2], [1, 2])
    written = save_figure(figure, tmp_path / "deep" / "plot.png")
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.get_axes() == []  # released
    width = int.from_bytes(written.read_bytes()[16:20], "big")
    assert width == round(7.5 * FIGURE_DPI)


def _svg_root(svg: str) -> dict[str, str]:
    """The attributes of an SVG's root element that set its physical size and its coordinates."""
    root = re.search(r"<svg [^>]*>", svg).group(0)
    return {name: re.search(rf'{name}="([^"]*)"', root).group(1) for name in ("width", "height", "viewBox")}


#: Each text of a matplotlib SVG: its comment, then the group that moves it into place.
SVG_TEXT = re.compile(r'<!-- (.*?) -->\s*<g[^>]*transform="translate\(([-0-9.e]+) ([-0-9.e]+)\)')


def test_save_figure_lays_out_once_and_draws_the_png_and_the_svg_in_one_pass(tmp_path: Path) -> None:
    """The PNG is the one `savefig` lays out itself with the constrained-layout engine, byte for
    byte; the SVG, drawn in the same pass, has the size and coordinates in points `savefig` gives
    it and the same texts, each placed within 6 pt of where `savefig` drawing the SVG at the PNG's
    layout puts it (text is placed by the PNG's metrics); the ticks fixed after the layout are the
    ones each draw would compute: an offset label, log ticks with plain labels, shared x-axes."""

    def build():
        with report_style():
            figure, (linear, logarithmic) = new_figure(2, 1, panel_size=(6.0, 2.5))
            linear.sharex(logarithmic)
            linear.plot([1, 2, 3], [1e5 + 1e-3, 1e5 + 2e-3, 1e5 + 1.5e-3], label="E5M2, weight decay 0.1, learning rate 3e-4 · n≤5 · diverged")
            logarithmic.plot([1, 2, 3], [3.0, 1.5, 1.2])
            logarithmic.set_xscale("log")
            plain_log_ticks(logarithmic.xaxis)
            linear.set_title("loss per group, mean and 95% t band over seeds")
            figure.legend(loc="outside right upper")
        return figure

    saved = save_figure(build(), tmp_path / "laid_out_once.png")
    reference, own_svg_layout = build(), build()
    with matplotlib.rc_context({"svg.hashsalt": "altgrad-pipeline"}):
        reference.savefig(tmp_path / "reference.png", dpi=FIGURE_DPI, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
        reference.set_layout_engine("none")
        reference.savefig(tmp_path / "reference.svg", metadata={"Date": None})
        own_svg_layout.savefig(tmp_path / "own_layout.svg", metadata={"Date": None})
    assert reference.axes[0].get_position().bounds != pytest.approx(own_svg_layout.axes[0].get_position().bounds, abs=1e-3)
    assert reference.axes[0].yaxis.get_offset_text().get_text() == "+1.00000001e5"
    assert saved.read_bytes() == (tmp_path / "reference.png").read_bytes()
    svg = saved.with_suffix(".svg").read_text()
    reference_svg = (tmp_path / "reference.svg").read_text()
    assert _svg_root(svg) == _svg_root(reference_svg) == {"width": "432pt", "height": "360pt", "viewBox": "0 0 432 360"}
    texts, reference_texts = SVG_TEXT.findall(svg), SVG_TEXT.findall(reference_svg)
    assert [text for text, _, _ in texts] == [text for text, _, _ in reference_texts]
    assert "+1.00000001e5" in [text for text, _, _ in texts]
    for (_, x, y), (_, reference_x, reference_y) in zip(texts, reference_texts, strict=True):
        assert float(x) == pytest.approx(float(reference_x), abs=6) and float(y) == pytest.approx(float(reference_y), abs=6)


def test_save_figure_draws_images_meshes_collections_and_clipped_artists_as_savefig_does(tmp_path: Path) -> None:
    """Every kind of primitive the report figures draw goes to both files: an image and its
    colour bar (a mesh), a filled band (a path collection), markers, a clipped line and text: the
    PNG equals `savefig`'s, the SVG embeds the image at the same size in points."""

    def build():
        with report_style():
            figure, (heatmap, curves_axes) = new_figure(1, 2, panel_size=(3.5, 2.5))
            image = heatmap.imshow(np.arange(12.0).reshape(3, 4), cmap="viridis", aspect="auto")
            figure.colorbar(image, ax=heatmap, label="mean rank")
            heatmap.text(1, 1, "5.0", ha="center", va="center", fontsize=8, color="white")
            steps = np.arange(20.0)
            curves_axes.fill_between(steps, np.sin(steps) - 0.3, np.sin(steps) + 0.3, alpha=0.18, linewidth=0)
            curves_axes.plot(steps, np.sin(steps), marker="o", markevery=5)
            curves_axes.plot(steps, 3 * np.cos(steps), linestyle="--")  # runs past the view: clipped
            curves_axes.set_ylim(-1.5, 1.5)
            curves_axes.scatter([3.0, 9.0], [0.5, -0.5], marker="X", s=60, zorder=3)
        return figure

    saved = save_figure(build(), tmp_path / "primitives.png")
    reference = build()
    with matplotlib.rc_context({"svg.hashsalt": "altgrad-pipeline"}):
        reference.savefig(tmp_path / "reference.png", dpi=FIGURE_DPI, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
        reference.set_layout_engine("none")
        reference.savefig(tmp_path / "reference.svg", metadata={"Date": None})
    assert saved.read_bytes() == (tmp_path / "reference.png").read_bytes()
    svg, reference_svg = saved.with_suffix(".svg").read_text(), (tmp_path / "reference.svg").read_text()
    assert _svg_root(svg) == _svg_root(reference_svg)
    # The image and the colour bar's mesh (drawn rasterised), each resampled at the PNG's dpi: the
    # same place and size in points up to a pixel and a half (resampling and cropping round).
    image_place = re.compile(r'<image [^>]*?x="([-0-9.]+)" y="([-0-9.]+)" width="([0-9.]+)" height="([0-9.]+)"')
    places, reference_places = image_place.findall(svg), image_place.findall(reference_svg)
    assert len(places) == len(reference_places) == 2
    for place, reference_place in zip(places, reference_places, strict=True):
        assert [float(v) for v in place] == pytest.approx([float(v) for v in reference_place], abs=1.5 * 72 / FIGURE_DPI)
    for element in ("<clipPath", "<use", "<image"):
        assert svg.count(element) == reference_svg.count(element)


def test_loss_curve_summary_is_a_t_interval_over_finite_values() -> None:
    histories = _history(
        [
            ("a", 1, "loss", 2.0), ("b", 1, "loss", 3.0), ("c", 1, "loss", 4.0),
            ("a", 2, "loss", 1.0), ("b", 2, "loss", float("nan")), ("c", 2, "loss", 2.0),
            ("a", 3, "loss", 0.5), ("c", 3, "train/loss", 9.0),
        ]
    )
    runs = pl.DataFrame({"run_id": ["a", "b", "c"], "fp8_format": ["E5M2"] * 3})
    summary = loss_curve_summary(histories, runs)
    step1 = summary.filter(pl.col("step") == 1).row(0, named=True)
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert step1["n_runs"] == 3 and step1["mean"] == pytest.approx(3.0)
    assert (step1["ci_low"], step1["ci_high"]) == pytest.approx((3.0 - half, 3.0 + half))
    step2 = summary.filter(pl.col("step") == 2).row(0, named=True)
    assert step2["n_runs"] == 2 and step2["mean"] == pytest.approx(1.5)  # the NaN is left out
    step3 = summary.filter(pl.col("step") == 3).row(0, named=True)
    assert step3["n_runs"] == 1 and step3["ci_low"] is None  # train/loss ignored where loss exists


def test_same_format_same_colour_in_two_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """E5M2 is drawn in its fixed colour in the loss curves and in the failure trace."""
    curves = pl.DataFrame(
        {"fp8_format": ["E5M2", "E5M2", "BF16", "BF16"], "step": [1, 2, 1, 2], "n_runs": [1, 1, 1, 1],
         "mean": [3.0, 2.0, 2.5, 1.5], "ci_low": [None] * 4, "ci_high": [None] * 4},
        schema_overrides={"ci_low": pl.Float64, "ci_high": pl.Float64},
    )
    drawn: dict[str, dict[str, str]] = {}
    drawn_lines: dict[str, list] = {}
    original = figures_module.save_figure

    def capture(figure, path):
        drawn[Path(path).stem] = {k: v for ax in figure.get_axes() for k, v in _line_colours(ax).items()}
        drawn_lines[Path(path).stem] = [line for ax in figure.get_axes() for line in ax.get_lines()]
        return original(figure, path)

    monkeypatch.setattr(figures_module, "save_figure", capture)
    assert loss_curves_figure(curves, loss_curve_view(curves), tmp_path / "curves.png", title="t") is not None
    trace = pl.DataFrame({"run_id": ["bad", "bad"], "step": [0, 5], "series": ["loss"] * 2, "value": [3.0, 9.0]})
    failed = pl.DataFrame({"run_id": ["bad"], "optimizer": ["AdamW"], "failure_step": [5], "trend_start_step": [0]})
    reference = pl.DataFrame(
        {"fp8_format": ["E5M2"] * 2, "optimizer": ["AdamW"] * 2, "series": ["loss"] * 2, "step": [0, 5], "value": [3.0, 2.0]}
    )
    assert failure_trace_figure(trace, failed, reference, tmp_path / "trace.png", fp8_format="E7M0") is not None
    trace_lines = {to_hex(line.get_color()) for line in drawn_lines["trace"]}
    assert drawn["curves"]["E5M2 (n ≤ 1)"] == format_colour("E5M2").lower()
    assert {format_colour("E5M2").lower(), format_colour("E7M0").lower()} <= trace_lines
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "trace.png").is_file()


def test_failure_trace_series_excludes_embeddings_and_unquantised(tmp_path: Path) -> None:
    histories = _history(
        [("r", 0, "loss", 3.0), ("r", 0, "grad_norm", 1.0), ("r", 0, "bit_stall_rate", 0.2), ("r", 0, "quantization/bit_stall_rate", 0.3)]
    )
    layers = pl.DataFrame(
        {
            "run_id": ["r"] * 4,
            "step": [0] * 4,
            "metric": ["dead_neuron_frac"] * 4,
            "layer_type": ["embedding", "attention", "mlp", "norm"],
            "quantized": [True, True, True, False],
            "value": [0.9, 0.1, 0.3, 0.8],
        }
    )
    trace = failure_trace_series(histories, layers, ["r"])
    values = dict(zip(trace["series"], trace["value"], strict=True))
    assert values == {"loss": 3.0, "grad_norm": 1.0, "bit_stall_rate": 0.3, "dead_neuron_frac_ex_embedding": pytest.approx(0.2)}


def test_failure_trace_series_finds_each_runs_own_loss_key_once_per_run() -> None:
    """Run by run, as the whole study at once would: `a` logs both loss keys (its `loss` is the
    series), `b` only `train/loss`; a run named twice or not logged adds nothing."""
    histories = _history([("a", 0, "loss", 3.0), ("a", 0, "train/loss", 9.0), ("a", 1, "loss", 2.5), ("b", 0, "train/loss", 4.0)])
    trace = failure_trace_series(histories.lazy(), pl.LazyFrame(schema=LAYER_SCHEMA), ["b", "a", "b", "absent"])
    assert trace.rows() == [("a", 0, "loss", 3.0), ("a", 1, "loss", 2.5), ("b", 0, "loss", 4.0)]


def test_reference_trace_means_average_finite_values_per_format_and_optimizer() -> None:
    """The thick lines of a failure trace: per format, optimizer, series and step, the mean of the
    reference runs' finite values (a NaN leaves its run out of that step's mean)."""
    histories = _history(
        [("e1", 0, "loss", 2.0), ("e1", 1, "loss", float("nan")), ("e2", 0, "train/loss", 4.0), ("e2", 1, "train/loss", 3.0),
         ("m1", 0, "loss", 5.0), ("b1", 0, "loss", 1.0), ("b1", 0, "grad_norm", 0.5)]
    )  # fmt: skip
    layers = pl.DataFrame(
        [("e1", 0, "dead_neuron_frac", "mlp", True, 0.2), ("e2", 0, "dead_neuron_frac", "mlp", True, 0.4),
         ("e2", 0, "dead_neuron_frac", "embedding", True, 0.9)],
        schema=LAYER_SCHEMA, orient="row",
    )  # fmt: skip
    references = pl.DataFrame(
        {"run_id": ["b1", "e1", "m1", "e2"], "fp8_format": ["BF16", "E5M2", "E5M2", "E5M2"],
         "optimizer": ["AdamW", "AdamW", "ManifoldAdamW", "AdamW"]}
    )  # fmt: skip
    means = reference_trace_means(histories.lazy(), layers.lazy(), references)
    assert means.rows() == [
        ("BF16", "AdamW", "grad_norm", 0, 0.5),
        ("BF16", "AdamW", "loss", 0, 1.0),
        ("E5M2", "AdamW", "dead_neuron_frac_ex_embedding", 0, pytest.approx(0.3)),
        ("E5M2", "AdamW", "loss", 0, 3.0),
        ("E5M2", "AdamW", "loss", 1, 3.0),
        ("E5M2", "ManifoldAdamW", "loss", 0, 5.0),
    ]


def test_builders_return_none_without_data(tmp_path: Path) -> None:
    empty_curves = pl.DataFrame(schema={"fp8_format": pl.String, "step": pl.Int64, "n_runs": pl.Int64, "mean": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64})
    assert loss_curve_view(empty_curves) is None
    assert loss_curves_figure(empty_curves, None, tmp_path / "a.png", title="t") is None
    rankings = pl.DataFrame({"fp8_format": ["BF16"], "layer_type": ["mlp"], "health_score": [None], "n_completed": [3]}, schema_overrides={"health_score": pl.Float64})
    assert score_heatmap_figure(rankings, tmp_path / "b.png", score_column="health_score", score_label="s", layer_types=["mlp"], lower_is_better=True) is None
    per_run = pl.DataFrame({"fp8_format": ["E5M2"], "optimizer": ["AdamW"], "seed": [0], "value": [float("nan")]})
    assert paired_seed_figure(per_run, tmp_path / "c.png", metric_label="m", optimizers=("AdamW", "ManifoldAdamW")) is None
    trace = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "series": pl.String, "value": pl.Float64})
    failed = pl.DataFrame({"run_id": ["x"], "optimizer": ["AdamW"], "failure_step": [3], "trend_start_step": [0]})
    no_references = pl.DataFrame(schema={"run_id": pl.String, "fp8_format": pl.String, "optimizer": pl.String})
    reference = reference_trace_means(pl.DataFrame(schema=HISTORY_SCHEMA), pl.DataFrame(schema=LAYER_SCHEMA), no_references)
    assert failure_trace_figure(trace, failed, reference, tmp_path / "d.png", fp8_format="E7M0") is None
    assert list(tmp_path.iterdir()) == []


def test_paired_seed_figure_draws_one_line_per_seed(tmp_path: Path) -> None:
    per_run = pl.DataFrame(
        {
            "fp8_format": ["E2M5"] * 5,
            "optimizer": ["AdamW", "ManifoldAdamW", "AdamW", "ManifoldAdamW", "ManifoldAdamW"],
            "seed": [0, 0, 1, 1, 2],
            "value": [2.0, 1.9, 2.1, 2.05, 1.8],
        }
    )
    path = paired_seed_figure(per_run, tmp_path / "p.png", metric_label="final loss (nats)", optimizers=("AdamW", "ManifoldAdamW"))
    assert path is not None and path.is_file()


def test_dollar_signs_in_run_names_stay_literal(tmp_path):
    """`$` in a run name must not become a (possibly broken) mathtext formula."""
    from altgrad_pipeline.reports.style import new_figure, report_style, save_figure

    with report_style():
        figure, axes = new_figure()
        title = axes.set_title("run $x_1$ costs $5 and $")
        assert title.get_parse_math() is False
        save_figure(figure, tmp_path / "dollars.png")
    assert (tmp_path / "dollars.png").stat().st_size > 0


def _curve(fp8_format: str, values: list[float]) -> pl.DataFrame:
    return pl.DataFrame(
        {"fp8_format": fp8_format, "step": list(range(1, len(values) + 1)), "n_runs": 3, "mean": values, "ci_low": None, "ci_high": None},
        schema_overrides={"ci_low": pl.Float64, "ci_high": pl.Float64},
    )


def test_headline_loss_figure_is_framed_by_the_formats_that_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A format that blows up to ~50 does not squash the others: the y range is theirs, the blow-up is
    marked where it leaves the frame, the zoom panel shows the last steps, and no tick label is mathtext."""
    steps = 100
    trains = [10.0 - 5.0 * step / steps for step in range(steps)]
    summary = pl.concat([_curve("BF16", trains), _curve("E5M2", [v + 0.3 for v in trains]), _curve("E7M0", [10.5 + 0.01 * s**2 for s in range(40)])])
    view = loss_curve_view(summary)
    assert view is not None and view.diverging == ("E7M0",)
    assert view.y_range[1] < 12 and view.y_range[0] < 5.0
    [exit_row] = view.exits.iter_rows(named=True)
    assert exit_row["fp8_format"] == "E7M0" and exit_row["peak"] == pytest.approx(10.5 + 0.01 * 39**2)
    assert view.zoom_steps == (80, 100)
    figures: list = []
    original = figures_module.save_figure
    monkeypatch.setattr(figures_module, "save_figure", _drawing_saver(figures, original))
    path = loss_curves_figure(summary, view, tmp_path / "loss.png", title="t")
    assert path is not None and path.with_suffix(".svg").is_file()
    overview, zoom = figures[0]
    assert overview["xscale"] == "log" and overview["ylim"] == pytest.approx(view.y_range)
    assert zoom["xlim"] == pytest.approx(view.zoom_steps)
    assert any("E7M0 diverges" in text for text in overview["texts"])
    labels = overview["labels"] + zoom["labels"]
    assert "10" in labels and not [label for label in labels if "$" in label]


def _drawing_saver(figures: list, original):
    """A save_figure that draws the figure and records what each of its axes shows before saving it."""

    def save(figure, path):
        figure.canvas.draw()
        figures.append([
            {
                "xscale": axes.get_xscale(), "xlim": axes.get_xlim(), "ylim": axes.get_ylim(), "texts": [t.get_text() for t in axes.texts],
                "labels": [label.get_text() for axis in (axes.xaxis, axes.yaxis) for label in axis.get_ticklabels(which="both")],
            }
            for axes in figure.get_axes()
        ])  # fmt: skip
        return original(figure, path)

    return save


def test_fit_panel_of_a_diverged_run_says_why_it_has_no_asymptote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that diverged with no decay identified before its first NaN: its panel says there is no
    asymptote and why, in the lower left, clear of the run-up and the divergence marker at the right;
    a run that trains keeps its asymptote in the top right."""
    rng = np.random.default_rng(7)
    steps = np.arange(0, 300)
    trains = fits.power_law(steps + 1.0, 6.0, 0.8, 2.0) + rng.normal(0, 0.02, steps.size)
    # falls, then climbs steeply into its first NaN (the example study's E7M0 shape): no decay is identified
    diverges = np.where(steps < 37, 13.5 - 0.07 * steps + rng.normal(0, 0.05, steps.size) + 200.0 * np.exp(steps - 36.0), np.nan)
    histories = pl.concat([curve_history("trains", steps, trains), curve_history("diverges", steps, diverges)])
    dynamics = training_dynamics(runs_frame([{}, {}], run_ids=["trains", "diverges"], projects=["p", "p"], seeds=[1, 1]), histories)
    selected = {r["run_id"]: r for r in dynamics.filter(pl.col("selected")).iter_rows(named=True)}
    assert selected["diverges"]["asymptote"] is None and selected["diverges"]["first_nonfinite_step"] == 37
    assert selected["trains"]["asymptote"] is not None
    texts: dict[str, tuple[float, float, str, str]] = {}
    original = dynamics_report.save_figure

    def capture(figure, path):
        texts.update({t.get_text(): (*t.get_position(), t.get_ha(), t.get_va()) for ax in figure.get_axes() for t in ax.texts})
        return original(figure, path)

    monkeypatch.setattr(dynamics_report, "save_figure", capture)
    series = curves.curve_series(histories).collect()
    chosen = {"trains": "trains", "diverges": "diverges"}
    assert dynamics_report.fit_figure(dynamics, series, tmp_path / "fits.png", metric="loss", chosen=chosen) is not None
    diverged_label = f"selected: {selected['diverges']['model']}\nno asymptote: decay at its bound"
    assert texts[diverged_label] == (0.02, 0.04, "left", "bottom")
    trained_label = f"selected: {selected['trains']['model']}\nasymptote {dynamics_report.format_cell(selected['trains']['asymptote'])}"
    assert texts[trained_label] == (0.98, 0.95, "right", "top")


def test_a_full_disk_while_saving_a_figure_names_the_file_and_leaves_no_part_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PNG is written after the SVG: a full disk then names the PNG, the SVG is whole and no
    temp file is left; a full disk while the SVG is drawn names the SVG and writes neither."""
    def build():
        with report_style():
            figure, axes = new_figure()
            axes.plot([1, 2], [1, 2])
        return figure

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(matplotlib.image, "imsave", no_space)
        with pytest.raises(OutOfSpaceError) as full:
            save_figure(build(), tmp_path / "png_fails.png")
    assert full.value.path == tmp_path / "png_fails.png"
    assert (tmp_path / "png_fails.svg").read_text().rstrip().endswith("</svg>")
    with monkeypatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, "draw", no_space)
        with pytest.raises(OutOfSpaceError) as full:
            save_figure(build(), tmp_path / "svg_fails.png")
    assert full.value.path == tmp_path / "svg_fails.svg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["png_fails.svg"]
