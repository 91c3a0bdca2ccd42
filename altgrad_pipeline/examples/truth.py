"""The answers an analysis should recover from an example store, derived from the specs (not
stated separately, so they cannot drift)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from altgrad_pipeline.examples.curves import seed_offset, simulate_history
from altgrad_pipeline.examples.specs import BASELINE_FORMAT, LAYER_TYPES, ExampleRunSpec


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
            seed_offset=seed_offset(spec),
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
