"""How each run actually ended, judged from its logged data rather than the tracker state.

A NaN stop in altgrad's Trainer breaks the loop and finishes the W&B run cleanly, so the tracker
says `finished` for runs that diverged; only the history tells. Outcomes, first match wins:

- `running`: the tracker says the run is still live (its history is still growing).
- `nan_stopped`: the last logged loss is NaN or +-inf, or `param_nan_count` > 0 was logged and the
  run ended before `max_steps - 1`.
- `completed`: the last logged step (any key) is >= `max_steps - 1` and the last loss is finite.
  (Classification runs log the loss every 50 steps but a final eval at `step = max_steps`, so the
  last step over all keys, not the last loss step, decides.)
- `killed`: the tracker state is `crashed` or `killed` (the process vanished without an exit).
- `incomplete`: anything else not shown to have finished: it ended early with a finite loss
  (including tracker state `failed`), `max_steps` is unknown, or no loss was logged at all.

The loss key is `loss` when the run logged it, else `train/loss`.
"""

from __future__ import annotations

import polars as pl

from altgrad_pipeline.analysis.history_scans import RUNS_PER_QUERY, per_run
from altgrad_pipeline.analysis.stats import finite
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.study import LOSS_KEYS

OUTCOMES_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "state": pl.String(),
    "max_steps": pl.Int64(),
    "last_step": pl.Int64(),
    "outcome": pl.String(),
    "loss_key": pl.String(),
    "last_loss": pl.Float64(),
    "last_finite_loss": pl.Float64(),
    "last_finite_loss_step": pl.Int64(),
    "first_nan_step": pl.Int64(),
    "first_param_nan_step": pl.Int64(),
}


def history_series(histories: pl.LazyFrame | pl.DataFrame, keys: tuple[str, ...]) -> pl.LazyFrame:
    """run_id, step, value, key of the first of `keys` each run logged (priority order), so runs of
    families that name the same quantity differently become one series."""
    history = numeric_history(histories).filter(pl.col("key").is_in(keys))
    priority = pl.col("key").replace_strict(list(keys), list(range(len(keys))), return_dtype=pl.Int64)
    chosen = history.group_by("run_id").agg(pl.col("key").sort_by(priority).first())
    return history.join(chosen, on=["run_id", "key"], how="inner").select("run_id", "step", "value", "key").sort("run_id", "step")


def loss_history(histories: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """run_id, step, value, key of each run's training loss (`loss`, else `train/loss`)."""
    return history_series(histories, LOSS_KEYS)


def run_ids(raw_runs: pl.LazyFrame | pl.DataFrame) -> list[str]:
    """The runs of `raw_runs` in its order: what `history_scans.per_run` is given so that it does
    not find them with a scan of the whole study's histories (the partitions of both tables list
    the same runs in the same order)."""
    return raw_runs.lazy().select(pl.col("run_id").unique(maintain_order=True)).collect().to_series().to_list()


def loss_and_series(
    histories: pl.LazyFrame | pl.DataFrame, keys: tuple[str, ...], runs: list[str] | None = None
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Each run's loss series (`loss_history`) and `keys` series (`history_series`; `keys` must not
    name a loss), found a few runs at a time (`history_scans.per_run`; `runs`: the run ids,
    `run_ids`) and collected once, for plans that read them several times. Deriving the series in such a plan
    from the rows of every run ran several copies of their group by, join and sort at once,
    growing with the runs (`manifold_stats` alone on the 4x benchmark study: 562 MB, 348 MB this way)."""
    series = per_run(
        numeric_history(histories).filter(pl.col("key").is_in((*LOSS_KEYS, *keys))).select("run_id", "step", "key", "value"),
        lambda rows: pl.concat([loss_history(rows), history_series(rows, keys)]),
        runs,
        runs_at_once=RUNS_PER_QUERY,
    )
    return series.lazy().filter(pl.col("key").is_in(LOSS_KEYS)), series.lazy().filter(pl.col("key").is_in(keys))


def _loss_facts(history: pl.LazyFrame) -> pl.LazyFrame:
    """run_id and the loss and `param_nan_count` facts of `run_outcomes`, for the runs of
    `history` (numeric rows) that logged either."""
    loss = loss_history(history)
    is_finite = finite(pl.col("value"))
    loss_summary = loss.group_by("run_id").agg(
        pl.col("key").first().alias("loss_key"),
        pl.col("value").sort_by("step").last().alias("last_loss"),
        pl.col("value").filter(is_finite).sort_by(pl.col("step").filter(is_finite)).last().alias("last_finite_loss"),
        pl.col("step").filter(is_finite).max().alias("last_finite_loss_step"),
        pl.col("step").filter(~is_finite).min().alias("first_nan_step"),
    )
    param_nan = (
        history.filter((pl.col("key") == "param_nan_count") & (pl.col("value") > 0))
        .group_by("run_id")
        .agg(pl.col("step").min().alias("first_param_nan_step"))
    )
    return loss_summary.join(param_nan, on="run_id", how="full", coalesce=True)


def _last_steps(history: pl.LazyFrame) -> pl.LazyFrame:
    """run_id, history_last_step: the largest step of the runs of `history` (numeric rows)."""
    return history.group_by("run_id").agg(pl.col("step").max().alias("history_last_step"))


def run_outcomes(
    raw_runs: pl.LazyFrame | pl.DataFrame, histories: pl.LazyFrame | pl.DataFrame, run_summaries: pl.LazyFrame | pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per run of `raw_runs` (columns: `OUTCOMES_SCHEMA`).

    `last_step` is the largest step logged under any key (the ingest `last_step` when the run has
    no history); `first_nan_step` the first step whose loss is NaN or +-inf;
    `first_param_nan_step` the first step with `param_nan_count` > 0. `histories` needs the loss
    and `param_nan_count` rows only (the `learning_curves` table) when `run_summaries` (one row
    per run and numeric key, with its `last_step`) gives the last steps; without it they are read
    from `histories`, which then has to hold every key.
    """
    runs = raw_runs.lazy().select("run_id", "state", pl.col("max_steps").cast(pl.Int64), pl.col("last_step").cast(pl.Int64).alias("ingest_last_step"))
    ids = run_ids(raw_runs)
    history = numeric_history(histories)
    # Every aggregate is per run: computed run by run (`history_scans`), memory stays one run's.
    if run_summaries is None:
        facts = per_run(history, lambda rows: _last_steps(rows).join(_loss_facts(rows), on="run_id", how="left"), ids)
    else:
        loss_facts = per_run(history.filter(pl.col("key").is_in((*LOSS_KEYS, "param_nan_count"))), _loss_facts, ids, runs_at_once=RUNS_PER_QUERY)
        facts = (
            _last_steps(run_summaries.lazy().select("run_id", pl.col("last_step").alias("step")))
            .join(loss_facts.lazy(), on="run_id", how="full", coalesce=True)
            .collect()
        )
    last_step = pl.coalesce("history_last_step", "ingest_last_step")
    ended_early = last_step < pl.col("max_steps") - 1
    last_loss_bad = pl.col("last_loss").is_not_null() & ~finite(pl.col("last_loss"))
    outcome = (
        pl.when(pl.col("state") == "running")
        .then(pl.lit("running"))
        .when(last_loss_bad | (pl.col("first_param_nan_step").is_not_null() & ended_early.fill_null(True)))
        .then(pl.lit("nan_stopped"))
        .when((last_step >= pl.col("max_steps") - 1).fill_null(False) & finite(pl.col("last_loss")))
        .then(pl.lit("completed"))
        .when(pl.col("state").is_in(["crashed", "killed"]))
        .then(pl.lit("killed"))
        .otherwise(pl.lit("incomplete"))
    )
    return (
        runs.join(facts.lazy(), on="run_id", how="left", maintain_order="left")
        .with_columns(last_step.alias("last_step"), outcome.alias("outcome"))
        .select(list(OUTCOMES_SCHEMA))
        .cast(OUTCOMES_SCHEMA)
        .collect()
    )
