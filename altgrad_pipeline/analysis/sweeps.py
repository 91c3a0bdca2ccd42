"""Sweep summary: which hyperparameters a project varied, and each metric per setting over seeds.

Varying hyperparameters are found per project (runs of different projects are different
studies): a flattened config key varies when its values (compared as text, a missing key being
a value of its own) differ between the project's runs. Noise keys never count: the run's
identity and bookkeeping rather than the experiment (`DEFAULT_NOISE_PATTERNS`: seeds,
run names and ids, tags, project/entity/W&B settings, `paths.*`, `*_dir`/`*_path`/`*_file`,
checkpoint settings, `*_interval` and log/eval/save frequencies, `eval_iters`, timestamps,
device placement, `_wandb`); pass other patterns to change that. `notebook.differing_config`
uses the same rule (`varying_keys`).

Runs with the same varying values form a group (their seeds collapse into it). Per group and
curve metric (see `analysis.curves`):

- the run's value is its final value, the mean of its last `last_k` (10) finite logged values;
- a run's coverage is how far its metric got against the run's planned length: (last logged
  step + the metric's logging interval, the median gap between its steps) / `max_steps` (the
  raw_runs column read from the config), so a metric logged every 100 steps whose last value is
  at 400 of 500 covers 1.0, and a run stopped at step 45 of 500 covers 0.09; without a planned
  length the group's longest run of that metric is the yardstick (`expected_steps` is the
  group's planned steps). A run that never logged the metric covers 0. A run is complete at
  coverage ≥ 1 (so `n_complete` ≤ `n_logged`); `completeness` is the mean coverage, capped at 1;
- a run whose last logged value is NaN/inf is `diverged`;
- statistics are over the complete, not diverged runs (`n_values`): a run cut short reports an
  earlier, not a final, value, and mixing it in biases the group toward early losses.
  `mean`, `median`, `iqm` (interquartile mean: `scipy.stats.trim_mean(x, 0.25)`), `std` (ddof 1);
- 95% CI of the mean by ANAL-03's rule (`analysis.stats.mean_difference_interval`, the same
  function as `manifold_stats`): Student t below `min_bootstrap_n` (8) values, from 8 the
  bootstrap (`scipy.stats.bootstrap`, BCa, 2,000 resamples, generator seeded with `seed`;
  percentile when BCa is degenerate), none below 2 values. A bootstrap of 3 values has 10
  distinct resamples and its "95%" interval is just [min, max], covering about 75%; t is the
  honest interval there. `ci_method` says which ("t", "BCa", "percentile", "none"). The IQM's
  CI is the bootstrap's, from 8 values only (there is no t interval of an IQM). `low_n` is true
  below 3 values (the numbers are observations, not expectations); `ci_note` says why an
  interval is missing or t.

Group labels (tables, legends, titles) read the condition from raw_runs' derived columns where a
study has them: `fp8_format` (BF16 for the baseline, whose config still says `fp8_format=E5M2`
with `use_fp8=false`) and `optimizer` stand in for the config keys they are derived from
(`DERIVED_FROM`), and a varying key that these determine (e.g. `max_steps`, 2000 for BF16 only)
is left out of the label, though not of `group_key`. Display names: `DEFAULT_DISPLAY`, overridden
by an optional YAML file (`sweep_display.yaml` in the data dir): `keys: {model.weights: Init}`
renames keys and `values: {model.weights: {None: random}}` renames values (matched on the value's
text; a missing or null value reads `None`). Unmapped keys show as their dotted name.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from scipy import stats as sps

from altgrad_pipeline.analysis.curves import curve_series
from altgrad_pipeline.analysis.manifold import LOW_N, MIN_BOOTSTRAP_N
from altgrad_pipeline.analysis.stats import finite, mean_difference_interval
from altgrad_pipeline.ingest.tables import CONFIG_PREFIX
from altgrad_pipeline.study import BASELINE_FORMAT, DEFAULT_NOISE_PATTERNS, is_noise_key

LAST_K = 10
#: raw_runs' derived condition columns and the config keys each is read from (`ingest.tables.StudyRules`).
DERIVED_FROM: dict[str, tuple[str, ...]] = {"fp8_format": ("fp8_format", "use_fp8"), "optimizer": ("use_manifold_aware",)}
N_RESAMPLES = 2000
CONFIDENCE = 0.95
IQM_PROPORTION = 0.25

SWEEP_SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "project": pl.String(),
    "group_key": pl.String(),
    "group_label": pl.String(),
    "varying_keys": pl.List(pl.String()),
    "metric": pl.String(),
    "n_runs": pl.Int64(),
    "n_seeds": pl.Int64(),
    "n_logged": pl.Int64(),
    "n_complete": pl.Int64(),
    "n_diverged": pl.Int64(),
    "n_values": pl.Int64(),
    "expected_steps": pl.Int64(),
    "completeness": pl.Float64(),
    "mean": pl.Float64(),
    "median": pl.Float64(),
    "iqm": pl.Float64(),
    "std": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "iqm_ci_low": pl.Float64(),
    "iqm_ci_high": pl.Float64(),
    "ci_method": pl.String(),
    "low_n": pl.Boolean(),
    "ci_note": pl.String(),
    "last_k": pl.Int64(),
}


@dataclass(frozen=True)
class DisplayNames:
    """Key and value renames for tables and legends (`keys`, `values` as in the YAML file)."""

    keys: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: Path | str | None) -> DisplayNames:
        """`DEFAULT_DISPLAY` with the remapping file's entries on top; no path, or a file that
        does not exist, means the defaults."""
        if path is None or not Path(path).is_file():
            return DEFAULT_DISPLAY
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        keys = {str(k): str(v) for k, v in (document.get("keys") or {}).items()}
        values = {str(k): {value_text(v): str(d) for v, d in (m or {}).items()} for k, m in (document.get("values") or {}).items()}
        merged = {k: {**DEFAULT_DISPLAY.values.get(k, {}), **values.get(k, {})} for k in {*DEFAULT_DISPLAY.values, *values}}
        return cls({**DEFAULT_DISPLAY.keys, **keys}, merged)

    def key(self, key: str) -> str:
        return self.keys.get(key, key)

    def value(self, key: str, value: object) -> str:
        text = value_text(value)
        return self.values.get(key, {}).get(text, text)


#: Display names used unless a remapping file says otherwise: the derived format reads "format",
#: and a raw format saying there is none reads as the baseline.
DEFAULT_DISPLAY = DisplayNames(keys={"fp8_format": "format"}, values={"fp8_format": {"none": BASELINE_FORMAT, "None": BASELINE_FORMAT}})


def value_text(value: object) -> str:
    """A config value as text, the way it is compared and displayed (None for missing/null)."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def config_keys(frame: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """The flattened config keys of a raw_runs frame (without the `config.` prefix)."""
    return [c[len(CONFIG_PREFIX):] for c in frame.lazy().collect_schema().names() if c.startswith(CONFIG_PREFIX)]


def varying_keys(runs: pl.DataFrame, patterns: Sequence[str] = DEFAULT_NOISE_PATTERNS) -> list[str]:
    """Config keys (sorted) whose text values differ between `runs`, noise keys left out. Keys
    missing from every run are ignored; a key present in some runs only varies."""
    candidates = [k for k in config_keys(runs) if not is_noise_key(k, patterns)]
    if runs.height < 2 or not candidates:
        return []
    as_text = runs.select(pl.col(CONFIG_PREFIX + k).cast(pl.String).alias(k) for k in candidates)
    counts = as_text.select(pl.all().n_unique()).row(0, named=True)
    present = as_text.select(pl.all().is_not_null().any()).row(0, named=True)
    return sorted(k for k in candidates if present[k] and counts[k] > 1)


def label_columns(runs: pl.DataFrame, keys: Sequence[str]) -> list[str]:
    """The columns a label of `runs` shows: the derived condition columns that vary, then the
    varying config keys (`config.`-prefixed) neither derived from nor determined by them."""
    derived = [c for c in DERIVED_FROM if c in runs.columns and runs[c].n_unique() > 1]
    replaced = {k for c in derived for k in DERIVED_FROM[c]}
    condition = runs.select(derived).n_unique() if derived else 1
    rest = [CONFIG_PREFIX + k for k in keys if k not in replaced]
    return derived + [c for c in rest if not derived or runs.select(*derived, pl.col(c).cast(pl.String)).n_unique() > condition]


def run_labels(runs: pl.DataFrame, keys: Sequence[str], display: DisplayNames = DEFAULT_DISPLAY) -> dict[str, str]:
    """run_id -> "format=BF16, optimizer=AdamW, lr=0.001": the label of the run's setting."""
    columns = label_columns(runs, keys)
    return {
        row["run_id"]: ", ".join(f"{display.key(c.removeprefix(CONFIG_PREFIX))}={display.value(c.removeprefix(CONFIG_PREFIX), row[c])}" for c in columns) or "all runs"
        for row in runs.select("run_id", *columns).iter_rows(named=True)
    }


def sweep_groups(raw_runs: pl.LazyFrame | pl.DataFrame, *, noise_patterns: Sequence[str] = DEFAULT_NOISE_PATTERNS, display: DisplayNames = DEFAULT_DISPLAY) -> pl.DataFrame:
    """One row per run: project, run_id, seed, group_key (JSON object of the project's varying
    keys and the run's values, keys sorted), group_label (`run_labels`), varying_keys."""
    runs = raw_runs.lazy().collect()
    schema = {"project": pl.String(), "run_id": pl.String(), "seed": pl.Int64(), "group_key": pl.String(), "group_label": pl.String(), "varying_keys": pl.List(pl.String())}
    rows = []
    if runs.is_empty():
        return pl.DataFrame(schema=schema)
    for (project,), part in runs.group_by("project", maintain_order=True):
        keys = varying_keys(part, noise_patterns)
        columns = [CONFIG_PREFIX + k for k in keys]
        labels = run_labels(part, keys, display)
        for run in part.select("run_id", "seed", *columns).iter_rows(named=True):
            values = {k: run[CONFIG_PREFIX + k] for k in keys}
            rows.append({
                "project": project,
                "run_id": run["run_id"],
                "seed": run["seed"],
                "group_key": json.dumps(values, sort_keys=True, default=str),
                "group_label": labels[run["run_id"]],
                "varying_keys": keys,
            })
    return pl.DataFrame(rows, schema=schema)


def final_values(histories: pl.LazyFrame | pl.DataFrame, last_k: int = LAST_K) -> pl.LazyFrame:
    """run_id, metric, final (mean of the last `last_k` finite values), n_steps (distinct
    logged steps), reach (last logged step + the median gap between logged steps: the step the
    metric's logging covers), diverged (last logged value not finite)."""
    series = curve_series(histories)
    is_finite = finite(pl.col("value"))
    return series.group_by("run_id", "metric").agg(
        pl.col("value").filter(is_finite).tail(last_k).mean().alias("final"),
        pl.col("step").n_unique().alias("n_steps"),
        (pl.col("step").max() + pl.col("step").diff().median().fill_null(1)).alias("reach"),
        (~finite(pl.col("value").last())).alias("diverged"),
    )


def interquartile_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return sps.trim_mean(values, IQM_PROPORTION, axis=axis)


def bootstrap_interval(values: np.ndarray, statistic, *, n_resamples: int, seed: int, confidence: float) -> tuple[float, float, str]:
    """BCa bootstrap CI of `statistic` over one group's values; percentile when BCa is
    degenerate (a warning or a non-finite bound)."""
    data = (np.asarray(values, float),)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("error" if method == "BCa" else "ignore")
            try:
                interval = sps.bootstrap(
                    data, statistic, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                    method=method, random_state=np.random.default_rng(seed),
                ).confidence_interval
            except (sps.DegenerateDataWarning, RuntimeWarning):
                continue
        if method == "percentile" or (np.isfinite(interval.low) and np.isfinite(interval.high)):
            return float(interval.low), float(interval.high), method
    raise AssertionError("the percentile bootstrap always returns")


def _group_statistics(values: np.ndarray, *, min_bootstrap_n: int, n_resamples: int, seed: int, confidence: float) -> dict:
    n = len(values)
    if n == 0:
        return {"low_n": True, "ci_method": "none", "ci_note": "no complete run with a finite final value"}
    out = {
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "iqm": float(interquartile_mean(values)),
        "std": float(np.std(values, ddof=1)) if n >= 2 else None,
        "low_n": n < LOW_N,
    }
    # the one-sample interval is ANAL-03's paired interval against a control of zeros
    interval = mean_difference_interval(values, np.zeros(n), paired=True, n_resamples=n_resamples, seed=seed, min_bootstrap_n=min_bootstrap_n, confidence=confidence)
    out["ci_method"] = interval.method.removesuffix(" paired")
    if out["ci_method"] == "none":
        out["ci_note"] = f"no CI: {n} value, fewer than 2"
        return out
    out["ci_low"], out["ci_high"] = interval.low, interval.high
    if n < min_bootstrap_n:
        out["ci_note"] = f"Student t: {n} values, fewer than {min_bootstrap_n} for a bootstrap; no IQM CI"
        return out
    out["iqm_ci_low"], out["iqm_ci_high"], iqm_method = bootstrap_interval(values, interquartile_mean, n_resamples=n_resamples, seed=seed, confidence=confidence)
    if iqm_method != out["ci_method"]:
        out["ci_method"] = f"mean {out['ci_method']}, iqm {iqm_method}"
    return out


def sweep_summary(
    raw_runs: pl.LazyFrame | pl.DataFrame,
    histories: pl.LazyFrame | pl.DataFrame,
    *,
    noise_patterns: Sequence[str] = DEFAULT_NOISE_PATTERNS,
    display: DisplayNames = DEFAULT_DISPLAY,
    last_k: int = LAST_K,
    min_bootstrap_n: int = MIN_BOOTSTRAP_N,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> pl.DataFrame:
    """One row per (project, group, metric); columns `SWEEP_SUMMARY_SCHEMA` (see module doc)."""
    if "run_id" not in raw_runs.lazy().collect_schema().names() or "key" not in histories.lazy().collect_schema().names():
        return pl.DataFrame(schema=SWEEP_SUMMARY_SCHEMA)
    groups = sweep_groups(raw_runs, noise_patterns=noise_patterns, display=display)
    finals = final_values(histories, last_k).join(groups.lazy().select("run_id"), on="run_id", how="semi").collect()
    runs = raw_runs.lazy().collect()
    planned = runs.select("run_id", pl.col("max_steps").cast(pl.Float64) if "max_steps" in runs.columns else pl.lit(None, pl.Float64).alias("max_steps"))
    metrics_by_project = (
        finals.join(groups.select("run_id", "project"), on="run_id").select("project", "metric").unique()
    )
    per_run = (
        groups.join(metrics_by_project, on="project", how="inner", nulls_equal=True)
        .join(finals, on=["run_id", "metric"], how="left")
        .join(planned, on="run_id", how="left")
        .with_columns(pl.col("n_steps").fill_null(0), pl.col("diverged").fill_null(False))
        .with_columns(pl.coalesce(pl.col("max_steps").filter(pl.col("max_steps") > 0).max(), pl.col("reach").max()).over("project", "group_key", "metric").alias("expected_steps"))
        .with_columns(pl.coalesce("max_steps", "expected_steps").alias("planned"))
        .with_columns((pl.col("reach") / pl.col("planned")).fill_null(0.0).fill_nan(0.0).clip(0.0, 1.0).alias("coverage"))
        .with_columns(((pl.col("n_steps") > 0) & (pl.col("coverage") >= 1.0)).alias("complete"))
    )
    rows = []
    for (project, group_key, metric), part in per_run.group_by("project", "group_key", "metric", maintain_order=True):
        usable = part.filter(pl.col("complete") & ~pl.col("diverged") & pl.col("final").is_not_null())
        values = usable["final"].to_numpy().astype(float)
        rows.append({
            "project": project,
            "group_key": group_key,
            "group_label": part["group_label"][0],
            "varying_keys": list(part["varying_keys"][0]),
            "metric": metric,
            "n_runs": part.height,
            "n_seeds": part["seed"].drop_nulls().n_unique(),
            "n_logged": int((part["n_steps"] > 0).sum()),
            "n_complete": int(part["complete"].sum()),
            "n_diverged": int(part["diverged"].sum()),
            "n_values": len(values),
            "expected_steps": None if part["expected_steps"][0] is None else int(part["expected_steps"][0]),
            "completeness": float(part["coverage"].mean()),
            "last_k": last_k,
            **_group_statistics(values, min_bootstrap_n=min_bootstrap_n, n_resamples=n_resamples, seed=seed, confidence=confidence),
        })
    return pl.DataFrame(rows, schema=SWEEP_SUMMARY_SCHEMA).sort("project", "metric", "group_key", nulls_last=True)
