"""Runs with W&B Tables and histograms written by the real wandb SDK (offline), and the exact
values they logged, for the media tests."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from altgrad_pipeline_tests.sdk import finish_and_flush

HEADS, POSITIONS = 3, 4
ODD_STRINGS = ("a|b", "<script>x</script>", "é\n\"quoted\"\ttab", "", "**bold** [x](y)", "中文", "\\back\\slash")


def attention_matrix(seed: int, step: int, head: int) -> np.ndarray:
    """A row-stochastic matrix with known values: the weight of query q on key k."""
    raw = np.arange(1, POSITIONS * POSITIONS + 1, dtype=float).reshape(POSITIONS, POSITIONS) * (head + 1) + seed + step
    return raw / raw.sum(axis=1, keepdims=True)


def mixed_rows(step: int) -> list[list[object]]:
    """Rows of the mixed table: a column named `key`, one named `step`, ints, floats (NaN
    included), bools, odd strings, a nested value and a column mixing ints and strings."""
    return [
        [ODD_STRINGS[i % len(ODD_STRINGS)], step * 10 + i, i * 0.5 if i != 2 else math.nan, i % 2 == 0, {"nested": [i, i + 1]}, i if i % 2 else f"s{i}"]
        for i in range(len(ODD_STRINGS))
    ]


MIXED_COLUMNS = ["key", "step", "score", "flag", "extra", "mixed"]


@dataclass
class LoggedRun:
    run_id: str
    config: dict[str, object]
    tables: dict[tuple[int, str], tuple[list[str], list[list[object]]]] = field(default_factory=dict)
    histograms: dict[tuple[int, str], tuple[list[float], list[float]]] = field(default_factory=dict)
    folder: Path | None = None


def write_media_run(root: Path, run_id: str, *, seed: int, lr: float, steps: int = 3) -> LoggedRun:
    """Logs per step: `attn/layer0` (matrix form, q0..q3 with a head column), `attn/long` (long
    form), `samples` (mixed columns), the `weights` histogram (bins given), `kl`, `val_loss`."""
    import wandb

    logged = LoggedRun(run_id, {"fp8_format": "E5M2", "seed": seed, "lr": lr})
    run = wandb.init(mode="offline", dir=str(root), project="media", id=run_id, name=f"media-{run_id}", config=logged.config)
    for step in range(steps):
        matrix_rows, long_rows = [], []
        for head in range(HEADS):
            m = attention_matrix(seed, step, head)
            for k in range(POSITIONS):
                matrix_rows.append([head, k, *(float(m[q, k]) for q in range(POSITIONS))])
            for q in range(POSITIONS):
                for k in range(POSITIONS):
                    long_rows.append([head, q, k, float(m[q, k])])
        matrix_columns = ["head", "pos", *(f"q{q}" for q in range(POSITIONS))]
        long_columns = ["head", "query", "key", "weight"]
        counts = [float(step + 1), 0.0, 2.5, 7.0]
        edges = [-1.0, -0.25, 0.0, 0.5 + step, 2.0 + step]
        row = {
            "attn/layer0": wandb.Table(columns=matrix_columns, data=matrix_rows),
            "attn/long": wandb.Table(columns=long_columns, data=long_rows),
            "samples": wandb.Table(columns=MIXED_COLUMNS, data=mixed_rows(step), allow_mixed_types=True),
            "weights": wandb.Histogram(np_histogram=(counts, edges)),
            "kl": 1.0 / (step + 1) + seed * 0.01,
            "val_loss": 3.0 - step * lr * 100,
        }
        run.log(row, step=step)
        logged.tables[(step, "attn/layer0")] = (matrix_columns, matrix_rows)
        logged.tables[(step, "attn/long")] = (long_columns, long_rows)
        logged.tables[(step, "samples")] = (MIXED_COLUMNS, mixed_rows(step))
        logged.histograms[(step, "weights")] = (edges, counts)
    finish_and_flush(run)
    (logged.folder,) = Path(root).glob(f"wandb/offline-run-*-{run_id}")
    return logged
