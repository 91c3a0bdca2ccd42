"""Example altgrad runs written with the real wandb SDK (offline), with a known ground truth.

No real altgrad logs exist (upstream commits none), so ingest, analysis, reports and sensors are
tested against a store whose answers are known in advance. Each run is described by an
`ExampleRunSpec` (format, optimizer, seed, length, failure behaviour and effect sizes), its
per-step metrics are simulated deterministically from the spec (`simulate_history`), and
`write_run` logs them through `wandb.init(mode="offline")` exactly as altgrad's `Trainer` does
(`run.log(metrics, step=step)`, one call per step, same keys, same NaN-patience stop).
`write_example_runs` writes the default study (`default_study`) and its truths (`EXPECTED.json`).

The loss of every run follows L(t) = loss_floor + loss_amplitude * (1 + t/loss_timescale)^-loss_exponent
+ a per-seed offset (shared by all runs of one seed, as they share data order) + per-step noise.
Per-parameter gradient health is driven by one `layer_health` number per layer type (embedding,
attention, mlp, norm): higher health means higher `grad_snr`, lower `dead_neuron_frac`, steadier
`grad_norm_l2` and higher `grad_cos_sim`. The default study's truths:

- BF16 has the lowest loss floor; among FP8 formats E3M4 is the sweet spot, then E5M2, E1M6, E0M7.
- Best FP8 format per layer type: embedding E5M2, attention E3M4, mlp E1M6, norm E3M4.
- E7M0 diverges and its loss is NaN from step 37; NaN patience (10) stops it after 9 NaN losses,
  so its last logged step is 45; it still finishes cleanly (exit record, code 0). A
  FormatExperimentRunner failure report is written for each E7M0 run.
- E0M7's cumulative `quantization/bit_stall_rate` climbs past `bit_stall_threshold` (0.5) and
  stays above; the run reaches max_steps.
- ManifoldAdamW changes the final loss by -0.08 on E5M2, 0 on E3M4, -0.10 on E0M7, and scales
  the per-step bit-stall rate by 0.6, 0.85 and 0.85.
- One extra E1M6 run (seed 4) is killed with SIGKILL while training step 250 (see `write_run`).

wandb-core behaviour when the client dies (measured with wandb 0.31.0): the service is started
with `--pid <client>` and watches it; when the client is SIGKILLed it logs "parent process
exited, terminating service process" and does a forced shutdown. It writes no exit record and
does not flush the pending row: W&B commits the row of step s only when step s+1 is logged (or
at finish), so a run killed after logging steps 0..N-1 stores rows 0..N-2. Rows also reach the
`.wandb` file only when wandb-core flushes it (every `x_transaction_log_flush_interval`, 15 s by
default, or when a buffer fills); a forced shutdown loses whatever was not flushed. The example
runs flush every 0.5 s, and the killed run is killed only once its rows are in the file, so its
last stored step is exact.

`write_run` and `write_example_runs` start processes with the spawn method: a script calling
them must guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import shutil
import signal
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from altgrad_pipeline.ingest.wandb_names import RUN_FOLDER

#: Formats as altgrad names them; "BF16" is the non-FP8 baseline (`use_fp8: false`).
BASELINE_FORMAT = "BF16"
#: Optimizers: AdamW (`use_manifold_aware: false`) and ManifoldAdamW (`use_manifold_aware: true`).
OPTIMIZERS = ("adamw", "manifold")
#: Layer types as the per-layer analysis groups parameters.
LAYER_TYPES = ("embedding", "attention", "mlp", "norm")

# nanoGPT geometry of the altgrad YAMLs, with 2 layers instead of 6 to keep the store small.
N_HEAD = 6
N_EMBD = 384
BLOCK_SIZE = 256
VOCAB_SIZE = 50257
BATCH_SIZE = 12
LEARNING_RATE = 6e-4

#: Threshold below which altgrad counts a gradient element as "dead" (hard-coded upstream).
_DEAD_GRADIENT = 1e-8
#: How often wandb-core flushes the `.wandb` file; short, so a killed run's rows land promptly.
_FLUSH_INTERVAL_SECONDS = 0.5
#: Rows of the FormatExperimentRunner report's loss trend: every max(1, n // 20) steps.
_REPORT_TREND_ROWS = 20


def nanogpt_parameters(n_layer: int) -> list[tuple[str, tuple[int, ...]]]:
    """nanoGPT's `named_parameters()` (tied lm_head appears only as wte), with shapes."""
    params: list[tuple[str, tuple[int, ...]]] = [
        ("transformer.wte.weight", (VOCAB_SIZE, N_EMBD)),
        ("transformer.wpe.weight", (BLOCK_SIZE, N_EMBD)),
    ]
    for i in range(n_layer):
        block = f"transformer.h.{i}"
        params += [
            (f"{block}.ln_1.weight", (N_EMBD,)),
            (f"{block}.ln_1.bias", (N_EMBD,)),
            (f"{block}.attn.c_attn.weight", (3 * N_EMBD, N_EMBD)),
            (f"{block}.attn.c_attn.bias", (3 * N_EMBD,)),
            (f"{block}.attn.c_proj.weight", (N_EMBD, N_EMBD)),
            (f"{block}.attn.c_proj.bias", (N_EMBD,)),
            (f"{block}.ln_2.weight", (N_EMBD,)),
            (f"{block}.ln_2.bias", (N_EMBD,)),
            (f"{block}.mlp.c_fc.weight", (4 * N_EMBD, N_EMBD)),
            (f"{block}.mlp.c_fc.bias", (4 * N_EMBD,)),
            (f"{block}.mlp.c_proj.weight", (N_EMBD, 4 * N_EMBD)),
            (f"{block}.mlp.c_proj.bias", (N_EMBD,)),
        ]
    params += [("transformer.ln_f.weight", (N_EMBD,)), ("transformer.ln_f.bias", (N_EMBD,))]
    return params


def layer_type(param: str) -> str:
    """embedding (wte, wpe), attention (attn.*), mlp (mlp.*) or norm (ln_*)."""
    module = param.removeprefix("transformer.")
    if module.startswith(("wte.", "wpe.")):
        return "embedding"
    if ".attn." in module:
        return "attention"
    if ".mlp." in module:
        return "mlp"
    return "norm"


@dataclass(frozen=True)
class ExampleRunSpec:
    """Everything that determines one example run; the same spec always logs the same values.

    `format_name` is "BF16" or an FP8 format ("E5M2", or a new one such as "E2M5"). Effect sizes
    are stated directly so a test can build a run with any truth it needs. Bit stall is modelled
    as a per-step stall fraction moving from `stall_rate_start` to `stall_rate_end` with time
    constant `stall_timescale`; altgrad logs its cumulative mean since step 0.
    `first_nan_step` makes the loss NaN from that step on (after `divergence_steps` of doubling
    loss and gradients); `kill_after_steps` = N kills the process after it logged steps 0..N-1.
    """

    format_name: str
    optimizer: str
    seed: int
    max_steps: int = 500
    loss_floor: float = 3.5
    loss_amplitude: float = 7.5
    loss_timescale: float = 50.0
    loss_exponent: float = 0.7
    seed_offset_sd: float = 0.02
    step_noise_sd: float = 0.05
    val_gap: float = 0.08
    shadow_gap: float = 0.05
    layer_health: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(LAYER_TYPES, 0.7), hash=False)
    stall_rate_start: float = 0.10
    stall_rate_end: float = 0.05
    stall_timescale: float = 100.0
    underflow_rate: float = 0.02
    first_nan_step: int | None = None
    divergence_steps: int = 8
    kill_after_steps: int | None = None
    step_time_ms: float = 145.0
    n_layer: int = 2
    nan_patience: int = 10
    bit_stall_threshold: float = 0.5
    eval_interval: int = 100

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if set(self.layer_health) != set(LAYER_TYPES):
            raise ValueError(f"layer_health needs exactly the layer types {LAYER_TYPES}")
        if self.first_nan_step is not None and self.first_nan_step < 1:
            raise ValueError("first_nan_step must be >= 1: the runner's report needs a finite step before it")
        if self.first_nan_step is not None and self.kill_after_steps is not None:
            raise ValueError("a run either stops on NaN or is killed, not both")
        if self.kill_after_steps is not None and not 2 <= self.kill_after_steps < self.max_steps:
            raise ValueError("kill_after_steps must be in [2, max_steps)")

    @property
    def uses_fp8(self) -> bool:
        return self.format_name != BASELINE_FORMAT

    @property
    def is_manifold(self) -> bool:
        return self.optimizer == "manifold"

    @property
    def run_name(self) -> str:
        return f"{self.format_name.lower()}-{self.optimizer}-s{self.seed}"

    @property
    def tags(self) -> list[str]:
        """Tags in the style of altgrad's YAMLs (e.g. e7m0_uniform: fp8, e7m0, powers-of-2, ...)."""
        if not self.uses_fp8:
            return ["baseline", "bf16", "eurlex"]
        fmt = self.format_name.lower()
        if self.is_manifold:
            return ["fp8", fmt, "manifold-aware", "geometry-aware"]
        return ["fp8", fmt, *_FORMAT_TAGS.get(self.format_name, ()), "format-comparison", "shadow"]

    @property
    def logged_steps(self) -> int:
        """How many steps the training loop passes to `run.log` (log_interval is 1)."""
        if self.first_nan_step is not None:
            return min(self.max_steps, self.first_nan_step + self.nan_patience - 1)
        if self.kill_after_steps is not None:
            return self.kill_after_steps
        return self.max_steps

    @property
    def stored_last_step(self) -> int:
        """The last history step the store holds: a killed run loses its uncommitted last row."""
        return self.logged_steps - (2 if self.kill_after_steps is not None else 1)

    def config(self) -> dict[str, Any]:
        """altgrad's `asdict(TrainConfig)`: all 41 keys, in its order, with the YAMLs' values.

        Upstream quirks kept on purpose: the BF16 baseline still says `fp8_format: "E5M2"`,
        and `manifold_mantissa_bits` is 2 whatever the format.
        """
        return {
            "n_layer": self.n_layer,
            "n_head": N_HEAD,
            "n_embd": N_EMBD,
            "block_size": BLOCK_SIZE,
            "vocab_size": VOCAB_SIZE,
            "dropout": 0.0,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "max_steps": self.max_steps,
            "warmup_steps": 100,
            "grad_clip": 1.0,
            "use_fp8": self.uses_fp8,
            "fp8_format": self.format_name if self.uses_fp8 else "E5M2",
            "use_shadow": self.uses_fp8,
            "checkpoint_interval": 100,
            "checkpoint_dir": f"checkpoints/{self.run_name}",
            "max_checkpoints": 3,
            "nan_patience": self.nan_patience,
            "bit_stall_threshold": self.bit_stall_threshold,
            "overflow_threshold": 0.01,
            "dead_neuron_threshold": _DEAD_GRADIENT,
            "dead_neuron_window": 100,
            "enable_partition_clipping": False,
            "partition_clip_base": 1.0,
            "enable_emergency_shift": False,
            "emergency_shift_nan_patience": 3,
            "emergency_shift_stall_threshold": 0.5,
            "diagnostic_interval": 50,
            "log_stiffness": False,
            "log_grid_alignment": False,
            "log_ulp": False,
            "use_manifold_aware": self.is_manifold,
            "manifold_mantissa_bits": 2,
            "manifold_max_stiffness": 1e6,
            "log_bit_position": self.is_manifold,
            "log_interval": 1,
            "eval_interval": self.eval_interval,
            "project": "altgrad",
            "run_name": self.run_name,
            "tags": self.tags,
            "seed": self.seed,
        }

    def expected_loss(self, step: int) -> float:
        """The noiseless loss curve at `step` (no seed offset, no step noise)."""
        return self.loss_floor + self.loss_amplitude * (1 + step / self.loss_timescale) ** -self.loss_exponent

    def expected_bit_stall_rate(self, step: int) -> float:
        """The noiseless cumulative bit-stall rate logged at `step` (mean per-step rate so far)."""
        return float(np.mean(self.per_step_stall_rate(np.arange(step + 1))))

    def per_step_stall_rate(self, steps: np.ndarray) -> np.ndarray:
        """The noiseless fraction of updates that stall at each step (before accumulation)."""
        return self.stall_rate_end + (self.stall_rate_start - self.stall_rate_end) * np.exp(-steps / self.stall_timescale)


_FORMAT_TAGS = {
    "E5M2": ("standard",),
    "E3M4": ("balanced",),
    "E1M6": ("two-scale",),
    "E0M7": ("fixed-point",),
    "E7M0": ("powers-of-2", "high-risk"),
}


@dataclass(frozen=True)
class _FormatDesign:
    """The default study's effect sizes for one format under AdamW."""

    loss_floor: float
    layer_health: Mapping[str, float]
    stall_rate_start: float
    stall_rate_end: float
    stall_timescale: float
    step_time_ms: float
    first_nan_step: int | None = None


def _health(embedding: float, attention: float, mlp: float, norm: float) -> dict[str, float]:
    return {"embedding": embedding, "attention": attention, "mlp": mlp, "norm": norm}


#: Differences between formats are >= 0.08 in health and >= 0.15 in loss floor, against a
#: seed-offset sd of 0.02 and per-step noise that averages out over hundreds of steps.
DEFAULT_FORMAT_DESIGN: dict[str, _FormatDesign] = {
    "BF16": _FormatDesign(3.20, _health(0.95, 0.95, 0.95, 0.95), 0.0, 0.0, 1.0, 95.0),
    "E5M2": _FormatDesign(3.50, _health(0.80, 0.70, 0.65, 0.70), 0.35, 0.18, 100.0, 145.0),
    "E3M4": _FormatDesign(3.35, _health(0.70, 0.85, 0.80, 0.80), 0.15, 0.08, 100.0, 145.0),
    "E1M6": _FormatDesign(3.65, _health(0.55, 0.60, 0.88, 0.60), 0.08, 0.04, 100.0, 145.0),
    "E0M7": _FormatDesign(3.90, _health(0.30, 0.40, 0.45, 0.40), 0.25, 0.80, 100.0, 145.0),
    "E7M0": _FormatDesign(6.00, _health(0.10, 0.10, 0.10, 0.10), 0.55, 0.90, 20.0, 145.0, first_nan_step=37),
}

#: ManifoldAdamW versus AdamW per format: (change of loss floor, factor on the per-step stall rate).
DEFAULT_MANIFOLD_EFFECT: dict[str, tuple[float, float]] = {
    "E5M2": (-0.08, 0.60),
    "E3M4": (0.00, 0.85),
    "E0M7": (-0.10, 0.85),
}

#: ManifoldAdamW's extra optimizer cost per step (geometry-aware update).
_MANIFOLD_STEP_TIME_MS = 15.0
_DEFAULT_SEEDS = (1, 2, 3)
_KILLED_RUN = ("E1M6", "adamw", 4, 250)


def example_spec(format_name: str, optimizer: str, seed: int, **overrides: Any) -> ExampleRunSpec:
    """The default study's spec for one (format, optimizer, seed); `overrides` replace any field."""
    design = DEFAULT_FORMAT_DESIGN[format_name]
    loss_floor, stall_start, stall_end = design.loss_floor, design.stall_rate_start, design.stall_rate_end
    step_time_ms = design.step_time_ms
    if optimizer == "manifold":
        loss_delta, stall_factor = DEFAULT_MANIFOLD_EFFECT[format_name]
        loss_floor += loss_delta
        stall_start, stall_end = stall_start * stall_factor, stall_end * stall_factor
        step_time_ms += _MANIFOLD_STEP_TIME_MS
    values: dict[str, Any] = {
        "max_steps": 2000 if format_name == BASELINE_FORMAT else 500,
        "loss_floor": round(loss_floor, 6),
        "layer_health": dict(design.layer_health),
        "stall_rate_start": round(stall_start, 6),
        "stall_rate_end": round(stall_end, 6),
        "stall_timescale": design.stall_timescale,
        "step_time_ms": step_time_ms,
        "first_nan_step": design.first_nan_step,
    }
    values.update(overrides)
    return ExampleRunSpec(format_name=format_name, optimizer=optimizer, seed=seed, **values)


def default_study() -> list[ExampleRunSpec]:
    """28 runs: BF16 and five FP8 formats with AdamW, ManifoldAdamW for E5M2/E3M4/E0M7, three
    seeds each, plus one killed E1M6 run (seed 4). Longest runs first, for load balancing."""
    cells = [(fmt, "adamw") for fmt in DEFAULT_FORMAT_DESIGN] + [(fmt, "manifold") for fmt in DEFAULT_MANIFOLD_EFFECT]
    specs = [example_spec(fmt, opt, seed) for fmt, opt in cells for seed in _DEFAULT_SEEDS]
    fmt, opt, seed, kill_after = _KILLED_RUN
    specs.append(example_spec(fmt, opt, seed, kill_after_steps=kill_after))
    return sorted(specs, key=lambda s: -s.logged_steps)


# ---------------------------------------------------------------------------------------------
# Simulation


def _run_rng(spec: ExampleRunSpec) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(spec.format_name.encode()), zlib.crc32(spec.optimizer.encode())])


def _seed_offset(spec: ExampleRunSpec) -> float:
    """Loss offset shared by every run of one seed (same init and data order), any format."""
    return float(np.random.default_rng(spec.seed).normal(0.0, spec.seed_offset_sd))


def _perplexity(loss: np.ndarray) -> np.ndarray:
    """altgrad: exp(loss) if loss < 20 else +inf, and +inf for NaN loss."""
    finite = np.where(loss < 20, loss, 0.0)
    return np.where(loss < 20, np.exp(finite), np.inf)


def _cumulative_mean(per_step: np.ndarray) -> np.ndarray:
    return np.cumsum(per_step) / np.arange(1, len(per_step) + 1)


def total_parameter_count(n_layer: int) -> int:
    """Weight elements of the model: `param_nan_count` once a NaN update has hit every weight."""
    return sum(math.prod(shape) for _, shape in nanogpt_parameters(n_layer))


def simulate_history(spec: ExampleRunSpec) -> list[dict[str, float | int]]:
    """The metrics dict altgrad's `Trainer` passes to `run.log` at each step 0..logged_steps-1.

    Keys and conditions follow altgrad-data.md §1.5. Aggregates are computed from the
    per-parameter values and `grad_norm` is the L2 of the per-parameter norms, so the metrics
    are consistent with each other. After the first NaN step, gradients and losses are NaN,
    dead fractions 0 (NaN is never below the threshold), every weight is NaN, and the
    cumulative quantization rates stay frozen.
    """
    rng = _run_rng(spec)
    n = spec.logged_steps
    steps = np.arange(n)
    params = nanogpt_parameters(spec.n_layer)
    names = [p for p, _ in params]
    numel = np.array([math.prod(shape) for _, shape in params], dtype=float)
    types = [layer_type(p) for p in names]

    nan_from = n if spec.first_nan_step is None else spec.first_nan_step
    is_nan = steps >= nan_from
    divergence = np.zeros(n)
    if spec.first_nan_step is not None:
        k = steps - (spec.first_nan_step - spec.divergence_steps)
        divergence = np.where((k >= 0) & ~is_nan, 2.0 ** np.clip(k, 0, None), 0.0)

    curve = spec.loss_amplitude * (1 + steps / spec.loss_timescale) ** -spec.loss_exponent
    loss = spec.loss_floor + curve + _seed_offset(spec) + rng.normal(0.0, spec.step_noise_sd, n)
    loss = np.where(is_nan, np.nan, loss + 0.3 * divergence)

    health = np.clip([spec.layer_health[t] for t in types] + rng.normal(0.0, 0.01, len(names)), 0.01, 1.0)
    is_weight = np.array([p.endswith(".weight") and t != "norm" for p, t in zip(names, types)])
    base_l2 = np.array([{"embedding": 0.3, "attention": 0.15, "mlp": 0.2, "norm": 0.02}[t] for t in types])
    base_l2 = np.where(is_weight, base_l2, base_l2 * 0.3)
    unsteadiness = 0.05 + 0.5 * (1 - health)
    decay = (0.4 + 0.6 * (1 + steps / spec.loss_timescale) ** -0.5)[:, None]
    grow = (1.0 + divergence)[:, None]
    nan_rows = is_nan[:, None]
    shape = (n, len(names))

    l2 = base_l2 * decay * grow * np.exp(rng.normal(0.0, 1.0, shape) * unsteadiness)
    linf = l2 * np.minimum(1.0, 6.0 / np.sqrt(numel)) * np.exp(rng.normal(0.0, 0.1, shape))
    linf = np.clip(linf, l2 / np.sqrt(numel), l2)
    is_wte = np.array([p == "transformer.wte.weight" for p in names])
    dead = np.where(is_wte, 0.92 + rng.normal(0.0, 0.004, shape), 0.25 * (1 - health) + rng.normal(0.0, 0.01, shape))
    dead = np.where(nan_rows, 0.0, np.clip(dead, 0.0, 1.0))
    snr = (0.02 + 0.3 * health) * np.exp(rng.normal(0.0, 0.15, shape))
    l2, linf, snr = (np.where(nan_rows, np.nan, x) for x in (l2, linf, snr))

    columns: dict[str, np.ndarray] = {
        "loss": loss,
        "perplexity": _perplexity(loss),
        "grad_norm": np.sqrt(np.sum(l2**2, axis=1)),
        "learning_rate": np.full(n, LEARNING_RATE),
    }
    for i, p in enumerate(names):
        columns[f"grad_norm_l2/{p}"] = l2[:, i]
        columns[f"grad_norm_linf/{p}"] = linf[:, i]
        columns[f"dead_neuron_frac/{p}"] = dead[:, i]
        columns[f"grad_snr/{p}"] = snr[:, i]
    columns |= {
        "grad_norm_l2/mean": l2.mean(axis=1),
        "grad_norm_l2/min": l2.min(axis=1),
        "grad_norm_linf/max": linf.max(axis=1),
        "dead_neuron_frac/mean": dead.mean(axis=1),
        "grad_snr/mean": snr.mean(axis=1),
        "grad_snr/min": snr.min(axis=1),
    }

    if spec.uses_fp8:
        shadow_loss = loss - spec.shadow_gap + rng.normal(0.0, 0.01, n)
        cos = np.clip(1 - 0.6 * (1 - health) * np.exp(rng.normal(0.0, 0.2, shape)), -1.0, 1.0)
        cos = np.where(nan_rows, np.nan, cos)
        snr_fp32 = np.where(nan_rows, np.nan, 0.8 * np.exp(rng.normal(0.0, 0.03, shape)))
        snr_fp8 = snr_fp32 * (0.85 + 0.15 * health) * np.exp(rng.normal(0.0, 0.02, shape))
        columns["shadow_loss"] = shadow_loss
        for i, p in enumerate(names):
            columns[f"grad_cos_sim/{p}"] = cos[:, i]
            slashed = p.replace(".", "/")
            columns[f"grad_snr/{slashed}_fp8"] = snr_fp8[:, i]
            columns[f"grad_snr/{slashed}_fp32"] = snr_fp32[:, i]
            columns[f"grad_snr/{slashed}_diff"] = snr_fp32[:, i] - snr_fp8[:, i]
        columns |= {
            "grad_cos_sim/mean": cos.mean(axis=1),
            "grad_cos_sim/min": cos.min(axis=1),
            "grad_snr/mean_fp8": snr_fp8.mean(axis=1),
            "grad_snr/mean_fp32": snr_fp32.mean(axis=1),
            "grad_snr/mean_diff": (snr_fp32 - snr_fp8).mean(axis=1),
        }
        stall = np.clip(spec.per_step_stall_rate(steps) + rng.normal(0.0, 0.01, n), 0.0, 1.0)
        underflow = spec.underflow_rate * np.exp(rng.normal(0.0, 0.05, n))
        frozen_at = min(nan_from, n) - 1
        cumulative_stall = _cumulative_mean(stall)
        cumulative_underflow = _cumulative_mean(underflow)
        if frozen_at < n - 1:
            cumulative_stall[frozen_at + 1 :] = cumulative_stall[frozen_at]
            cumulative_underflow[frozen_at + 1 :] = cumulative_underflow[frozen_at]
        columns |= {
            "quantization/overflow_rate": np.zeros(n),
            "quantization/underflow_rate": cumulative_underflow,
            "quantization/bit_stall_rate": cumulative_stall,
            "bit_stall_rate": cumulative_stall,
        }

    if spec.is_manifold:
        # Cumulative signed movement in FP32 ULPs: drifts and spreads with sqrt(steps).
        spread = 3.0e4 * np.sqrt(steps + 1) * np.exp(rng.normal(0.0, 0.02, n))
        centre = -120.0 * (steps + 1) + rng.normal(0.0, 50.0, n) * np.sqrt(steps + 1)
        columns |= {
            "bit_position/mean": centre,
            "bit_position/std": spread,
            "bit_position/min": centre - 4.2 * spread,
            "bit_position/max": centre + 4.4 * spread,
        }
        for key in ("bit_position/mean", "bit_position/std", "bit_position/min", "bit_position/max"):
            columns[key] = np.where(is_nan, np.nan, columns[key])

    step_time = spec.step_time_ms * np.exp(rng.normal(0.0, 0.05, n))
    step_time[0] += 2500.0  # step 0 includes warm-up (CUDA init, first batch)
    columns["step_time_ms"] = step_time
    columns["throughput_tokens_sec"] = BATCH_SIZE * BLOCK_SIZE / (step_time / 1000.0)

    rows: list[dict[str, float | int]] = [{} for _ in range(n)]
    for key, values in columns.items():
        for row, value in zip(rows, values.tolist()):
            row[key] = value
    nan_params = total_parameter_count(spec.n_layer)
    val_noise = rng.normal(0.0, 0.01, n)
    for step, row in enumerate(rows):
        row["param_nan_count"] = nan_params if step >= nan_from else 0
        row["param_inf_count"] = 0
        if step > 0 and step % spec.eval_interval == 0:
            val_loss = math.nan if step >= nan_from else float(
                spec.loss_floor + curve[step] + _seed_offset(spec) + spec.val_gap + val_noise[step]
            )
            row["val_loss"] = val_loss
            row["val_perplexity"] = math.exp(val_loss)
    return rows


# ---------------------------------------------------------------------------------------------
# FormatExperimentRunner failure report


def failure_report_markdown(spec: ExampleRunSpec, history: Sequence[Mapping[str, float | int]], written_at: dt.datetime) -> str:
    """The runner's report for a NaN collapse, in the structure of altgrad-data.md §2.5.

    The runner stops at the first NaN, so its history is steps 0..first_nan. Gradient sparsity
    and zero-update layers come from the last step with finite gradients, where wte's sparse
    embedding gradients dominate the element count. The recommendation texts are paraphrases
    (altgrad's canned wording is not reproduced); their selection rule is upstream's.
    """
    if spec.first_nan_step is None:
        raise ValueError(f"{spec.run_name} never collapses, so it has no failure report")
    collapse = spec.first_nan_step
    runner_history = history[: collapse + 1]
    losses = [float(row["loss"]) for row in runner_history]
    finite_losses = [x for x in losses if not math.isnan(x)]
    best_loss = min(finite_losses) if finite_losses else math.inf
    duration = sum(float(row["step_time_ms"]) for row in runner_history) / 1000.0

    last_finite = history[collapse - 1]
    params = nanogpt_parameters(spec.n_layer)
    dead = {p: float(last_finite[f"dead_neuron_frac/{p}"]) for p, _ in params}
    sizes = {p: math.prod(shape) for p, shape in params}
    sparsity = sum(dead[p] * sizes[p] for p in dead) / sum(sizes.values())
    zero_update = [p for p in dead if dead[p] > 0.9]
    at_collapse = history[collapse]

    lines = [
        f"# Failure Report: {spec.format_name} Experiment",
        "",
        "## Summary",
        "",
        "| Metric | Value |",
        "|--------|-------|",
        f"| Format | {spec.format_name} |",
        f"| Collapse Step | {collapse} |",
        "| Collapse Reason | NaN/Inf loss |",
        f"| Final Loss | {losses[-1]:.6f} |",
        f"| Best Loss | {best_loss:.6f} |",
        f"| Total Steps | {len(runner_history)} / {spec.max_steps} |",
        f"| Duration | {duration:.1f}s |",
        "",
        "## Collapse Analysis",
        "",
        "### Gradient Sparsity",
        "",
        f"Fraction of near-zero gradients at collapse: **{sparsity:.2%}**",
        "",
        "This indicates severe gradient vanishing." if sparsity > 0.5 else "This indicates moderate gradient flow.",
        "",
        "### Zero-Update Regions",
        "",
        "Layers with >90% zero gradients at collapse:",
    ]
    lines += [f"- `{p}`" for p in zero_update[:10]]
    if len(zero_update) > 10:
        lines.append(f"- ... and {len(zero_update) - 10} more")
    if not zero_update:
        lines.append("- None (gradients were flowing)")
    lines += [
        "",
        "### Quantization Metrics at Collapse",
        "",
        "| Metric | Value |",
        "|--------|-------|",
        f"| Bit-Stall Rate | {float(at_collapse.get('quantization/bit_stall_rate', 0.0)):.2%} |",
        f"| Overflow Rate | {float(at_collapse.get('quantization/overflow_rate', 0.0)):.2%} |",
        f"| Underflow Rate | {float(at_collapse.get('quantization/underflow_rate', 0.0)):.2%} |",
        "",
        "### Diagnostic Trend (Last 5 Measurements)",
        "",
        "| Step | Stiffness Mean | Grid Error | ULP Mean | Grad < Stiff |",
        "|------|----------------|------------|----------|--------------|",
    ]
    # Snapshots every diagnostic_interval (50) steps; with no log_* flag only the
    # grad-below-stiffness fraction is measured, the other columns stay 0.
    diagnostic_steps = [s for s in range(0, collapse + 1, 50)][-5:]
    lines += [f"| {s} | {0.0:.6f} | {0.0:.6f} | {0.0:.2f} | {0.35 + 0.001 * s:.2%} |" for s in diagnostic_steps]
    config = spec.config()
    lines += [
        "",
        "## Configuration",
        "",
        "```yaml",
        f"fp8_format: {config['fp8_format']}",
        f"max_steps: {config['max_steps']}",
        f"batch_size: {config['batch_size']}",
        f"learning_rate: {config['learning_rate']}",
        f"grad_clip: {config['grad_clip']}",
        f"enable_partition_clipping: {str(config['enable_partition_clipping']).lower()}",
        f"enable_emergency_shift: {str(config['enable_emergency_shift']).lower()}",
        f"seed: {config['seed']}",
        "```",
        "",
        "## Metrics History",
        "",
        "### Loss Trend",
        "",
        "| Step | Loss |",
        "|------|------|",
    ]
    trend_steps = list(range(0, len(losses), max(1, len(losses) // _REPORT_TREND_ROWS)))
    if trend_steps[-1] != len(losses) - 1:
        trend_steps.append(len(losses) - 1)
    lines += [f"| {s} | {losses[s]:.6f} |" for s in trend_steps]
    lines += ["", "## Recommendations", ""]
    if sparsity > 0.7:
        lines += [
            "- Most gradients are near zero at collapse: the format cannot represent the small",
            "  gradient magnitudes. Prefer a format with more exponent range (e.g. E5M2), or enable",
            "  partition-relative clipping and per-tensor scaling.",
        ]
    else:
        lines += [
            "- The loss became NaN/Inf: lower the learning rate, tighten gradient clipping, or enable",
            "  the emergency mantissa shift to fall back to a wider format.",
        ]
    lines += ["", "---", f"*Generated by FormatExperimentRunner at {written_at.isoformat()}*", ""]
    return "\n".join(lines)


def write_failure_report(root: Path, spec: ExampleRunSpec, history: Sequence[Mapping[str, float | int]]) -> Path:
    """Write the report where the runner puts it: `<root>/<checkpoint_dir>/failure_reports/`."""
    written_at = dt.datetime.now()
    directory = root / spec.config()["checkpoint_dir"] / "failure_reports"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{spec.format_name}_{written_at:%Y%m%d_%H%M%S}_failure_report.md"
    path.write_text(failure_report_markdown(spec, history, written_at))
    return path


# ---------------------------------------------------------------------------------------------
# Writing runs with the wandb SDK


@dataclass(frozen=True)
class WrittenRun:
    """Where `write_run` put a run and what it cost."""

    run_name: str
    run_id: str
    run_dir: str  # relative to the store root
    logged_values: int  # values passed to run.log (the store holds fewer for a killed run)
    seconds: float
    failure_report: str | None = None  # relative to the store root


def _init_run(root: Path, spec: ExampleRunSpec):
    import wandb

    return wandb.init(
        mode="offline",
        dir=str(root),
        project="altgrad",
        name=spec.run_name,
        config=spec.config(),
        tags=spec.tags,
        settings=wandb.Settings(
            silent=True,
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,  # no host name, user or e-mail in a shareable store
            x_save_requirements=False,
            disable_git=True,
            disable_code=True,
            save_code=False,
            x_transaction_log_flush_interval=_FLUSH_INTERVAL_SECONDS,
        ),
    )


def _log_history(run, history: Sequence[Mapping[str, float | int]]) -> None:
    for step, metrics in enumerate(history):
        run.log(dict(metrics), step=step)


def _log_until_killed(root: str, spec: ExampleRunSpec, all_logged) -> None:
    """Child process of a killed run: log steps 0..N-1, send the run directory, wait for SIGKILL."""
    run = _init_run(Path(root), spec)
    _log_history(run, simulate_history(spec))
    all_logged.put(run.settings.sync_dir)
    time.sleep(3600)


def _wandb_file(run_dir: Path) -> Path:
    return next(run_dir.glob("run-*.wandb"))


def wandb_records(path: Path) -> list[Any]:
    """Decode the complete records of a `.wandb` file (LevelDB-style log: 7-byte file header,
    32 KiB blocks, 7-byte chunk headers crc32/length/type; FULL=1, FIRST=2, MIDDLE=3, LAST=4).
    A truncated tail (a file still being written, or cut by a kill) is ignored."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    block = 32 * 1024
    records: list[Any] = []
    pending = b""
    pos = 7
    while pos + 7 <= len(data):
        left_in_block = block - pos % block
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, chunk_type = struct.unpack("<IHB", data[pos : pos + 7])
        if chunk_type == 0 or pos + 7 + length > len(data):
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if chunk_type in (1, 2) else pending + chunk
        if chunk_type in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _stored_history_steps(path: Path) -> list[int]:
    return [r.history.step.num for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]


def _has_exit_record(path: Path) -> bool:
    return any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path))


def _service_pids(client_pid: int) -> list[int]:
    """Child processes of the client (its wandb-core service), from /proc (empty elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == client_pid:
            pids.append(int(entry.parent.name))
    return pids


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _write_killed_run(root: Path, spec: ExampleRunSpec) -> Path:
    """Run the training loop in a spawned child, SIGKILL it once its rows reached the file,
    and check that the store holds rows 0..N-2 and no exit record."""
    context = multiprocessing.get_context("spawn")
    all_logged = context.SimpleQueue()
    child = context.Process(target=_log_until_killed, args=(str(root), spec, all_logged), daemon=True)
    child.start()
    try:
        _wait_for(lambda: not all_logged.empty() or not child.is_alive(), 120, f"{spec.run_name} to log its steps")
        if all_logged.empty():
            raise RuntimeError(f"{spec.run_name}: the child process died with code {child.exitcode} before logging")
        run_dir = Path(all_logged.get())
        wandb_file = _wandb_file(run_dir)

        def stored_up_to_last_committed_row() -> bool:
            stored = _stored_history_steps(wandb_file)
            return bool(stored) and stored[-1] >= spec.stored_last_step

        _wait_for(stored_up_to_last_committed_row, 60, f"{spec.run_name}'s rows to reach {wandb_file.name}")
        services = _service_pids(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        _wait_for(lambda: not any(_is_alive(pid) for pid in services), 30, "wandb-core to shut down")
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=30)
    stored = _stored_history_steps(wandb_file)
    if stored[-1] != spec.stored_last_step or _has_exit_record(wandb_file):
        raise RuntimeError(
            f"{spec.run_name}: expected rows up to step {spec.stored_last_step} and no exit record; "
            f"found last step {stored[-1]}, exit record {_has_exit_record(wandb_file)}"
        )
    return run_dir


def write_run(root: Path, spec: ExampleRunSpec) -> WrittenRun:
    """Write one run under `<root>/wandb/` through the wandb SDK, exactly as altgrad logs it.

    A NaN run stops after `nan_patience - 1` NaN losses and finishes normally (exit code 0, as
    upstream's Trainer does) and gets a runner failure report. A killed run (`kill_after_steps`)
    is logged by a spawned child process that is SIGKILLed; see the module docstring for what
    wandb-core then keeps.
    """
    start = time.monotonic()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    history = simulate_history(spec)
    if spec.kill_after_steps is not None:
        run_dir = _write_killed_run(root, spec)
    else:
        run = _init_run(root, spec)
        _log_history(run, history)
        run.finish(exit_code=0)
        run_dir = Path(run.settings.sync_dir)
    report = write_failure_report(root, spec, history) if spec.first_nan_step is not None else None
    return WrittenRun(
        run_name=spec.run_name,
        run_id=RUN_FOLDER.match(run_dir.name)["id"],
        run_dir=str(run_dir.relative_to(root)),
        logged_values=sum(len(row) for row in history),
        seconds=round(time.monotonic() - start, 3),
        failure_report=str(report.relative_to(root)) if report else None,
    )


# ---------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class RunTruth:
    """What the analysis should find for one run.

    `outcome`: completed (reaches max_steps and records its exit, even with high bit stall),
    nan_stopped (exit recorded, history ends with nan_patience-1 NaN losses) or killed (no exit
    record). `failure_mode` follows the pipeline's hierarchy: nan_loss, then bit_stall
    (cumulative rate above the config threshold at the end); None for healthy and killed runs.
    """

    run_name: str
    format_name: str
    optimizer: str
    seed: int
    max_steps: int
    outcome: str
    failure_mode: str | None
    last_step: int
    exit_recorded: bool
    first_nan_step: int | None
    bit_stall_crossing_step: int | None  # first logged step with cumulative stall > threshold
    final_bit_stall_rate: float | None  # logged value at last_step
    expected_final_loss: float | None  # noiseless curve at max_steps - 1, completed runs only
    seed_offset: float
    layer_health: Mapping[str, float]

    @classmethod
    def of(cls, spec: ExampleRunSpec) -> RunTruth:
        history = simulate_history(spec)[: spec.stored_last_step + 1]
        stall = [float(row["quantization/bit_stall_rate"]) for row in history] if spec.uses_fp8 else []
        crossing = next((step for step, value in enumerate(stall) if value > spec.bit_stall_threshold), None)
        if spec.kill_after_steps is not None:
            outcome = "killed"
        elif spec.first_nan_step is not None and spec.first_nan_step < spec.max_steps:
            outcome = "nan_stopped"
        else:
            outcome = "completed"
        if outcome == "nan_stopped":
            failure_mode = "nan_loss"
        elif outcome == "completed" and stall and stall[-1] > spec.bit_stall_threshold:
            failure_mode = "bit_stall"
        else:
            failure_mode = None
        return cls(
            run_name=spec.run_name,
            format_name=spec.format_name,
            optimizer=spec.optimizer,
            seed=spec.seed,
            max_steps=spec.max_steps,
            outcome=outcome,
            failure_mode=failure_mode,
            last_step=spec.stored_last_step,
            exit_recorded=outcome != "killed",
            first_nan_step=spec.first_nan_step if outcome == "nan_stopped" else None,
            bit_stall_crossing_step=crossing,
            final_bit_stall_rate=stall[-1] if stall else None,
            expected_final_loss=spec.expected_loss(spec.max_steps - 1) if outcome == "completed" else None,
            seed_offset=_seed_offset(spec),
            layer_health=dict(spec.layer_health),
        )


@dataclass(frozen=True)
class StudyTruth:
    """Study-level answers, derived from the specs (not stated separately, so they cannot drift).

    Formats are compared under AdamW on completed runs; a format with any NaN-stopped AdamW run
    is not eligible. `fp8_ranking` orders eligible FP8 formats by expected final loss (best
    first); `sweet_spot_format` is its head. `best_format_by_layer_type` is the eligible FP8
    format with the highest mean layer health (highest grad_snr, lowest dead_neuron_frac
    excluding wte, steadiest grad_norm_l2, highest grad_cos_sim). `manifold_effect` is, per
    format with completed runs of both optimizers, manifold minus AdamW of the mean expected
    final loss and of the mean noiseless final cumulative bit-stall rate.
    """

    baseline_format: str | None
    sweet_spot_format: str | None
    fp8_ranking: list[str]
    best_format_by_layer_type: dict[str, str]
    manifold_effect: dict[str, dict[str, float]]
    runs: dict[str, RunTruth]

    @classmethod
    def of(cls, specs: Sequence[ExampleRunSpec]) -> StudyTruth:
        runs = {spec.run_name: RunTruth.of(spec) for spec in specs}
        if len(runs) != len(specs):
            raise ValueError("run names must be unique: two specs share format, optimizer and seed")
        by_name = {spec.run_name: spec for spec in specs}

        def completed(fmt: str, optimizer: str) -> list[ExampleRunSpec]:
            return [
                by_name[t.run_name]
                for t in runs.values()
                if t.format_name == fmt and t.optimizer == optimizer and t.outcome == "completed"
            ]

        nan_formats = {t.format_name for t in runs.values() if t.optimizer == "adamw" and t.outcome == "nan_stopped"}
        eligible = sorted(
            {s.format_name for s in specs if s.uses_fp8 and s.format_name not in nan_formats and completed(s.format_name, "adamw")}
        )

        def mean_final_loss(fmt: str, optimizer: str) -> float:
            return float(np.mean([s.expected_loss(s.max_steps - 1) for s in completed(fmt, optimizer)]))

        def mean_final_stall(fmt: str, optimizer: str) -> float:
            return float(np.mean([s.expected_bit_stall_rate(s.max_steps - 1) for s in completed(fmt, optimizer)]))

        ranking = sorted(eligible, key=lambda fmt: mean_final_loss(fmt, "adamw"))
        best_by_layer = {
            lt: max(eligible, key=lambda fmt: np.mean([s.layer_health[lt] for s in completed(fmt, "adamw")]))
            for lt in LAYER_TYPES
        } if eligible else {}
        manifold_effect = {
            fmt: {
                "final_loss": round(mean_final_loss(fmt, "manifold") - mean_final_loss(fmt, "adamw"), 6),
                "final_bit_stall_rate": round(mean_final_stall(fmt, "manifold") - mean_final_stall(fmt, "adamw"), 6),
            }
            for fmt in sorted({s.format_name for s in specs if s.uses_fp8})
            if completed(fmt, "manifold") and completed(fmt, "adamw")
        }
        has_baseline = any(not s.uses_fp8 for s in specs)
        return cls(
            baseline_format=BASELINE_FORMAT if has_baseline else None,
            sweet_spot_format=ranking[0] if ranking else None,
            fp8_ranking=ranking,
            best_format_by_layer_type=best_by_layer,
            manifold_effect=manifold_effect,
            runs=runs,
        )


@dataclass(frozen=True)
class ExampleStudy:
    """A written store: where it is, what was asked for, what was written, and the truths."""

    root: Path
    specs: list[ExampleRunSpec]
    written: list[WrittenRun]
    truth: StudyTruth
    seconds_to_write: float

    @property
    def logged_values(self) -> int:
        return sum(run.logged_values for run in self.written)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return json.loads(json.dumps(value, default=lambda v: dict(v) if isinstance(v, Mapping) else str(v)))

        return {
            "description": "Example altgrad runs written by altgrad_pipeline.examples; the truths an analysis should recover.",
            "runs_written": len(self.written),
            "logged_values": self.logged_values,
            "seconds_to_write": self.seconds_to_write,
            "truth": plain(dataclasses.asdict(self.truth)),
            "written": [dataclasses.asdict(run) for run in self.written],
            "specs": plain([dataclasses.asdict(spec) for spec in self.specs]),
        }


def clone_run(template: Path, store: Path, run_id: str, *, hard_link: bool = False) -> Path:
    """A copy of a written run folder under a new run id (folder and `.wandb` file renamed), for
    stores of thousands of runs in tests and benchmarks without writing each through the SDK;
    `hard_link` shares the bytes with the template instead of copying them."""
    match = RUN_FOLDER.match(template.name)
    old_id = match["id"]
    target = store / "wandb" / f"{template.name[: match.start('id')]}{run_id}"
    shutil.copytree(template, target, copy_function=os.link if hard_link else shutil.copy2)
    (target / f"run-{old_id}.wandb").rename(target / f"run-{run_id}.wandb")
    return target


def write_example_runs(root: Path, specs: Sequence[ExampleRunSpec] | None = None, workers: int = 2) -> ExampleStudy:
    """Write `specs` (default: `default_study()`) under `root` and `<root>/EXPECTED.json`.

    Runs are written by a spawn-context process pool of `workers` (1 writes in this process);
    a killed run is always written from this process, since it spawns and kills its own child.
    Refuses a root that already holds a store, so truths and runs cannot get mixed.
    """
    root = Path(root).resolve()
    specs = list(default_study() if specs is None else specs)
    truth = StudyTruth.of(specs)
    if (root / "EXPECTED.json").exists() or (root / "wandb").exists():
        raise FileExistsError(f"{root} already holds a run store; write example runs into a new directory")
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ordinary = [s for s in specs if s.kill_after_steps is None]
    killed = [s for s in specs if s.kill_after_steps is not None]
    written: dict[str, WrittenRun] = {}
    if workers > 1 and len(ordinary) > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(write_run, root, spec) for spec in ordinary]
            for spec in killed:
                written[spec.run_name] = write_run(root, spec)
            for future in futures:
                run = future.result()
                written[run.run_name] = run
    else:
        for spec in [*ordinary, *killed]:
            written[spec.run_name] = write_run(root, spec)
    import wandb

    wandb.teardown()  # runs written in this process: wandb-core may still be writing their logs after finish()
    study = ExampleStudy(
        root=root,
        specs=specs,
        written=[written[s.run_name] for s in specs],
        truth=truth,
        seconds_to_write=round(time.monotonic() - start, 2),
    )
    (root / "EXPECTED.json").write_text(json.dumps(study.to_json(), indent=2, allow_nan=True) + "\n")
    return study
