"""Per-parameter metrics in long form, with each parameter's layer type, block index and whether
it is an FP8-quantised 2-D weight.

Keys are parsed once per distinct key (a small frame of distinct keys gets the parsed columns and
is joined back), never per history row. A per-parameter key is `<family>/<param>` (after
stripping the `train/` prefix of classification runs) whose param is a dotted module path, e.g.
`grad_norm_l2/transformer.h.0.attn.c_attn.weight` or
`train/grad_snr/encoder.transformer.layer.0.attention.q_lin.weight`. Aggregates
(`grad_norm_l2/mean`, `grad_snr/min`, `stable_rank/mean`) and run-level keys
(`quantization/bit_stall_rate`, `eval/f1_micro`, `bit_position/mean`) have no dotted param and
are left out.

The shadow-model SNR keys (`grad_snr/transformer/h/0/attn/c_attn/weight_fp8|_fp32|_diff`) use
'/' for '.' and a different SNR definition (mean(|g|)/std(g), +inf when std < 1e-8), so they get
their own families `grad_snr_fp8`, `grad_snr_fp32`, `grad_snr_diff` with the dotted param name;
they never mix with `grad_snr` (|mean(g)|/std(g)).

Layer types (first match wins, in this order): norm (`ln_*`, `LayerNorm`, `layer_norm`), embedding
(`wte`, `wpe`, `embeddings`), attention (`attn.`, `attention.`), mlp (`mlp.`, `ffn.`), classifier
(`lm_head`, `classifier`), otherwise `other`. `c_proj` is attention or mlp by its parent module.
`quantized` is True for a `.weight` of an embedding/attention/mlp/classifier module (the 2-D
weights), False for norm weights and biases, null for `other` (shape unknown). Note: in the
classification study the classifier weight is 2-D but kept in full precision.
`dead_neuron_frac` of the word embedding (`wte`, `word_embeddings`) is structurally high because
embedding gradients are sparse; `is_structurally_sparse` marks it so rankings can leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from altgrad_pipeline.ingest.model import numeric_history

#: Output columns of `layer_metrics`, in order. The names of a parameter's metric, path and layer
#: type are categorical (dictionary-typed in Parquet): each row holds a code, so building, writing
#: and reading them costs no string per row. `run_id` stays a string, because Polars' Parquet
#: reader skips row groups by the statistics of string columns only, and readers take a run's rows.
LAYER_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "step": pl.Int64(),
    "metric": pl.Categorical(),
    "param": pl.Categorical(),
    "layer_index": pl.Int64(),
    "layer_type": pl.Categorical(),
    "quantized": pl.Boolean(),
    "is_structurally_sparse": pl.Boolean(),
    "value": pl.Float64(),
}

#: Layer types that hold the 2-D weights (everything except norms and `other`).
WEIGHT_LAYER_TYPES = ("embedding", "attention", "mlp", "classifier")


@dataclass(frozen=True)
class LayerPatterns:
    """Regexes (Rust regex syntax, as Polars uses) that decide how metric keys are read.

    `per_parameter_key` must capture `family` and `param`; `shadow_key` must capture `param`
    (with '/' separators) and `variant`. `layer_types` is checked in order, first match wins.
    """

    prefix: str = r"^train/"
    per_parameter_key: str = r"^(?P<family>[^/]+)/(?P<param>[^/]*\.[^/]*)$"
    shadow_key: str = r"^grad_snr/(?P<param>[^/]+(?:/[^/]+)+)_(?P<variant>fp8|fp32|diff)$"
    layer_index: str = r"(?:^|\.)(?:h|layer|layers|blocks)\.(\d+)\."
    weight_suffix: str = r"\.weight$"
    structurally_sparse: str = r"(?:^|\.)(?:wte|word_embeddings)\."
    layer_types: tuple[tuple[str, str], ...] = (
        ("norm", r"(?:^|\.)(?:ln_[^.]*|LayerNorm|[^.]*layer_norm)\."),
        ("embedding", r"(?:^|\.)(?:wte|wpe|embeddings)\."),
        ("attention", r"(?:^|\.)(?:attn|attention)\."),
        ("mlp", r"(?:^|\.)(?:mlp|ffn)\."),
        ("classifier", r"(?:^|\.)(?:lm_head|classifier)\."),
    )


DEFAULT_LAYER_PATTERNS = LayerPatterns()


def classify_parameters(params: pl.LazyFrame | pl.DataFrame, patterns: LayerPatterns = DEFAULT_LAYER_PATTERNS) -> pl.LazyFrame:
    """Add layer_index, layer_type, quantized and is_structurally_sparse to a frame with `param`."""
    param = pl.col("param")
    layer_type = pl.lit("other")
    for name, regex in reversed(patterns.layer_types):
        layer_type = pl.when(param.str.contains(regex)).then(pl.lit(name)).otherwise(layer_type)
    return (
        params.lazy()
        .with_columns(
            param.str.extract(patterns.layer_index, 1).cast(pl.Int64).alias("layer_index"),
            layer_type.alias("layer_type"),
        )
        .with_columns(
            pl.when(pl.col("layer_type") == "other")
            .then(pl.lit(None, pl.Boolean))
            .otherwise(param.str.contains(patterns.weight_suffix) & pl.col("layer_type").is_in(WEIGHT_LAYER_TYPES))
            .alias("quantized"),
            param.str.contains(patterns.structurally_sparse).alias("is_structurally_sparse"),
        )
    )


def parse_metric_keys(keys: pl.LazyFrame | pl.DataFrame, patterns: LayerPatterns = DEFAULT_LAYER_PATTERNS) -> pl.LazyFrame:
    """One row per per-parameter key of `keys` (column `key`): key, metric, param + layer columns.

    Keys that are not per-parameter are dropped here (they are run-level or aggregates).
    """
    stripped = pl.col("key").str.replace(patterns.prefix, "")
    parsed = (
        keys.lazy()
        .select("key")
        .unique()
        .with_columns(
            stripped.str.extract_groups(patterns.shadow_key).alias("shadow"),
            stripped.str.extract_groups(patterns.per_parameter_key).alias("plain"),
        )
        .select(
            "key",
            pl.when(pl.col("shadow").struct.field("param").is_not_null())
            .then(pl.lit("grad_snr_") + pl.col("shadow").struct.field("variant"))
            .otherwise(pl.col("plain").struct.field("family"))
            .alias("metric"),
            pl.when(pl.col("shadow").struct.field("param").is_not_null())
            .then(pl.col("shadow").struct.field("param").str.replace_all("/", ".", literal=True))
            .otherwise(pl.col("plain").struct.field("param"))
            .alias("param"),
        )
        .filter(pl.col("param").is_not_null())
    )
    return classify_parameters(parsed, patterns)


def layer_metrics(histories: pl.LazyFrame | pl.DataFrame, patterns: LayerPatterns = DEFAULT_LAYER_PATTERNS) -> pl.DataFrame:
    """Per-parameter metrics in long form (columns: `LAYER_METRICS_SCHEMA`), sorted by run, metric,
    param, step. Values are kept as logged (NaN and inf included)."""
    history = numeric_history(histories).select("run_id", "step", "key", "value").collect()
    # Each row's key is read once, as a categorical code: only the distinct keys are parsed and
    # ranked by (metric, param), and a row's rank is looked up by its code. Rows are put in order
    # by rank and the parameter's columns gathered by it (rank r is row r - 1 of `kinds`), as codes:
    # no string is sorted, joined or copied per row. (Two keys may name one metric and param, e.g.
    # with and without `train/`: they share a rank.)
    keys = history.get_column("key").cast(pl.Categorical)
    order = pl.struct("metric", "param").rank("dense").cast(pl.UInt32).alias("_order")
    parsed = parse_metric_keys(keys.unique().cast(pl.String).to_frame(), patterns).with_columns(order).collect()
    kinds = parsed.unique("_order").sort("_order").drop("key", "_order")
    kinds = kinds.cast({name: LAYER_METRICS_SCHEMA[name] for name in kinds.columns})
    ranks = _ranks(keys, parsed)
    run_ids, first_run = history.get_column("run_id"), history.get_column("run_id").first()
    one_run = first_run is not None and not run_ids.null_count() and bool((run_ids == first_run).all())
    positions = _positions_by_run_rank_step(run_ids, history.get_column("step"), ranks, one_run=one_run)
    logged = history.select("step", "value") if one_run else history.select("run_id", "step", "value")
    rows = pl.concat([logged[positions], kinds[pl.Series(ranks[positions] - 1)]], how="horizontal")
    if one_run:
        rows = rows.with_columns(pl.lit(first_run, pl.String).alias("run_id"))
    return rows.select(list(LAYER_METRICS_SCHEMA))


def _ranks(keys: pl.Series, parsed: pl.DataFrame) -> np.ndarray:
    """Each row's rank (`parsed`'s `_order` of its key; 0 for a key naming no parameter), from a
    table indexed by the keys' categorical codes: one array look-up per row, where a hash look-up
    of the key's string took ten times as long."""
    codes = keys.to_physical().to_numpy()
    table = np.zeros(int(codes.max()) + 1 if codes.size else 0, dtype=np.uint32)
    table[parsed.get_column("key").cast(pl.Categorical).to_physical().to_numpy()] = parsed.get_column("_order").to_numpy()
    return table[codes]


def _positions_by_run_rank_step(run_ids: pl.Series, steps: pl.Series, ranks: np.ndarray, *, one_run: bool) -> np.ndarray:
    """Positions of the rows with a rank (> 0), in the order run, rank, step, ties in row order.
    One run (a partition is built one run at a time) whose steps never go back (the catalog keeps
    a history in step order) needs a stable sort by rank alone: NumPy's, a radix sort of 16-bit
    ranks, five times as fast as Polars' sort. Rows of rank 0 sort first and are cut off. One run
    with steps out of order sorts by step, then stably by rank; several runs, or null steps, sort
    by the columns."""
    dropped = int(np.count_nonzero(ranks == 0))
    if one_run and not steps.null_count():
        if steps.is_sorted() and ranks.size and ranks.max() < 2**16:
            return np.argsort(ranks.astype(np.uint16), kind="stable")[dropped:]
        return np.lexsort((steps.to_numpy(), ranks))[dropped:]
    rows = pl.DataFrame({"run_id": run_ids, "_order": ranks, "step": steps}).with_row_index("_position")
    return rows.filter(pl.col("_order") > 0).sort("run_id", "_order", "step", maintain_order=True).get_column("_position").to_numpy()
