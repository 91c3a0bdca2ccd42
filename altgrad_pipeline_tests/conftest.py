"""Shared fixtures: where the real-run corpora live, and a quiet offline wandb environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("ALTGRAD_CORPORA", PROJECT_ROOT.parent / "shared" / "corpora"))


#: Tests that share one pytest-xdist worker (`-n 2 --dist loadgroup`, pyproject), by node id prefix,
#: first match: what they share is costly to build twice (runs written by the SDK, a refresh, servers)
#: or is one piece of state (a browser page). Every other test is scheduled on its own. Under pytest 9
#: xdist's `xdist_group` mark cannot regroup tests (it rewrites node ids, which pytest 9 no longer reads).
WORKER_GROUPS = {
    "altgrad_pipeline_tests/scale/test_cluster.py::": "the scale cluster (session fixture) and its refresh",
    "altgrad_pipeline_tests/reports/test_browser.py::": "a refreshed study, its webserver and one page",
    "altgrad_pipeline_tests/test_pipeline.py::": "the 22-run SDK study and its refresh",
    "altgrad_pipeline_tests/reports/test_documents.py::": "the documents' studies",
    "altgrad_pipeline_tests/media/test_media_figures.py::": "the media study, materialized",
    "altgrad_pipeline_tests/test_examples.py::": "the small example store",
    "altgrad_pipeline_tests/ingest/test_wandb_corpora.py::": "the corpus catalog",
    "altgrad_pipeline_tests/ingest/test_wandb_fastpath.py::": "the SDK log, under each decoder",
    # Two groups, each building the module's clean refresh once: the kills, and the damage.
    "altgrad_pipeline_tests/test_self_healing.py::test_odd_format_names": "self-healing: kills",
    "altgrad_pipeline_tests/test_self_healing.py::test_a_refresh_killed": "self-healing: kills",
    "altgrad_pipeline_tests/test_self_healing.py::": "self-healing: damaged files, races, full disks",
}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent under `-p no:xdist`
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup` with the groups of `WORKER_GROUPS`. xdist hands out the units with the
    most tests first, so every group is under way before the single tests."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkerGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return next((group for prefix, group in WORKER_GROUPS.items() if nodeid.startswith(prefix)), nodeid)

    return WorkerGroupScheduling(config, log)


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


#: Run ids W&B accepts that are not plain alphanumerics, and the (format, optimizer, seed) each is logged as.
PUNCTUATED_RUN_IDS = {
    "e5m2-adamw-s1": ("E5M2", "adamw", 1),
    "e3m4_manifold_s2": ("E3M4", "manifold", 2),
    "bf16.base.v2": ("BF16", "adamw", 2),
}


def write_punctuated_id_runs(root: Path, max_steps: int = 40) -> dict[str, Path]:
    """The `PUNCTUATED_RUN_IDS` runs, written with `wandb.init(id=...)` by the real SDK (offline)
    with the example study's config and history; returns each id's run folder."""
    import wandb

    from altgrad_pipeline.examples import example_spec, simulate_history

    folders = {}
    for run_id, (fmt, optimizer, seed) in PUNCTUATED_RUN_IDS.items():
        spec = example_spec(fmt, optimizer, seed, max_steps=max_steps)
        run = wandb.init(
            mode="offline", dir=str(root), project="altgrad", id=run_id, name=spec.run_name, config=spec.config(),
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )  # fmt: skip
        for step, row in enumerate(simulate_history(spec)):
            run.log(row, step=step)
        run.finish()
        folders[run_id] = Path(run.settings.sync_dir)
    wandb.teardown()  # wandb-core may still be writing the last log: wait for it to finish
    return folders
