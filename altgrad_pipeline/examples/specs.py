"""What determines an example run (`ExampleRunSpec`) and the default study's design: formats,
optimizers, effect sizes per format and of ManifoldAdamW, seeds, the killed run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

