"""Notebook helpers: run selection, differing config, curves aligned on step from Parquet."""

from __future__ import annotations

import numpy as np
import polars as pl

from altgrad_pipeline.notebook import differing_config, load_curves, select_runs
from altgrad_pipeline_tests.dynamics.synthetic import curve_history, runs_frame


def _runs() -> pl.DataFrame:
    return runs_frame(
        [{"lr": 1e-2, "opt": {"name": "adam"}, "seed": 1}, {"lr": 1e-4, "opt": {"name": "adam"}, "seed": 2}, {"lr": 1e-2, "opt": {"name": "sgd"}, "seed": 3}],
        run_ids=["a", "b", "c"], projects=["p"] * 3, seeds=[1, 2, 3], states=["finished", "finished", "crashed"],
        tags=[["fp8", "e5m2"], ["fp8"], ["bf16"]],
    )


def test_select_runs_by_config_tags_and_state() -> None:
    runs = _runs()
    assert select_runs(runs, pl.col("config.lr") > 1e-3)["run_id"].to_list() == ["a", "c"]
    assert select_runs(runs, pl.col("config.lr") > 1e-3, tags=["fp8"], state="finished")["run_id"].to_list() == ["a"]
    assert select_runs(runs, state=["crashed"])["run_id"].to_list() == ["c"]


def test_differing_config_lists_only_keys_that_differ() -> None:
    """Seeds, run names, paths and timestamps differ too, but they are the sweep detection's noise."""
    runs = _runs().with_columns(
        pl.Series("config.run_name", ["a", "b", "c"]), pl.Series("config.out_dir", ["/a", "/b", "/c"]), pl.Series("config.timestamp", ["1", "2", "3"])
    )
    frame = differing_config(runs.filter(pl.col("run_id").is_in(["a", "b"])))
    assert frame.columns == ["run_id", "name", "config.lr"]
    assert differing_config(runs).columns == ["run_id", "name", "config.lr", "config.opt.name"]
    assert differing_config(runs, noise_patterns=()).columns[2:] == ["config.lr", "config.opt.name", "config.out_dir", "config.run_name", "config.seed", "config.timestamp"]


def test_load_curves_aligns_runs_on_step(tmp_path) -> None:
    folder = tmp_path / "assets" / "run_histories"
    folder.mkdir(parents=True)
    curve_history("a", np.array([0, 1, 2]), np.array([3.0, 2.0, 1.0])).write_parquet(folder / "E5M2.parquet")
    pl.concat([curve_history("b", np.array([1, 2, 3]), np.array([5.0, 4.0, 3.0])), curve_history("b", np.array([1]), np.array([9.0]), key="val_loss")]).write_parquet(folder / "BF16.parquet")
    curves = load_curves(tmp_path, "loss")
    assert curves.columns == ["step", "a", "b"]
    assert curves.rows() == [(0, 3.0, None), (1, 2.0, 5.0), (2, 1.0, 4.0), (3, None, 3.0)]
    assert load_curves(pl.read_parquet(folder / "*.parquet"), "loss", run_ids=["b"]).columns == ["step", "b"]
