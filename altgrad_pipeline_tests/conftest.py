"""Shared fixtures: where the real-run corpora live, and a quiet offline wandb environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("ALTGRAD_CORPORA", PROJECT_ROOT.parent / "shared" / "corpora"))


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    """The real run logs beside the project (test material only, never copied into the repo)."""
    if not CORPORA.is_dir():
        pytest.skip(f"corpora not found at {CORPORA}")
    return CORPORA


def offline_wandb_env(env: pytest.MonkeyPatch, base: Path) -> None:
    """Keep the wandb SDK offline, quiet and out of the home dir (config and cache under `base`).
    Module-scoped fixtures that write runs call this with their own `MonkeyPatch.context()`."""
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_CONFIG_DIR": str(base / "wandb-config"),
        "WANDB_CACHE_DIR": str(base / "wandb-cache"),
    }.items():
        env.setenv(name, value)


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test that touches the wandb SDK stays offline and writes nothing into the home dir."""
    offline_wandb_env(monkeypatch, tmp_path_factory.getbasetemp())
