"""A synthetic altgrad study with known answers, built as Polars frames in the ingest layout.

Project "altgrad" (nanoGPT keys): BF16 baseline runs 200 steps, FP8 runs 100. Losses decay
exponentially towards a per-run asymptote; injected failures (NaN stop, bit stall, overflow,
crash, early failure) and per-layer health profiles make the sweet spots known by design:
overall (lowest loss) E5M2, attention E3M4, mlp E0M7, embedding E5M2 (only if the structurally
sparse wte is ignored: E1M6's wte looks perfectly dense).
Project "altgrad-classification" (DistilBERT keys with the `train/` prefix) adds two short runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import polars as pl

PROJECT = "altgrad"
CLS_PROJECT = "altgrad-classification"
FP8_STEPS = 100
BF16_STEPS = 200

LM_PARAMS = {
    "transformer.wte.weight": "embedding",
    "transformer.wpe.weight": "embedding",
    "transformer.h.0.ln_1.weight": "norm",
    "transformer.h.0.attn.c_attn.weight": "attention",
    "transformer.h.0.attn.c_proj.weight": "attention",
    "transformer.h.0.mlp.c_fc.weight": "mlp",
    "transformer.h.0.mlp.c_proj.weight": "mlp",
}
#: The format with the healthiest gradients in each layer type.
HEALTHIEST = {"attention": "E3M4", "mlp": "E0M7", "embedding": "E5M2"}


@dataclass
class RunSpec:
    run_id: str
    fp8_format: str
    optimizer: str
    seed: int | None
    max_steps: int
    state: str
    asymptote: float
    end_step: int | None = None  # last logged step (default max_steps - 1)
    nan_from: int | None = None  # loss is NaN from this step to the end
    nan_at: tuple[int, ...] = ()  # isolated NaN losses
    stall_onset: int | None = None  # cumulative stall rate crosses 0.6 from here on
    overflow_from: int | None = None  # overflow rate 0.015 from here on
    explode_from: int | None = None  # grad_norm doubles every step from here; NaN with the loss
    param_nan_from: int | None = None  # weights NaN from here (default nan_from), gradients finite
    vanish_from: int | None = None  # zero-gradient fraction of the non-embedding weights 0.9 from here
    config: dict = field(default_factory=dict)
    # expected results
    outcome: str = "completed"
    failure_mode: str = "none"
    failure_step: int | None = None
    failure_stage: str | None = None
    project: str = PROJECT


def lm_specs() -> list[RunSpec]:
    specs = [RunSpec("bf16", "BF16", "AdamW", 1, BF16_STEPS, "finished", 2.0, config={"use_shadow": False})]
    specs += [RunSpec(f"e5m2-adamw-{s}", "E5M2", "AdamW", s, FP8_STEPS, "finished", 2.4 + 0.01 * s) for s in range(1, 5)]
    specs += [RunSpec(f"e5m2-manifold-{s}", "E5M2", "ManifoldAdamW", s, FP8_STEPS, "finished", 2.1 + 0.013 * s) for s in range(1, 5)]
    specs += [
        RunSpec("e5m2-failed", "E5M2", "AdamW", 9, FP8_STEPS, "failed", 2.4, end_step=69, outcome="incomplete", failure_mode="early_stop", failure_step=69, failure_stage="unknown"),
        RunSpec("e3m4-1", "E3M4", "AdamW", 1, FP8_STEPS, "finished", 2.5),
        RunSpec("e3m4-2", "E3M4", "AdamW", 2, FP8_STEPS, "finished", 2.55, nan_at=(20,)),
        RunSpec("e3m4-live", "E3M4", "AdamW", 3, FP8_STEPS, "running", 2.5, end_step=49, outcome="running", failure_mode="no_exit_record", failure_step=49),
        RunSpec("e0m7-stall", "E0M7", "AdamW", 1, FP8_STEPS, "finished", 3.0, stall_onset=30, failure_mode="bit_stall", failure_step=30, failure_stage="backward_vanishing"),
        RunSpec("e0m7-2", "E0M7", "AdamW", 2, FP8_STEPS, "finished", 3.0),
        RunSpec("e1m6-overflow", "E1M6", "AdamW", 1, FP8_STEPS, "finished", 2.8, overflow_from=50, failure_mode="overflow", failure_step=50, failure_stage="forward_overflow"),
        # same overflow, but this run's own threshold is above it: no failure
        RunSpec("e1m6-tolerant", "E1M6", "AdamW", 2, FP8_STEPS, "finished", 2.8, overflow_from=50, config={"overflow_threshold": 0.02}),
        RunSpec("e1m6-killed", "E1M6", "AdamW", 3, FP8_STEPS, "crashed", 2.8, end_step=59, outcome="killed", failure_mode="early_stop", failure_step=59, failure_stage="unknown"),
        # NaN stop at nan_patience=10: 9 NaN losses logged (40..48), the tracker says "finished";
        # the weights go NaN while the logged gradient norm stays finite: the update corrupted them
        RunSpec("e7m0-nan", "E7M0", "AdamW", 1, FP8_STEPS, "finished", 4.0, end_step=48, nan_from=40, outcome="nan_stopped", failure_mode="nan_loss", failure_step=40, failure_stage="optimizer_state_corruption"),
        RunSpec("e7m0-nan-p4", "E7M0", "AdamW", 2, FP8_STEPS, "finished", 4.0, end_step=27, nan_from=25, config={"nan_patience": 4}, outcome="nan_stopped", failure_mode="nan_loss", failure_step=25, failure_stage="optimizer_state_corruption"),
        # built to fail at each stage
        RunSpec("e2m5-explode", "E2M5", "AdamW", 1, FP8_STEPS, "finished", 3.0, end_step=48, nan_from=40, explode_from=20, outcome="nan_stopped", failure_mode="nan_loss", failure_step=40, failure_stage="forward_overflow"),
        RunSpec("e2m5-corrupt", "E2M5", "AdamW", 2, FP8_STEPS, "finished", 3.0, end_step=41, nan_from=33, param_nan_from=30, outcome="nan_stopped", failure_mode="nan_loss", failure_step=30, failure_stage="optimizer_state_corruption"),
        RunSpec("e2m5-vanish", "E2M5", "AdamW", 3, FP8_STEPS, "crashed", 3.0, end_step=59, vanish_from=30, outcome="killed", failure_mode="early_stop", failure_step=59, failure_stage="backward_vanishing"),
        RunSpec("legacy", "no_format", "AdamW", None, FP8_STEPS, "finished", 2.2),
    ]
    return specs


def _loss(spec: RunSpec, steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    loss = spec.asymptote + (6.0 - spec.asymptote) * np.exp(-steps / 20.0) + 0.01 * rng.standard_normal(len(steps))
    if spec.nan_from is not None:
        loss[steps >= spec.nan_from] = np.nan
    for step in spec.nan_at:
        loss[steps == step] = np.nan
    return loss


def _health(fp8_format: str, layer_type: str) -> tuple[float, float, float]:
    """(grad_snr, dead_neuron_frac, grad-norm oscillation amplitude) of a format in a layer type."""
    best = HEALTHIEST.get(layer_type) == fp8_format
    offset = {"BF16": 0.0, "E5M2": 0.01, "E3M4": 0.02, "E0M7": 0.03, "E1M6": 0.04, "E7M0": 0.05, "E2M5": 0.06, "no_format": 0.0}[fp8_format]
    return (2.0 if best else 1.0 + offset, 0.01 if best else 0.1 + offset, 0.05 if best else 0.3 + offset)


def lm_history(spec: RunSpec, rng: np.random.Generator) -> pl.DataFrame:
    end = spec.max_steps - 1 if spec.end_step is None else spec.end_step
    steps = np.arange(end + 1)
    columns: dict[str, np.ndarray] = {"loss": _loss(spec, steps, rng)}
    columns["grad_norm"] = np.exp(0.01 * steps) * (1 + 0.05 * rng.standard_normal(len(steps)))
    if spec.explode_from is not None:
        columns["grad_norm"] *= 2.0 ** np.clip(steps - spec.explode_from, 0, None)
        columns["grad_norm"][steps >= spec.nan_from] = np.nan
    nan_params = np.zeros(len(steps))
    param_nan_from = spec.nan_from if spec.param_nan_from is None else spec.param_nan_from
    if param_nan_from is not None:
        nan_params[steps >= param_nan_from] = 7.0
    columns["param_nan_count"] = nan_params
    if spec.fp8_format not in ("BF16", "no_format"):
        stall = 0.2 + 0.001 * steps
        if spec.stall_onset is not None:
            stall = np.where(steps >= spec.stall_onset, 0.6 + 0.001 * steps, 0.3 + 0.001 * steps)
        stall[steps == 10] = 0.9  # a one-step spike never counts
        columns["quantization/bit_stall_rate"] = stall
        overflow = np.zeros(len(steps))
        if spec.overflow_from is not None:
            overflow[steps >= spec.overflow_from] = 0.015
        columns["quantization/overflow_rate"] = overflow
    columns["grad_norm_l2/mean"] = np.ones(len(steps))
    columns["grad_snr/mean"] = np.ones(len(steps))
    for param, layer_type in LM_PARAMS.items():
        snr, dead, amplitude = _health(spec.fp8_format, layer_type)
        columns[f"grad_snr/{param}"] = snr + 0.01 * rng.standard_normal(len(steps))
        dead_values = dead + 0.001 * rng.standard_normal(len(steps))
        if param == "transformer.wte.weight":
            dead_values = np.full(len(steps), 0.0 if spec.fp8_format == "E1M6" else 0.95)
        elif spec.vanish_from is not None and layer_type in ("attention", "mlp"):
            dead_values = np.where(steps >= spec.vanish_from, 0.9, dead_values)
        columns[f"dead_neuron_frac/{param}"] = dead_values
        columns[f"grad_norm_l2/{param}"] = 1.0 + amplitude * np.sin(steps) + 0.01 * rng.standard_normal(len(steps))
        dotted = param.replace(".", "/")
        columns[f"grad_snr/{dotted}_fp8"] = np.full(len(steps), 3.0)
    return long_history(spec.run_id, steps, columns)


def long_history(run_id: str, steps: np.ndarray, columns: dict[str, np.ndarray]) -> pl.DataFrame:
    return pl.concat(
        [
            pl.DataFrame(
                {
                    "run_id": run_id,
                    "step": steps.astype(np.int64),
                    "key": key,
                    "value": values.astype(np.float64),
                    "runtime": steps.astype(np.float64),
                    "timestamp": 1.7e9 + steps.astype(np.float64),
                }
            )
            for key, values in columns.items()
        ]
    )


def cls_specs() -> list[RunSpec]:
    return [
        RunSpec("cls-bf16", "BF16", "AdamW", None, 500, "finished", 0.2, project=CLS_PROJECT),
        RunSpec("cls-e5m2", "E5M2", "ManifoldAdamW", None, 500, "crashed", 0.3, end_step=250, project=CLS_PROJECT, outcome="killed", failure_mode="early_stop", failure_step=250, failure_stage="unknown"),
    ]


def cls_history(spec: RunSpec, rng: np.random.Generator) -> pl.DataFrame:
    """Classification layout: train/ keys every 50 steps, a final eval at step = max_steps."""
    end = spec.max_steps - 1 if spec.end_step is None else spec.end_step
    steps = np.arange(0, end + 1, 50)
    columns = {
        "train/loss": _loss(spec, steps, rng),
        "train/grad_snr/encoder.transformer.layer.0.attention.q_lin.weight": rng.random(len(steps)),
        "train/grad_norm_l2/encoder.transformer.layer.0.attention.q_lin.weight": 1 + rng.random(len(steps)),
        "train/grad_norm_l2/classifier.weight": 1 + rng.random(len(steps)),
        "train/grad_snr/mean": rng.random(len(steps)),
    }
    frames = [long_history(spec.run_id, steps, columns)]
    if spec.state == "finished":
        frames.append(long_history(spec.run_id, np.array([spec.max_steps]), {"eval/f1_micro": np.array([0.5])}))
    return pl.concat(frames)


def raw_runs(specs: list[RunSpec], histories: pl.DataFrame) -> pl.DataFrame:
    spans = histories.group_by("run_id").agg(pl.col("step").min().alias("first_step"), pl.col("step").max().alias("last_step"), pl.col("step").n_unique().alias("n_steps"))
    rows = []
    for spec in specs:
        config = {"fp8_format": spec.fp8_format, "max_steps": spec.max_steps, "seed": spec.seed, "checkpoint_dir": f"checkpoints/{spec.run_id}", "learning_rate": 6e-4, **spec.config}
        rows.append(
            {
                "run_id": spec.run_id,
                "source": "synthetic",
                "location": f"mem://{spec.run_id}",
                "entity": "test",
                "project": spec.project,
                "name": spec.run_id,
                "group": None,
                "state": spec.state,
                "exit_code": None if spec.state in ("running", "crashed") else (0 if spec.state == "finished" else 1),
                "fp8_format": spec.fp8_format,
                "optimizer": spec.optimizer,
                "seed": spec.seed,
                "max_steps": spec.max_steps,
                "tags": [],
                "config": json.dumps(config),
                "summary": "{}",
                "config.fp8_format": spec.fp8_format,
                "config.max_steps": spec.max_steps,
                "config.seed": spec.seed,
                "config.learning_rate": 6e-4,
                "config.checkpoint_dir": config["checkpoint_dir"],
                "config.use_manifold_aware": spec.optimizer == "ManifoldAdamW",
                "config.nan_patience": spec.config.get("nan_patience"),
                "config.overflow_threshold": spec.config.get("overflow_threshold"),
                "config.bit_stall_threshold": spec.config.get("bit_stall_threshold"),
            }
        )
    schema_overrides = {"seed": pl.Int64, "max_steps": pl.Int64, "exit_code": pl.Int64, "group": pl.String, "tags": pl.List(pl.String),
                        "config.seed": pl.Int64, "config.nan_patience": pl.Int64, "config.overflow_threshold": pl.Float64, "config.bit_stall_threshold": pl.Float64}
    return pl.DataFrame(rows, schema_overrides=schema_overrides).join(spans, on="run_id", how="left")


def study(seed: int = 7) -> tuple[list[RunSpec], pl.DataFrame, pl.DataFrame]:
    """(specs, raw_runs, histories) of both projects."""
    rng = np.random.default_rng(seed)
    specs = lm_specs() + cls_specs()
    histories = pl.concat([lm_history(s, rng) if s.project == PROJECT else cls_history(s, rng) for s in specs])
    return specs, raw_runs(specs, histories), histories
