"""Layer-metric parsing: nanoGPT and DistilBERT names, shadow keys, aggregates, unknown names."""

from __future__ import annotations

import polars as pl
import pytest

from altgrad_pipeline.analysis.layers import LAYER_METRICS_SCHEMA, LayerPatterns, layer_metrics, parse_metric_keys
from altgrad_pipeline.partition_tables import read_build, rebuild


@pytest.mark.parametrize(
    ("key", "metric", "param", "layer_index", "layer_type", "quantized"),
    [
        ("grad_norm_l2/transformer.wte.weight", "grad_norm_l2", "transformer.wte.weight", None, "embedding", True),
        ("grad_norm_linf/transformer.wpe.weight", "grad_norm_linf", "transformer.wpe.weight", None, "embedding", True),
        ("grad_snr/transformer.h.0.ln_1.weight", "grad_snr", "transformer.h.0.ln_1.weight", 0, "norm", False),
        ("grad_snr/transformer.h.5.ln_2.bias", "grad_snr", "transformer.h.5.ln_2.bias", 5, "norm", False),
        ("dead_neuron_frac/transformer.h.3.attn.c_attn.weight", "dead_neuron_frac", "transformer.h.3.attn.c_attn.weight", 3, "attention", True),
        ("grad_cos_sim/transformer.h.2.attn.c_proj.weight", "grad_cos_sim", "transformer.h.2.attn.c_proj.weight", 2, "attention", True),
        ("grad_norm_l2/transformer.h.2.attn.c_proj.bias", "grad_norm_l2", "transformer.h.2.attn.c_proj.bias", 2, "attention", False),
        ("grad_norm_l2/transformer.h.4.mlp.c_fc.weight", "grad_norm_l2", "transformer.h.4.mlp.c_fc.weight", 4, "mlp", True),
        ("grad_norm_l2/transformer.h.4.mlp.c_proj.weight", "grad_norm_l2", "transformer.h.4.mlp.c_proj.weight", 4, "mlp", True),
        ("grad_norm_l2/transformer.h.1.mlp.c_fc.linear.weight", "grad_norm_l2", "transformer.h.1.mlp.c_fc.linear.weight", 1, "mlp", True),
        ("grad_norm_l2/transformer.ln_f.weight", "grad_norm_l2", "transformer.ln_f.weight", None, "norm", False),
        ("grad_norm_l2/lm_head.weight", "grad_norm_l2", "lm_head.weight", None, "classifier", True),
        ("train/grad_snr/encoder.embeddings.word_embeddings.weight", "grad_snr", "encoder.embeddings.word_embeddings.weight", None, "embedding", True),
        ("train/grad_snr/encoder.embeddings.position_embeddings.weight", "grad_snr", "encoder.embeddings.position_embeddings.weight", None, "embedding", True),
        ("train/grad_snr/encoder.embeddings.LayerNorm.bias", "grad_snr", "encoder.embeddings.LayerNorm.bias", None, "norm", False),
        ("train/grad_norm_l2/encoder.transformer.layer.2.attention.q_lin.weight", "grad_norm_l2", "encoder.transformer.layer.2.attention.q_lin.weight", 2, "attention", True),
        ("train/grad_norm_l2/encoder.transformer.layer.2.attention.out_lin.bias", "grad_norm_l2", "encoder.transformer.layer.2.attention.out_lin.bias", 2, "attention", False),
        ("train/dead_neuron_frac/encoder.transformer.layer.0.sa_layer_norm.weight", "dead_neuron_frac", "encoder.transformer.layer.0.sa_layer_norm.weight", 0, "norm", False),
        ("train/grad_norm_linf/encoder.transformer.layer.5.ffn.lin1.weight", "grad_norm_linf", "encoder.transformer.layer.5.ffn.lin1.weight", 5, "mlp", True),
        ("train/grad_norm_linf/encoder.transformer.layer.5.ffn.lin2.bias", "grad_norm_linf", "encoder.transformer.layer.5.ffn.lin2.bias", 5, "mlp", False),
        ("train/grad_norm_linf/encoder.transformer.layer.1.output_layer_norm.weight", "grad_norm_linf", "encoder.transformer.layer.1.output_layer_norm.weight", 1, "norm", False),
        ("train/stable_rank/classifier.weight", "stable_rank", "classifier.weight", None, "classifier", True),
        ("train/effective_rank/classifier.weight", "effective_rank", "classifier.weight", None, "classifier", True),
        ("grad_snr/transformer/h/0/attn/c_attn/weight_fp8", "grad_snr_fp8", "transformer.h.0.attn.c_attn.weight", 0, "attention", True),
        ("grad_snr/transformer/h/3/mlp/c_proj/weight_fp32", "grad_snr_fp32", "transformer.h.3.mlp.c_proj.weight", 3, "mlp", True),
        ("grad_snr/transformer/h/1/ln_1/bias_diff", "grad_snr_diff", "transformer.h.1.ln_1.bias", 1, "norm", False),
        ("grad_norm_l2/transformer.h.0.c_proj.weight", "grad_norm_l2", "transformer.h.0.c_proj.weight", 0, "other", None),
        ("grad_norm_l2/some.new.module.weight", "grad_norm_l2", "some.new.module.weight", None, "other", None),
    ],
)
def test_parameter_keys(key, metric, param, layer_index, layer_type, quantized):
    row = parse_metric_keys(pl.DataFrame({"key": [key]})).collect().row(0, named=True)
    assert (row["metric"], row["param"], row["layer_index"], row["layer_type"], row["quantized"]) == (metric, param, layer_index, layer_type, quantized)


@pytest.mark.parametrize(
    "key",
    [
        "loss", "grad_norm", "grad_norm_l2/mean", "grad_norm_l2/min", "grad_norm_linf/max", "dead_neuron_frac/mean", "grad_snr/min",
        "grad_cos_sim/mean", "grad_snr/mean_fp8", "grad_snr/mean_diff", "quantization/bit_stall_rate", "bit_position/mean",
        "train/loss", "train/grad_snr/mean", "train/stable_rank/min", "train/flips/total", "train/throughput/samples_per_sec",
        "eval/f1_micro", "diagnostics/stiffness_mean", "param_nan_count",
    ],
)
def test_aggregates_and_run_level_keys_are_not_parameters(key):
    assert parse_metric_keys(pl.DataFrame({"key": [key]})).collect().is_empty()


def test_structurally_sparse_marks_word_embeddings_only():
    keys = ["dead_neuron_frac/transformer.wte.weight", "dead_neuron_frac/transformer.wpe.weight", "train/dead_neuron_frac/encoder.embeddings.word_embeddings.weight"]
    got = dict(parse_metric_keys(pl.DataFrame({"key": keys})).select("param", "is_structurally_sparse").collect().iter_rows())
    assert got == {"transformer.wte.weight": True, "transformer.wpe.weight": False, "encoder.embeddings.word_embeddings.weight": True}


def test_patterns_are_configurable():
    patterns = LayerPatterns(layer_types=(("attention", r"(?:^|\.)attn\."), ("mlp", r"(?:^|\.)mixer\.")))
    got = parse_metric_keys(pl.DataFrame({"key": ["grad_snr/blocks.2.mixer.weight"]}), patterns).collect().row(0, named=True)
    assert (got["layer_type"], got["layer_index"], got["quantized"]) == ("mlp", 2, True)


def test_layer_metrics_keeps_every_parameter_row_and_value(histories, specs):
    got = layer_metrics(histories)
    assert got.schema == pl.Schema(LAYER_METRICS_SCHEMA)
    expected = histories.filter(
        pl.col("key").str.contains(r"^(?:train/)?(?:grad_snr|dead_neuron_frac|grad_norm_l2)/[^/]*\.") | pl.col("key").str.contains(r"^grad_snr/transformer/.*_fp8$")
    )
    assert got.height == expected.height
    one = got.filter((pl.col("run_id") == "e3m4-1") & (pl.col("metric") == "grad_snr") & (pl.col("param") == "transformer.h.0.attn.c_attn.weight"))
    raw = histories.filter((pl.col("run_id") == "e3m4-1") & (pl.col("key") == "grad_snr/transformer.h.0.attn.c_attn.weight")).sort("step")
    assert one["value"].to_list() == raw["value"].to_list()
    assert set(got["metric"].unique()) == {"grad_snr", "dead_neuron_frac", "grad_norm_l2", "grad_snr_fp8"}


def test_one_run_at_a_time_equals_the_whole_study_sorted_by_columns(histories):
    """A single run is sorted by one integer key (rank * step range + step); several runs by the
    columns. Both give the same rows in the same order, and each run comes out sorted by metric,
    param, step."""
    whole = layer_metrics(histories)
    runs = histories.get_column("run_id").unique().sort().to_list()
    assert len(runs) > 1
    one_by_one = pl.concat([layer_metrics(histories.filter(pl.col("run_id") == run)) for run in runs])
    assert one_by_one.equals(whole)
    assert one_by_one.equals(one_by_one.sort("run_id", "metric", "param", "step", maintain_order=True))


def test_steps_far_apart_and_shared_ranks_keep_their_order():
    """Steps spanning a huge range (a resumed run) and two keys naming one metric and param (with
    and without `train/`) sort like the column sort would."""
    rows = pl.DataFrame(
        {
            "run_id": ["r"] * 6,
            "step": [2**40, 3, 2**40, 3, 7, 5],
            "key": ["grad_snr/h.0.attn.w.weight", "grad_snr/h.0.attn.w.weight", "dead_neuron_frac/h.0.mlp.weight",
                    "train/dead_neuron_frac/h.0.mlp.weight", "dead_neuron_frac/h.0.mlp.weight", "loss"],  # fmt: skip
            "value": [1.0, 2.0, 3.0, 4.0, float("nan"), 6.0],
        }
    )
    got = layer_metrics(rows)
    assert got.select("metric", "step").rows() == [
        ("dead_neuron_frac", 3), ("dead_neuron_frac", 7), ("dead_neuron_frac", 2**40), ("grad_snr", 3), ("grad_snr", 2**40)
    ]  # fmt: skip
    assert got["value"][:3].to_list()[0] == 4.0 and got["value"][4] == 1.0
    assert got["layer_type"].to_list() == ["mlp", "mlp", "mlp", "attention", "attention"]


def test_an_incremental_build_keeps_the_categorical_columns_through_its_parquet_file(histories, tmp_path):
    """A partition's next build slices new runs in among the rows read back from its file: the
    categorical columns survive the round trip, and the table equals the whole study computed at once."""
    runs = histories.get_column("run_id").unique().sort().to_list()

    def compute(run_ids: list[str]) -> pl.DataFrame:
        return layer_metrics(histories.filter(pl.col("run_id").is_in(run_ids)))

    first = rebuild(None, dict.fromkeys(runs[::2], "v"), "recipe", compute, streamed=True).table
    path = tmp_path / "partition.parquet"
    first.frame.lazy().sink_parquet(path, metadata=first.parquet_metadata())
    stored = read_build(str(path))
    assert stored is not None and stored.frame.schema == pl.Schema(LAYER_METRICS_SCHEMA)
    assert dict(pl.read_parquet_schema(path))["param"] == pl.Categorical()
    rebuilt = rebuild(stored, dict.fromkeys(runs, "v"), "recipe", compute)
    assert rebuilt.computed == runs[1::2]
    assert rebuilt.table.frame.equals(layer_metrics(histories))
