"""Real runs for the automation tests, written once per session with the wandb SDK (offline) and
copied per test: a store of real `.wandb` folders costs a file copy, not an SDK start."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from altgrad_pipeline.examples import ExampleRunSpec, clone_run, write_run

TEMPLATE_FORMATS = ("E5M2", "E3M4", "E2M5")


@pytest.fixture(scope="session")
def template_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished real run folder per format (E2M5 is new to the study)."""
    root = tmp_path_factory.mktemp("template-runs")
    runs = {}
    for fmt in TEMPLATE_FORMATS:
        written = write_run(root / fmt, ExampleRunSpec(format_name=fmt, optimizer="adamw", seed=1, max_steps=12))
        runs[fmt] = root / fmt / written.run_dir
    return runs


def copy_run(template: Path, store: Path, run_id: str) -> Path:
    """A copy of a real run folder under a new id with fresh mtimes (a run that just finished)."""
    target = clone_run(template, store, run_id)
    now = time.time()
    for path in target.rglob("*"):
        os.utime(path, (now, now))
    return target


def wandb_file(run_dir: Path) -> Path:
    return next(run_dir.glob("run-*.wandb"))
