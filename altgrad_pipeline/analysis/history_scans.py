"""How analyses read the long histories without holding them in memory.

A study's history is large (14 M values in the benchmark study: `run_id`, `key`, `step`, `value`
alone take about 0.7 GB in memory, four times that at four times the runs), while what an
analysis needs of it is small: a few keys, or one aggregate per run. Two ways keep memory flat in
the number of runs:

- **Keys first.** Which keys a study logged is found by a streamed scan (only the distinct keys
  are held), or read from `run_summaries` (one row per run and numeric key) where an asset has
  it; the rows of the chosen keys are then read with an `is_in` filter, which the Parquet
  reader applies while reading. A join against a frame of keys would instead load every row of
  the history before dropping most of them.
- **Run by run.** A query that groups by run (a series is a (run, key) pair, an outcome a run's
  last loss) never needs two runs' rows at once: `per_run` evaluates it one run at a time, so
  memory is one run's working set, and Polars groups and sorts a run's rows faster than a
  study's. The partition files are sorted by `run_id`, so the filter on one run reads only that
  run's row groups. A query whose plan costs more than one run's rows reads a few runs at once
  (`RUNS_PER_QUERY`): memory is then a few runs' working set, still flat in the number of runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

#: How many runs a query planned per run reads at once (`per_run`'s `runs_at_once`) where its plan,
#: not its rows, is the cost: the failure evidence (a dozen small group bys and joins per run) or
#: a few series of `learning_curves` (32 runs: 0.26 CPU-s one at a time, 0.09 eight at a time).
#: Memory is then bounded by eight runs' rows, still flat in the number of runs.
RUNS_PER_QUERY = 8


def distinct(frame: pl.LazyFrame | pl.DataFrame, column: str) -> list:
    """The distinct values of one column, in the order they first appear (streamed: only the
    distinct values and the row each first appears at are held). `unique(maintain_order=True)`
    would say the same, but the streaming engine then holds the whole column (557 MB for the
    `run_id` of the 4x benchmark study, against 318 MB this way)."""
    first_row = f"{column}_first_row"
    return (
        frame.lazy()
        .select(column)
        .with_row_index(first_row)
        .group_by(column)
        .agg(pl.col(first_row).min())
        .sort(first_row)
        .collect(engine="streaming")
        .get_column(column)
        .to_list()
    )


def per_run(
    frame: pl.LazyFrame | pl.DataFrame,
    query: Callable[[pl.LazyFrame], pl.LazyFrame | pl.DataFrame],
    runs: Sequence[str] | None = None,
    runs_at_once: int = 1,
) -> pl.DataFrame:
    """`query` applied to each run's rows of `frame` on its own, the results concatenated in the
    order of `runs` (default: every run of `frame`, as first seen). `query` must group by run
    (or keep rows), so that its result over the whole frame is the union of its per-run results;
    with no run at all, it runs once on the empty frame, so the result keeps its columns.

    `runs_at_once` > 1 gives `query` the rows of that many runs together (in the order of `runs`;
    the order of a batch's results is the query's): memory is then bounded by that many runs,
    still flat in the study, while a query whose plan costs more than its rows (many small group
    bys and joins per run) is planned and its files opened once per batch instead of per run."""
    lazy = frame.lazy()
    ids = distinct(lazy, "run_id") if runs is None else list(runs)
    if not ids:
        return query(lazy.head(0)).lazy().collect()
    batches = [ids[start : start + runs_at_once] for start in range(0, len(ids), runs_at_once)]
    return pl.concat([query(lazy.filter(pl.col("run_id").is_in(batch))).lazy().collect() for batch in batches], how="vertical")
