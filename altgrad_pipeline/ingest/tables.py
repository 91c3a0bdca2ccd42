"""From parsed runs to the public tables: `raw_runs` (one row per run) and `run_histories`.

The study-specific parts (which config key names the FP8 format, what counts as the BF16 baseline,
which flag means ManifoldAdamW) are `study.StudyRules`, so another study changes rules, not code.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, ParsedRun, numeric_history
from altgrad_pipeline.study import StudyRules, format_partition

CONFIG_PREFIX = "config."

RAW_RUNS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source": pl.String(),
    "location": pl.String(),
    "run_version": pl.String(),
    "url": pl.String(),
    "entity": pl.String(),
    "project": pl.String(),
    "name": pl.String(),
    "group": pl.String(),
    "notes": pl.String(),
    "state": pl.String(),
    "exit_code": pl.Int64(),
    "fp8_format": pl.String(),
    "optimizer": pl.String(),
    "seed": pl.Int64(),
    "max_steps": pl.Int64(),
    "tags": pl.List(pl.String()),
    "config": pl.String(),
    "summary": pl.String(),
    "first_step": pl.Int64(),
    "last_step": pl.Int64(),
    "n_steps": pl.Int64(),
    "n_values": pl.Int64(),
    "started_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
    "sdk_version": pl.String(),
    "non_scalar_keys": pl.List(pl.Struct({"key": pl.String(), "value_type": pl.String()})),
    "log_layout": pl.String(),
}

#: Column descriptions shown in the Dagster UI and the README.
RAW_RUNS_DESCRIPTIONS: dict[str, str] = {
    "run_id": "Run id as the tracker gave it (W&B id), or a stable id derived from path and content",
    "source": "Which reader produced the run: wandb-local, wandb-api, jsonl, lightning-csv",
    "location": "Run folder, file or URL",
    "run_version": "Hash of the run's files (paths, sizes, mtimes) and the catalog's cache version: changes exactly when "
    "its logged data, or how it is read, can have changed; partition tables recompute a run only when it does",
    "url": "W&B URL for runs from the API",
    "entity": "W&B entity (user or team) of the run, if known",
    "name": "Display name of the run as the tracker shows it",
    "group": "Tracker run group, if any",
    "notes": "Run notes as written in the tracker",
    "state": "finished (exit 0), failed (non-zero exit), crashed (no exit, untouched past the grace period or log cut), running",
    "exit_code": "Exit code from the exit record, if any",
    "fp8_format": "Derived: BF16 when use_fp8 is false or the format is 'none', else the format without FP8_ prefix",
    "optimizer": "Derived: ManifoldAdamW when use_manifold_aware is true, else AdamW",
    "seed": "Random seed from the config",
    "tags": "Tracker tags of the run",
    "config": "Full config as JSON text (_wandb removed: it holds host names and e-mails)",
    "config.*": "One flattened config key (nested keys dotted), typed; mixed or nested values as JSON text",
    "summary": "Final folded summary as JSON text",
    "first_step": "First logged step",
    "n_steps": "Distinct steps logged",
    "n_values": "History values logged, strings included",
    "started_at": "When the run started (UTC)",
    "updated_at": "When the run last wrote, or the tracker last updated it (UTC)",
    "sdk_version": "Version of the tracker SDK that wrote the run, if recorded",
    "non_scalar_keys": "History keys whose values are neither numbers nor strings (histograms, tables, media, ...) with their type",
    "log_layout": "Block layout of the run's .wandb log, told from its bytes: standard, or wandb-core-0.17 (the 0.17.0-0.17.5 "
    "opt-in Go writer, blocks 7 bytes later); several, comma-separated, when resumed segments differ; null for other sources",
}


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys (`optim.lr`); lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _json_text(value: Any) -> str:
    """JSON that keeps NaN/Infinity readable by Python and never fails on odd objects."""
    return json.dumps(value, sort_keys=True, default=str)


def _scalar_config_column(values: list[Any]) -> pl.Series | None:
    """One typed column for a flattened config key; mixed or nested values become JSON text."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return None
    if kinds <= {bool}:
        return pl.Series(values, dtype=pl.Boolean())
    if kinds <= {int}:
        return pl.Series(values, dtype=pl.Int64())
    if kinds <= {int, float}:
        return pl.Series([None if v is None else float(v) for v in values], dtype=pl.Float64())
    if kinds <= {str}:
        return pl.Series(values, dtype=pl.String())
    return pl.Series(
        [None if v is None else v if isinstance(v, str) else _json_text(v) for v in values], dtype=pl.String()
    )


def config_columns(configs: list[Mapping[str, Any]]) -> pl.DataFrame:
    """The configs of many runs flattened into typed `config.<key>` columns (null where absent)."""
    flats = [flatten_config(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    columns = {}
    for key in keys:
        series = _scalar_config_column([f.get(key) for f in flats])
        if series is not None:
            columns[CONFIG_PREFIX + key] = series
    return pl.DataFrame(columns) if columns else pl.DataFrame()


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _history_extent(history: pl.DataFrame) -> dict[str, int | None]:
    if history.is_empty():
        return {"first_step": None, "last_step": None, "n_steps": 0, "n_values": 0}
    steps = history.get_column("step")
    return {
        "first_step": steps.min(),
        "last_step": steps.max(),
        "n_steps": steps.n_unique(),
        "n_values": history.height,
    }


def run_row(run: ParsedRun) -> dict[str, Any]:
    """The tracker-level facts of one run; derived columns are added frame-wide by `raw_runs_frame`."""
    return {
        "run_id": run.run_id,
        "source": run.source,
        "location": run.location,
        "url": run.url,
        "entity": run.entity,
        "project": run.project,
        "name": run.name,
        "group": run.group,
        "notes": run.notes,
        "ended": run.ended,
        "cut_short": run.cut_short,
        "exit_code": run.exit_code,
        "tags": list(run.tags),
        "config": _json_text(run.config),
        "summary": _json_text(run.summary),
        **_history_extent(run.history),
        "started_at": _as_utc(run.started_at),
        "updated_at": _as_utc(run.last_write),
        "sdk_version": run.sdk_version,
        "non_scalar_keys": [{"key": k, "value_type": t} for k, t in sorted(run.value_types.items())],
        "log_layout": run.log_layout,
        "_config": run.config,
    }


def _lower_text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String).str.strip_chars().str.to_lowercase()


def _format_expr(rules: StudyRules, has_format: bool, has_enabled: bool) -> pl.Expr:
    fmt_col = CONFIG_PREFIX + rules.format_key
    named = pl.col("name").cast(pl.String).str.extract(rules.name_pattern, 1).str.to_uppercase()
    raw = pl.col(fmt_col).cast(pl.String).str.strip_chars() if has_format else pl.lit(None, pl.String)
    raw = pl.coalesce(raw, named)
    disabled = (
        pl.col(CONFIG_PREFIX + rules.enabled_key).cast(pl.Boolean, strict=False).eq(False)
        if has_enabled
        else pl.lit(False)
    )
    stripped = raw.str.strip_prefix(rules.strip_prefix).str.strip_prefix(rules.strip_prefix.lower())
    return (
        pl.when(disabled | raw.str.to_lowercase().is_in(list(rules.baseline_values)))
        .then(pl.lit(rules.baseline_label))
        .when(raw.is_null())
        .then(pl.lit(rules.no_format_label))
        .otherwise(stripped.str.to_uppercase())
        .alias("fp8_format")
    )


def _optimizer_expr(rules: StudyRules, has_flag: bool) -> pl.Expr:
    named = pl.col("name").cast(pl.String).str.extract(rules.name_pattern, 2).str.to_lowercase()
    flag = (
        pl.col(CONFIG_PREFIX + rules.optimizer_key).cast(pl.Boolean, strict=False)
        if has_flag
        else pl.lit(None, pl.Boolean)
    )
    flag = pl.coalesce(flag, named.eq("manifold"))
    return (
        pl.when(flag).then(pl.lit(rules.optimizer_on)).otherwise(pl.lit(rules.optimizer_off)).alias("optimizer")
    )


def state_expr(now: dt.datetime, grace_s: float) -> pl.Expr:
    """Tracker state: an exit record decides; without one, a cut log or an old file means crashed."""
    stale = pl.col("updated_at").is_null() | (
        pl.col("updated_at") < pl.lit(now - dt.timedelta(seconds=grace_s), pl.Datetime("us", "UTC"))
    )
    return (
        pl.when(pl.col("ended") & pl.col("exit_code").fill_null(0).eq(0))
        .then(pl.lit("finished"))
        .when(pl.col("ended"))
        .then(pl.lit("failed"))
        .when(pl.col("cut_short") | stale)
        .then(pl.lit("crashed"))
        .otherwise(pl.lit("running"))
        .alias("state")
    )


def _int_config(rules_key: str, present: bool) -> pl.Expr:
    col = CONFIG_PREFIX + rules_key
    return pl.col(col).cast(pl.Int64, strict=False) if present else pl.lit(None, pl.Int64)


def raw_runs_frame(
    runs: Iterable[ParsedRun] | Iterable[dict[str, Any]],
    *,
    rules: StudyRules = StudyRules(),
    now: dt.datetime | None = None,
    grace_s: float = 3600.0,
) -> pl.DataFrame:
    """One row per run with derived `fp8_format`, `optimizer`, `state` and typed config columns."""
    rows = [r if isinstance(r, dict) else run_row(r) for r in runs]
    configs = [r["_config"] for r in rows]
    base_rows = [{k: v for k, v in r.items() if k != "_config"} for r in rows]
    base_schema = {
        **{k: v for k, v in RAW_RUNS_SCHEMA.items() if k not in ("state", "fp8_format", "optimizer", "seed", "max_steps")},
        "ended": pl.Boolean(),
        "cut_short": pl.Boolean(),
    }
    base = pl.DataFrame(base_rows, schema=base_schema)
    config = config_columns(configs)
    frame = pl.concat([base, config], how="horizontal") if config.width else base
    cols = set(frame.columns)
    has = lambda key: CONFIG_PREFIX + key in cols  # noqa: E731
    now = _as_utc(now or dt.datetime.now(dt.UTC))
    frame = frame.with_columns(
        _format_expr(rules, has(rules.format_key), has(rules.enabled_key)),
        _optimizer_expr(rules, has(rules.optimizer_key)),
        state_expr(now, grace_s),
        _int_config(rules.seed_key, has(rules.seed_key)).alias("seed"),
        _int_config(rules.max_steps_key, has(rules.max_steps_key)).alias("max_steps"),
        pl.coalesce(
            pl.col("project"),
            pl.col(CONFIG_PREFIX + rules.project_key).cast(pl.String) if has(rules.project_key) else pl.lit(None, pl.String),
        ).alias("project"),
    ).drop("ended", "cut_short")
    frame = frame.with_columns(pl.col("fp8_format").map_elements(format_partition, return_dtype=pl.String))
    leading = list(RAW_RUNS_SCHEMA)
    return frame.select(leading + sorted(c for c in frame.columns if c not in RAW_RUNS_SCHEMA)).sort("run_id")


def history_with_run_id(run: ParsedRun) -> pl.DataFrame:
    """The run's history in the public column order, tagged with its run id and sorted by (step,
    key), so a partition is the plain concatenation of its runs in run_id order (no re-sort of the
    unchanged runs on every refresh). A source whose logs hold no strings may leave out `text`."""
    history = run.history
    if "text" not in history.columns:
        history = history.with_columns(pl.lit(None, pl.String).alias("text"))
    return (
        history.with_columns(pl.lit(run.run_id, pl.String).alias("run_id"))
        .select(list(HISTORY_SCHEMA))
        .sort("step", "key", maintain_order=True)
    )


def pivot_history(histories: pl.DataFrame | pl.LazyFrame, keys: list[str]) -> pl.DataFrame:
    """Chosen keys' numbers side by side, one row per (run_id, step): the wide view notebooks want.

    Real runs carry up to ~1,500 keys, so the stored table is long; widen only what you need.
    """
    return (
        numeric_history(histories)
        .filter(pl.col("key").is_in(keys))
        .collect()
        .pivot(on="key", index=["run_id", "step"], values="value", aggregate_function="last")
        .sort("run_id", "step")
    )

