"""Sweep summary: the varying hyperparameters of the example study and of real run stores, and
statistics equal to scipy computed here."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from altgrad_pipeline.dynamics import sweeps
from altgrad_pipeline.examples import default_study
from altgrad_pipeline.ingest.tables import raw_runs_frame
from altgrad_pipeline.ingest.wandb_local import LocalWandbSource
from altgrad_pipeline_tests.dynamics.synthetic import curve_history, runs_frame


def test_example_study_varies_exactly_its_design_keys() -> None:
    specs = default_study()
    raw = runs_frame([s.config() for s in specs], run_ids=[str(i) for i in range(len(specs))], projects=["altgrad"] * len(specs), seeds=[s.seed for s in specs])
    # checkpoint_dir, run_name, tags and seed differ too, but they are noise
    assert sweeps.varying_keys(raw) == ["fp8_format", "log_bit_position", "max_steps", "use_fp8", "use_manifold_aware", "use_shadow"]
    groups = sweeps.sweep_groups(raw)
    assert groups["group_key"].n_unique() == 9  # 6 formats under AdamW + 3 under ManifoldAdamW; seeds collapse


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
    raw, histories, finals = _study({"0.1": 9, "0.01": 5})
    summary = sweeps.sweep_summary(raw, histories, n_resamples=999, seed=4)
    for lr, values in finals.items():
        row = summary.filter(pl.col("group_key") == json.dumps({"lr": float(lr)})).row(0, named=True)
        x = np.array(values)
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
        assert row["completeness"] == 1.0 and not row["low_n"]


def test_small_groups_get_no_interval_and_say_so() -> None:
    raw, histories, _ = _study({"0.1": 2, "0.01": 3})
    summary = sweeps.sweep_summary(raw, histories, min_n=3, n_resamples=199)
    small = summary.filter(pl.col("n_runs") == 2).row(0, named=True)
    assert small["low_n"] and small["ci_low"] is None and "fewer than 3" in small["ci_note"]
    assert not summary.filter(pl.col("n_runs") == 3).row(0, named=True)["low_n"]


def test_incomplete_and_diverged_runs_are_counted_not_averaged() -> None:
    raw, histories, finals = _study({"0.1": 4})
    cut = histories.filter(~((pl.col("run_id") == "lr0.1-s0") & (pl.col("step") >= 20)))
    diverged = cut.with_columns(pl.when((pl.col("run_id") == "lr0.1-s1") & (pl.col("step") == 39)).then(float("nan")).otherwise(pl.col("value")).alias("value"))
    row = sweeps.sweep_summary(raw, diverged, n_resamples=199).row(0, named=True)
    assert (row["n_runs"], row["n_complete"], row["n_diverged"], row["n_values"]) == (4, 3, 1, 2)
    assert row["completeness"] == pytest.approx((0.5 + 1 + 1 + 1) / 4, abs=1e-12)
    assert row["mean"] == pytest.approx(np.mean(finals["0.1"][2:]), abs=1e-9)


def test_display_names_from_yaml(tmp_path) -> None:
    path = tmp_path / "display.yaml"
    path.write_text("keys:\n  model.weights: Init\nvalues:\n  model.weights:\n    None: random\n    DEFAULT: pretrained\n")
    raw = runs_frame([{"model": {"weights": None}}, {"model": {"weights": "DEFAULT"}}], run_ids=["a", "b"], projects=["p", "p"], seeds=[1, 1])
    raw = raw.with_columns(pl.Series("config.model.weights", [None, "DEFAULT"], dtype=pl.String))
    labels = sweeps.sweep_groups(raw, display=sweeps.DisplayNames.from_yaml(path)).sort("run_id")["group_label"].to_list()
    assert labels == ["Init=random", "Init=pretrained"]


def test_projects_are_separate_studies() -> None:
    raw = runs_frame([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.1}, {"lr": 0.1}], run_ids=list("abcd"), projects=["p", "p", "q", "q"], seeds=[1, 1, 1, 2])
    groups = sweeps.sweep_groups(raw)
    assert groups.filter(pl.col("project") == "q")["varying_keys"][0].to_list() == []
    assert groups.filter(pl.col("project") == "p")["varying_keys"][0].to_list() == ["lr"]
