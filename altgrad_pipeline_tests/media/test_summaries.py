"""`run_summaries` against the same statistics computed independently with numpy, run by run."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from altgrad_pipeline.analysis.summaries import Threshold, final_count, run_summaries


def history() -> pl.DataFrame:
    """Three runs: one clean, one whose loss goes NaN for good (with an inf spike before), one
    with a sparse key logged every 7th step; steps are not evenly spaced."""
    rng = np.random.default_rng(4)
    rows = []
    steps = np.cumsum(rng.integers(1, 5, size=60))
    for run_id in ("clean", "nan_tail", "sparse"):
        loss = 4.0 * np.exp(-steps / 60.0) + rng.normal(0, 0.05, size=len(steps))
        if run_id == "nan_tail":
            loss[20] = math.inf
            loss[41:] = math.nan
        for step, value in zip(steps, loss):
            rows.append((run_id, int(step), "loss", float(value)))
        if run_id == "sparse":
            for step in steps[::7]:
                rows.append((run_id, int(step), "val/acc", float(step) / 100.0))
    frame = pl.DataFrame(rows, schema=["run_id", "step", "key", "value"], orient="row")
    return frame.with_columns(pl.lit(None, pl.Float64).alias("runtime"), pl.lit(None, pl.Float64).alias("timestamp"))


def expected(steps: np.ndarray, values: np.ndarray, fraction: float, below: float | None, above: float | None) -> dict:
    finite = np.isfinite(values)
    fs, fv = steps[finite], values[finite]
    k = final_count(len(values), fraction)
    tail = values[-k:]
    auc = np.trapezoid(fv, (fs - fs[0]) / (fs[-1] - fs[0])) if len(fs) > 1 else None
    first = lambda mask: int(steps[np.flatnonzero(mask)[0]]) if mask.any() else None  # noqa: E731
    return {
        "n_values": len(values), "n_finite": int(finite.sum()), "n_nan": int(np.isnan(values).sum()),
        "n_inf": int(np.isinf(values).sum()), "first_step": int(steps[0]), "last_step": int(steps[-1]),
        "last": float(values[-1]), "last_finite": float(fv[-1]), "min": float(fv.min()), "max": float(fv.max()),
        "argmin_step": int(fs[np.argmin(fv)]), "argmax_step": int(fs[np.argmax(fv)]),
        "final_mean": float(tail[np.isfinite(tail)].mean()) if np.isfinite(tail).any() else None, "auc": auc,
        "first_nan_step": first(np.isnan(values)), "first_inf_step": first(np.isinf(values)),
        "first_step_below": first(finite & (values < below)) if below is not None else None,
        "first_step_above": first(finite & (values > above)) if above is not None else None,
    }  # fmt: skip


def same(a: object, b: object) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    if isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-12)
    return a == b


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_run_summaries_match_numpy(fraction: float) -> None:
    frame = history()
    thresholds = [Threshold(r"^loss$", below=2.0, above=3.9), Threshold(r"acc", above=0.5)]
    got = run_summaries(frame.lazy(), final_fraction=fraction, thresholds=thresholds)
    assert got.height == 4
    for (run_id, key), group in frame.group_by("run_id", "key"):
        group = group.sort("step")
        below, above = (2.0, 3.9) if key == "loss" else (None, 0.5)
        want = expected(group["step"].to_numpy(), group["value"].to_numpy(), fraction, below, above)
        row = got.filter((pl.col("run_id") == run_id) & (pl.col("key") == key)).row(0, named=True)
        for name, value in want.items():
            assert same(row[name], value), (run_id, key, name, row[name], value)
        assert (row["threshold_below"], row["threshold_above"]) == (below, above)


def test_nan_never_wins_and_nan_start_is_reported() -> None:
    row = run_summaries(history()).filter(pl.col("run_id") == "nan_tail").row(0, named=True)
    assert math.isnan(row["last"]) and math.isfinite(row["min"]) and math.isfinite(row["max"])
    steps = history().filter(pl.col("run_id") == "nan_tail").sort("step")["step"].to_list()
    assert row["first_nan_step"] == steps[41] and row["first_inf_step"] == steps[20]
    assert row["final_mean"] is None  # the final 10 % are all NaN: no finite value to average


def test_no_history_gives_an_empty_frame() -> None:
    empty = history().clear()
    assert run_summaries(empty).height == 0


@pytest.mark.parametrize("thresholds", [[], [Threshold(r"^loss$", below=2.0, above=3.9)]])
def test_rows_in_step_order_or_not_and_run_by_run_or_not_summarise_alike(thresholds: list[Threshold]) -> None:
    """A run's rows in the catalog's (step, key) order are grouped by a sort on the key alone,
    rows in any other order by key and step, and several runs one run at a time: all the same."""
    frame = history()
    catalog_order = run_summaries(frame.sort("run_id", "step", "key"), thresholds=thresholds)
    assert run_summaries(frame.sample(fraction=1.0, shuffle=True, seed=7), thresholds=thresholds).equals(catalog_order)
    one_by_one = pl.concat([run_summaries(frame.filter(pl.col("run_id") == run), thresholds=thresholds) for run in ("clean", "nan_tail", "sparse")])
    assert one_by_one.equals(catalog_order)


def test_null_steps_sort_first_and_a_key_without_finite_values_has_no_finite_statistics() -> None:
    """A null step sorts before the key's other steps (as a group_by over rows sorted by step
    saw it): it is the key's first step, and a finite value there leaves the AUC undefined."""
    frame = pl.DataFrame(
        {"run_id": ["r"] * 5, "step": [None, 1, 3, 1, 2], "key": ["a", "a", "a", "b", "b"], "value": [5.0, 2.0, 1.0, math.nan, math.inf]}
    )
    a, b = run_summaries(frame).rows(named=True)
    assert (a["first_step"], a["last_step"], a["n_values"], a["n_finite"]) == (None, 3, 3, 3)
    assert (a["min"], a["argmin_step"], a["max"], a["argmax_step"], a["last"], a["auc"]) == (1.0, 3, 5.0, None, 1.0, None)
    assert (b["n_finite"], b["n_nan"], b["n_inf"], b["first_nan_step"], b["first_inf_step"]) == (0, 1, 1, 1, 2)
    assert b["last"] == math.inf and all(b[name] is None for name in ("last_finite", "min", "argmin_step", "max", "final_mean", "auc"))


def test_keys_whose_categorical_codes_lie_far_apart_summarise_as_alone() -> None:
    """Categorical codes are global to the process (while a column holds them): two keys interned
    70,000 codes apart (more than 16 bits) are made dense before the sort, with the same summaries
    as each key alone."""
    early = pl.Series(["far_apart/early"]).cast(pl.Categorical)
    between = pl.Series([f"far_apart/{i}" for i in range(70_000)]).cast(pl.Categorical)
    late = pl.Series(["far_apart/late"]).cast(pl.Categorical)
    assert late.to_physical().item() - early.to_physical().item() > between.len() >= 2**16
    frame = history().filter(pl.col("run_id") == "sparse").with_columns(
        pl.when(pl.col("key") == "loss").then(pl.lit("far_apart/early")).otherwise(pl.lit("far_apart/late")).alias("key")
    )
    together = run_summaries(frame)
    alone = pl.concat([run_summaries(frame.filter(pl.col("key") == key)) for key in ("far_apart/early", "far_apart/late")])
    assert together.height == 2 and together.equals(alone)
