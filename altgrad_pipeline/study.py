"""The study's vocabulary, spelled once: how a run's format and optimizer are read from its config
(`StudyRules`), the format labels (`BASELINE_FORMAT`, `NO_FORMAT`), the optimizer names, the loss
and noise keys, and the one rule for which format names the pipeline accepts (`is_safe_format_name`).

Every stage (ingest, analysis, reports, the Dagster wiring) imports these names; none spells them.
Another study changes this module, not code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: The baseline every FP8 format is compared with.
BASELINE_FORMAT = "BF16"
#: `fp8_format` of a run whose config and name say nothing about the format.
NO_FORMAT = "no_format"

#: Optimizer names derived from the config (`StudyRules.optimizer_key`).
STANDARD_OPTIMIZER = "AdamW"
MANIFOLD_OPTIMIZER = "ManifoldAdamW"

#: History keys of the training loss, in priority order.
LOSS_KEYS: tuple[str, ...] = ("loss", "train/loss")
#: History keys of the FP8 bit-stall rate (altgrad logs it under `quantization/`, older runs bare).
BIT_STALL_KEYS: tuple[str, ...] = ("quantization/bit_stall_rate", "bit_stall_rate")

#: Config keys that differ between runs without changing what is trained (names, paths,
#: bookkeeping intervals, logging switches). Any key starting with `log_` is noise as well.
CONFIG_NOISE_KEYS: tuple[str, ...] = (
    "run_name",
    "tags",
    "project",
    "seed",
    "checkpoint_dir",
    "checkpoint_interval",
    "max_checkpoints",
    "log_interval",
    "eval_interval",
    "diagnostic_interval",
)

#: Config keys (regular expressions, searched) that name run identity and bookkeeping rather than
#: the experiment: seeds, names, paths, intervals, devices. Sweeps and the media report leave them out.
DEFAULT_NOISE_PATTERNS: tuple[str, ...] = (
    r"(^|\.)_wandb(\.|$)",
    r"(^|\.|_)seed$",
    r"(^|\.)(run_name|run_id|tags?|project|entity|notes|group)$",
    r"(^|\.)wandb_\w+$",
    r"(^|\.)paths?(\.|$)",
    r"_(dir|path|file)$",
    r"checkpoint",
    r"_interval$",
    r"(^|\.)(log|eval|save|print|val_check)_(every|freq|frequency|steps|iters)$",
    r"(^|\.|_)(time|timestamp|date|datetime)$",
    r"(^|\.)(device|backend|num_workers)$",
)


def is_noise_key(key: str, patterns: Sequence[str] = DEFAULT_NOISE_PATTERNS) -> bool:
    return any(re.search(p, key) for p in patterns)


#: Format names come from run configs and become partition keys and parts of file names: letters,
#: digits, `_`, `+`, `-` and `.` (not first), at most 64 characters (`E4M3`, `E4M3-FNUZ`, `FP8+x`).
SAFE_FORMAT_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,63}$")


#: The partition of runs whose format name fails `is_safe_format_name` (an ingest_issues row says why).
INVALID_FORMAT = "invalid_format"


def is_safe_format_name(name: object) -> bool:
    """The one rule every stage applies to a format name that becomes a partition key and a file
    name: short, no path separator, no leading dot, nothing a shell, URL or file system reads
    specially. Ingest puts runs with another name in `INVALID_FORMAT` (`format_partition`), the
    sensor and schedule refuse to partition by one, the IO manager refuses it as a file name, and
    the reports refuse to put one in a file name."""
    return isinstance(name, str) and SAFE_FORMAT_NAME.fullmatch(name) is not None


def format_partition(name: str) -> str:
    """The partition a derived format name goes to: itself when safe, else `INVALID_FORMAT`."""
    return name if is_safe_format_name(name) else INVALID_FORMAT


@dataclass(frozen=True)
class StudyRules:
    """How to read the experimental condition of a run from its config (and name, as a fallback)."""

    format_key: str = "fp8_format"
    enabled_key: str = "use_fp8"
    baseline_label: str = BASELINE_FORMAT
    baseline_values: tuple[str, ...] = ("none", "bf16", "fp32", "")
    strip_prefix: str = "FP8_"
    no_format_label: str = NO_FORMAT
    optimizer_key: str = "use_manifold_aware"
    optimizer_on: str = MANIFOLD_OPTIMIZER
    optimizer_off: str = STANDARD_OPTIMIZER
    seed_key: str = "seed"
    max_steps_key: str = "max_steps"
    #: Runs from stores without projects (JSONL, CSV, TensorBoard) join their study by this config key.
    project_key: str = "project"
    #: Classification runs name themselves `E5M2_manifold` / `BF16_adamw` and may lack config keys.
    name_pattern: str = r"^(?i:(BF16|FP8_E\dM\d|E\dM\d))_(?i:(adamw|manifold))\b"
