"""Sweep summary: the varying hyperparameters of the example study and of real run stores, and
statistics equal to scipy computed here."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from altgrad_pipeline.analysis import sweeps
from altgrad_pipeline.examples import default_study
from altgrad_pipeline.ingest.tables import raw_runs_frame
from altgrad_pipeline.ingest.wandb.local import LocalWandbSource
from altgrad_pipeline_tests.dynamics.synthetic import curve_history, runs_frame


def test_example_study_varies_exactly_its_design_keys() -> None:
    specs = default_study()
    raw = runs_frame([s.config() for s in specs], run_ids=[str(i) for i in range(len(specs))], projects=["altgrad"] * len(specs), seeds=[s.seed for s in specs])
    # checkpoint_dir, run_name, tags and seed differ too, but they are noise
    assert sweeps.varying_keys(raw) == ["fp8_format", "log_bit_position", "max_steps", "use_fp8", "use_manifold_aware", "use_shadow"]
    groups = sweeps.sweep_groups(raw)
    assert groups["group_key"].n_unique() == 9  # 6 formats under AdamW + 3 under ManifoldAdamW; seeds collapse


def test_example_study_labels_read_the_derived_format_and_optimizer() -> None:
    """The baseline's config says fp8_format=E5M2 with use_fp8=false: its label says BF16, and keys
    the condition determines (max_steps, use_shadow, log_bit_position) stay out of the label."""
    specs = default_study()
    raw = raw_runs_frame_of(specs)
    labels = sweeps.sweep_groups(raw).unique("group_key")["group_label"].to_list()
    assert "format=BF16, optimizer=AdamW" in labels and "format=E5M2, optimizer=ManifoldAdamW" in labels
    assert len(labels) == 9 and not any("use_" in label or "E5M2" in label and "BF16" in label for label in labels)
    override = sweeps.DisplayNames(keys={"fp8_format": "fmt"}, values={"fp8_format": {"BF16": "bf16 baseline"}})
    assert "fmt=bf16 baseline, optimizer=AdamW" in sweeps.sweep_groups(raw, display=override)["group_label"].to_list()


def raw_runs_frame_of(specs) -> pl.DataFrame:
    """raw_runs of example specs with the derived columns computed as ingest computes them."""
    configs = [s.config() for s in specs]
    base = runs_frame(configs, run_ids=[str(i) for i in range(len(specs))], projects=["altgrad"] * len(specs), seeds=[s.seed for s in specs])
    derived = raw_runs_frame([{"run_id": str(i), "name": s.run_name, "_config": c} for i, (s, c) in enumerate(zip(specs, configs))])
    return base.drop("fp8_format").join(derived.select("run_id", "fp8_format", "optimizer", "max_steps"), on="run_id")


def _corpus_runs(root) -> pl.DataFrame:
    source = LocalWandbSource(root)
    return raw_runs_frame([source.read(locator) for locator in source.discover()])


@pytest.mark.corpora
def test_very_simple_transformer_varies_optimizer_and_learning_rate(corpora_dir) -> None:
    raw = _corpus_runs(corpora_dir / "aorvieto__VerySimpleTransformer")
    groups = sweeps.sweep_groups(raw)
    # read by hand from the config.yaml files: one project, "Lion and Adam", sweeping the
    # optimizer (adam, adam_torch, lion, signum) and its learning rate
    assert groups["project"].unique().to_list() == ["Lion and Adam"]
    assert groups["varying_keys"][0].to_list() == ["optimizer.lr", "optimizer.method"]
    keys = {tuple(json.loads(k).values()) for k in groups["group_key"]}
    assert keys >= {(3e-4, "adam"), (3e-4, "adam_torch"), (3e-4, "lion"), (1e-3, "adam"), (3e-6, "signum"), (3e-5, "signum")}
    assert {m for _, m in keys} == {"adam", "adam_torch", "lion", "signum"}


@pytest.mark.corpora
def test_nanogpt_projects_vary_nothing_but_noise(corpora_dir) -> None:
    raw = _corpus_runs(corpora_dir / "jackokeefe11__nanoGPT")
    # by hand: the two projects differ in dataset/out_dir, but within each project only the
    # W&B run name and the CUDA device differ, and both are noise
    for project in ("enwik-char", "shakespeare-char"):
        part = raw.filter(pl.col("project") == project)
        assert sweeps.varying_keys(part) == []
    assert sweeps.varying_keys(raw.filter(pl.col("project") == "enwik-char"), patterns=()) == ["device", "wandb_run_name"]


def _study(n_per_group: dict[str, int], *, steps: int = 40, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    configs, run_ids, seeds, parts, finals = [], [], [], [], {}
    for lr, n in n_per_group.items():
        for s in range(n):
            run_id = f"lr{lr}-s{s}"
            values = 3.0 + rng.normal(0, 0.1, steps) + float(lr) * 10
            configs.append({"lr": float(lr), "seed": s, "run_name": run_id})
            run_ids.append(run_id)
            seeds.append(s)
            parts.append(curve_history(run_id, np.arange(steps), values))
            finals.setdefault(lr, []).append(float(np.mean(values[-sweeps.LAST_K:])))
    raw = runs_frame(configs, run_ids=run_ids, projects=["p"] * len(run_ids), seeds=seeds)
    return raw, pl.concat(parts), finals


def test_statistics_equal_scipy() -> None:
    """From 8 values BCa bootstrap intervals of mean and IQM; below 8 (ANAL-03's rule) the
    Student t interval of the mean and no IQM interval."""
    raw, histories, finals = _study({"0.1": 9, "0.01": 5})
    summary = sweeps.sweep_summary(raw, histories, n_resamples=999, seed=4)
    for lr, values in finals.items():
        row = summary.filter(pl.col("group_key") == json.dumps({"lr": float(lr)})).row(0, named=True)
        x = np.array(values)
        assert row["completeness"] == 1.0 and not row["low_n"]
        if len(x) < 8:
            t_ci = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
            assert row["ci_method"] == "t" and (row["ci_low"], row["ci_high"]) == pytest.approx(t_ci, abs=1e-9)
            assert row["iqm_ci_low"] is None and "Student t" in row["ci_note"]
            continue
        assert row["n_runs"] == row["n_seeds"] == row["n_values"] == len(x)
        assert row["mean"] == pytest.approx(np.mean(x), abs=1e-9)
        assert row["median"] == pytest.approx(np.median(x), abs=1e-9)
        assert row["iqm"] == pytest.approx(sps.trim_mean(x, 0.25), abs=1e-9)
        assert row["std"] == pytest.approx(np.std(x, ddof=1), abs=1e-9)
        mean_ci = sps.bootstrap((x,), np.mean, n_resamples=999, method="BCa", random_state=np.random.default_rng(4)).confidence_interval
        iqm_ci = sps.bootstrap((x,), lambda v, axis: sps.trim_mean(v, 0.25, axis=axis), n_resamples=999, method="BCa", random_state=np.random.default_rng(4)).confidence_interval
        assert row["ci_method"] == "BCa"
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean_ci.low, mean_ci.high), abs=1e-9)
        assert (row["iqm_ci_low"], row["iqm_ci_high"]) == pytest.approx((iqm_ci.low, iqm_ci.high), abs=1e-9)


def test_three_runs_get_a_t_interval_wider_than_their_range_and_one_run_none() -> None:
    raw, histories, finals = _study({"0.1": 1, "0.01": 3})
    summary = sweeps.sweep_summary(raw, histories, n_resamples=199)
    single = summary.filter(pl.col("n_runs") == 1).row(0, named=True)
    assert single["low_n"] and single["ci_low"] is None and single["ci_method"] == "none" and "fewer than 2" in single["ci_note"]
    three = summary.filter(pl.col("n_runs") == 3).row(0, named=True)
    assert three["ci_method"] == "t" and not three["low_n"]
    assert three["ci_low"] < min(finals["0.01"]) and three["ci_high"] > max(finals["0.01"])


def test_incomplete_and_diverged_runs_are_counted_not_averaged() -> None:
    raw, histories, finals = _study({"0.1": 4})
    cut = histories.filter(~((pl.col("run_id") == "lr0.1-s0") & (pl.col("step") >= 20)))
    diverged = cut.with_columns(pl.when((pl.col("run_id") == "lr0.1-s1") & (pl.col("step") == 39)).then(float("nan")).otherwise(pl.col("value")).alias("value"))
    row = sweeps.sweep_summary(raw, diverged, n_resamples=199).row(0, named=True)
    assert (row["n_runs"], row["n_complete"], row["n_diverged"], row["n_values"]) == (4, 3, 1, 2)
    assert row["completeness"] == pytest.approx((0.5 + 1 + 1 + 1) / 4, abs=1e-12)
    assert row["mean"] == pytest.approx(np.mean(finals["0.1"][2:]), abs=1e-9)


def test_completeness_is_against_the_planned_length() -> None:
    """Every run stopped at step 45 of a planned 500: 0.09 complete, none complete; a metric logged
    every 100 steps with its last value at 400 of 500 is complete; one never logged is not."""
    raw, histories, _ = _study({"0.1": 3}, steps=46)
    raw = raw.with_columns(pl.lit(500, pl.Int64).alias("max_steps"))
    evals = pl.concat([curve_history(r, np.arange(100, 401, 100), np.full(4, 3.0), key="val_loss") for r in raw["run_id"]])
    summary = sweeps.sweep_summary(raw, pl.concat([histories, evals.filter(pl.col("run_id") != "lr0.1-s0")]), n_resamples=199)
    loss = summary.filter(pl.col("metric") == "loss").row(0, named=True)
    assert loss["completeness"] == pytest.approx(46 / 500) and loss["n_complete"] == 0 and loss["n_logged"] == 3
    assert loss["expected_steps"] == 500 and loss["n_values"] == 0 and loss["ci_method"] == "none"
    val = summary.filter(pl.col("metric") == "val_loss").row(0, named=True)
    assert (val["n_logged"], val["n_complete"]) == (2, 2) and val["completeness"] == pytest.approx(2 / 3)


def test_display_names_from_yaml(tmp_path) -> None:
    path = tmp_path / "display.yaml"
    path.write_text("keys:\n  model.weights: Init\nvalues:\n  model.weights:\n    None: random\n    DEFAULT: pretrained\n")
    raw = runs_frame([{"model": {"weights": None}}, {"model": {"weights": "DEFAULT"}}], run_ids=["a", "b"], projects=["p", "p"], seeds=[1, 1])
    raw = raw.with_columns(pl.Series("config.model.weights", [None, "DEFAULT"], dtype=pl.String))
    labels = sweeps.sweep_groups(raw, display=sweeps.DisplayNames.from_yaml(path)).sort("run_id")["group_label"].to_list()
    assert labels == ["Init=random", "Init=pretrained"]
    assert sweeps.DisplayNames.from_yaml(path).key("fp8_format") == "format"  # the defaults stay under the file


def test_projects_are_separate_studies() -> None:
    raw = runs_frame([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.1}, {"lr": 0.1}], run_ids=list("abcd"), projects=["p", "p", "q", "q"], seeds=[1, 1, 1, 2])
    groups = sweeps.sweep_groups(raw)
    assert groups.filter(pl.col("project") == "q")["varying_keys"][0].to_list() == []
    assert groups.filter(pl.col("project") == "p")["varying_keys"][0].to_list() == ["lr"]
