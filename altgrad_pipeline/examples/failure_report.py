"""The FormatExperimentRunner failure report of a NaN collapse, written where the runner puts it."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from altgrad_pipeline.examples.specs import ExampleRunSpec, nanogpt_parameters

#: Rows of the FormatExperimentRunner report's loss trend: every max(1, n // 20) steps.
_REPORT_TREND_ROWS = 20


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
