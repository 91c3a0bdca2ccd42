"""The per-step metrics altgrad's `Trainer` would log for a spec, simulated deterministically.

The loss of every run follows L(t) = loss_floor + loss_amplitude * (1 + t/loss_timescale)^-loss_exponent
+ a per-seed offset (shared by all runs of one seed, as they share data order) + per-step noise.
Per-parameter gradient health is driven by one `layer_health` number per layer type (embedding,
attention, mlp, norm): higher health means higher `grad_snr`, lower `dead_neuron_frac`, steadier
`grad_norm_l2` and higher `grad_cos_sim`.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from altgrad_pipeline.examples.specs import (
    BATCH_SIZE,
    BLOCK_SIZE,
    LEARNING_RATE,
    ExampleRunSpec,
    layer_type,
    nanogpt_parameters,
)


def _run_rng(spec: ExampleRunSpec) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(spec.format_name.encode()), zlib.crc32(spec.optimizer.encode())])


def seed_offset(spec: ExampleRunSpec) -> float:
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
    loss = spec.loss_floor + curve + seed_offset(spec) + rng.normal(0.0, spec.step_noise_sd, n)
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
                spec.loss_floor + curve[step] + seed_offset(spec) + spec.val_gap + val_noise[step]
            )
            row["val_loss"] = val_loss
            row["val_perplexity"] = math.exp(val_loss)
    return rows

