"""W&B history exports (Parquet) read locally."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from altgrad_pipeline.ingest.wandb.export import WandbExportSource


def test_export_folder_is_one_run_with_every_value(tmp_path: Path) -> None:
    folder = tmp_path / "run-abc123-history"
    folder.mkdir()
    pl.DataFrame(
        {"_step": [0, 1, 2], "_runtime": [0.5, 1.0, 1.5], "_timestamp": [1.7e9, 1.7e9 + 1, 1.7e9 + 2],
         "loss": [1.0, math.nan, math.inf], "grad_norm_l2/w": [None, -math.inf, 3.0], "caption": ["a", "b", "c"]}
    ).write_parquet(folder / "0000.parquet")  # fmt: skip
    pl.DataFrame({"_step": [3], "loss": [0.25]}).write_parquet(folder / "0001.parquet")
    (folder / "config.yaml").write_text("fp8_format:\n  value: E5M2\n_wandb:\n  value: {}\n")
    source = WandbExportSource(tmp_path)

    [locator] = source.discover()
    run = source.read(locator)

    assert run.run_id == "abc123-export" and run.source == "wandb-export" and run.config == {"fp8_format": "E5M2"}
    got = {(k, s): v for k, s, v in run.history.filter(pl.col("text").is_null()).select("key", "step", "value").iter_rows()}
    assert got[("loss", 0)] == 1.0 and math.isnan(got[("loss", 1)]) and got[("loss", 2)] == math.inf
    assert got[("grad_norm_l2/w", 1)] == -math.inf and got[("loss", 3)] == 0.25 and len(got) == 6
    captions = run.history.filter(pl.col("key") == "caption").select("step", "value", "text").rows()
    assert captions == [(0, None, "a"), (1, None, "b"), (2, None, "c")]  # a string column is history, in `text`
    assert run.value_types == {}
    assert run.issues == []
