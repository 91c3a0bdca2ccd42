"""Where runs come from and where outputs go, read from the environment in one place.

`ALTGRAD_RUNS` lists run stores separated by the OS path separator (`:` on Linux): local roots
and/or `wandb://entity/project` paths. `ALTGRAD_DATA_DIR` (default `./altgrad_data`) holds the
Parquet assets, the reports and, unless `DAGSTER_HOME` says otherwise, the Dagster instance.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

RUNS_ENV = "ALTGRAD_RUNS"
DATA_DIR_ENV = "ALTGRAD_DATA_DIR"
GRACE_ENV = "ALTGRAD_CRASH_GRACE_SECONDS"
DEFAULT_DATA_DIR = "./altgrad_data"
DEFAULT_GRACE_SECONDS = 3600.0
WANDB_SCHEME = "wandb://"


@dataclass(frozen=True)
class RunStoreEntry:
    """One entry of ALTGRAD_RUNS: a local folder, or a W&B `entity/project` path."""

    kind: str  # "local" or "wandb"
    target: str

    @property
    def label(self) -> str:
        return f"{WANDB_SCHEME}{self.target}" if self.kind == "wandb" else self.target


def parse_run_stores(value: str) -> list[RunStoreEntry]:
    """Split ALTGRAD_RUNS on the OS path separator, except where `:` opens a `wandb://` scheme."""
    separator = re.escape(os.pathsep) + ("(?!//)" if os.pathsep == ":" else "")
    entries: list[RunStoreEntry] = []
    for piece in (p.strip() for p in re.split(separator, value)):
        if not piece:
            continue
        if piece.startswith(WANDB_SCHEME):
            entries.append(RunStoreEntry("wandb", piece[len(WANDB_SCHEME) :].strip("/")))
        else:
            entries.append(RunStoreEntry("local", str(Path(piece).expanduser())))
    return entries


def data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR


def absolute_data_dir(value: str | None = None) -> str:
    """The data dir as an absolute path (or URL), so the UI, the daemon and the CLI agree on it
    whatever their working directory."""
    chosen = value or data_dir()
    return chosen if "://" in chosen else str(Path(chosen).expanduser().resolve())


def run_stores_value() -> str:
    return os.environ.get(RUNS_ENV, "")


def example_store_dir(base: str | None = None) -> Path:
    """Where `refresh` writes the bundled example runs when no ALTGRAD_RUNS is configured."""
    return Path(base or data_dir()) / "example_runs"


def crash_grace_seconds() -> float:
    return float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_SECONDS)
