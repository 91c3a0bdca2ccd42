"""Run-folder discovery and merging: resumed runs, `latest-run` copies, run state evidence, SDK 0.8."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA
from altgrad_pipeline.ingest.wandb.local import LocalWandbSource
from altgrad_pipeline_tests.conftest import PUNCTUATED_RUN_IDS, offline_wandb_env, write_punctuated_id_runs
from altgrad_pipeline_tests.sdk import finish_and_flush


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two projects under one root: a resumed run (two folders, same id), a plain run, a failed run."""
    import wandb

    base = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as env:
        offline_wandb_env(env, base)
        run = wandb.init(mode="offline", dir=base / "proj_a", project="a", id="resumed01", config={"lr": 0.1})
        for step in range(5):
            run.log({"loss": float(step)}, step=step)
        finish_and_flush(run, exit_code=1)
        time.sleep(1.05)  # folder names carry the second; a resume needs a new one
        run = wandb.init(mode="offline", dir=base / "proj_a", project="a", id="resumed01", resume="allow")
        for step in range(5, 9):
            run.log({"loss": float(step), "extra": 1.0}, step=step)
        finish_and_flush(run)
        run = wandb.init(mode="offline", dir=base / "proj_b", project="b", id="plainrun1", config={"seed": 3})
        for step in range(3):
            run.log({"acc": step / 10}, step=step)
        finish_and_flush(run)
    return base


def by_id(source: LocalWandbSource) -> dict[str, object]:
    return {loc.run_id_hint: loc for loc in source.discover()}


def test_discovery_finds_every_run_once_across_projects(store: Path) -> None:
    locators = by_id(LocalWandbSource(store))
    assert sorted(locators) == ["plainrun1", "resumed01"]
    resumed = locators["resumed01"]
    assert len(resumed.parts) == 2 and resumed.location == resumed.parts[0]
    assert all(Path(p).name.endswith("-resumed01") for p in resumed.parts)
    assert "run-resumed01.wandb" in resumed.fingerprint
    # A root that is itself a `wandb` dir works too.
    assert sorted(by_id(LocalWandbSource(store / "proj_b" / "wandb"))) == ["plainrun1"]


def test_resumed_run_is_one_run_with_continuing_steps(store: Path) -> None:
    source = LocalWandbSource(store)
    run = source.read(by_id(source)["resumed01"])
    assert run.run_id == "resumed01" and run.source == "wandb-local"
    loss = dict(run.history.filter(run.history["key"] == "loss").select("step", "value").iter_rows())
    assert loss == {step: float(step) for step in range(9)}
    assert run.history.filter(run.history["key"] == "extra")["step"].to_list() == [5, 6, 7, 8]
    assert run.history.schema == HISTORY_SCHEMA and run.history["run_id"].unique().to_list() == ["resumed01"]
    assert run.ended and run.exit_code == 0  # the last segment decides: it finished
    assert run.config["lr"] == 0.1
    assert [i.kind for i in run.issues] == []


def test_latest_run_copy_is_not_counted_twice(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(store / "proj_b", root, symlinks=True)
    wandb_dir = root / "wandb"
    link = wandb_dir / "latest-run"
    target = next(wandb_dir.glob("offline-run-*"))
    if link.is_symlink():
        link.unlink()
    shutil.copytree(target, link)  # a committed real-folder copy, as in the corpora
    (wandb_dir / "latest-run.4242").write_text(str(target))
    locators = LocalWandbSource(root).discover()
    assert [loc.run_id_hint for loc in locators] == ["plainrun1"]
    assert "latest-run" not in locators[0].location and locators[0].parts == (str(target),)
    # With the real folder gone, the copy is the run.
    shutil.rmtree(target)
    (only,) = LocalWandbSource(root).discover()
    run = LocalWandbSource(root).read(only)
    assert only.location == str(link) and run.run_id == "plainrun1"
    assert run.history["value"].to_list() == [0.0, 0.1, 0.2]


def test_state_evidence_last_write_and_cut_short(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "cut"
    shutil.copytree(store / "proj_b", root, symlinks=True)
    folder = next((root / "wandb").glob("offline-run-*"))
    log = folder / "run-plainrun1.wandb"
    source = LocalWandbSource(root)
    finished = source.read(source.discover()[0])
    assert finished.ended and finished.exit_code == 0 and not finished.cut_short
    assert finished.config == {"seed": 3}
    assert finished.last_write == dt.datetime.fromtimestamp(log.stat().st_mtime, dt.UTC)

    # Cut the log anywhere past its run record and leave a summary side file running ahead: the
    # side file is the newer summary wherever the cut falls (the log's size varies between runs).
    data = log.read_bytes()
    (folder / "files").mkdir(exist_ok=True)
    (folder / "files" / "wandb-summary.json").write_text(json.dumps({"_step": 500, "acc": 0.9, "_wandb": {"runtime": 3}}))
    old = time.time() - 7200
    for cut in range(len(data) // 4, len(data), 5):
        log.write_bytes(data[:cut])
        os.utime(log, (old, old))
        (locator,) = source.discover()
        assert locator.fingerprint != finished.fingerprint
        cut_run = source.read(locator)
        assert not cut_run.ended and cut_run.exit_code is None and cut_run.cut_short, cut
        assert cut_run.summary["acc"] == 0.9 and "_wandb" not in cut_run.summary, cut
        assert {i.kind for i in cut_run.issues} <= {"truncated_tail"}, cut


def write_old_format_run(folder: Path, *, state: str, exitcode: int | None) -> None:
    folder.mkdir(parents=True)
    lines = [
        '{"Episode reward": -98.5, "Loss": 12.5, "_runtime": 5.8, "_timestamp": 1585015311.6, "_step": 0}',
        '{"Episode reward": NaN, "Loss": Infinity, "_runtime": 6.3, "_timestamp": 1585015312.1, "_step": 1}',
        '{"gradients/fc.0.weight": {"_type": "histogram", "values": [1, 2], "bins": [0, 1, 2]}, "_step": 2}',
        "{broken line",
    ]
    (folder / "wandb-history.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "config.yaml").write_text(
        "wandb_version: 1\n\n_wandb:\n  desc: null\n  value:\n    cli_version: 0.8.31\n"
        "lr:\n  desc: null\n  value: 0.0005\nseed:\n  desc: null\n  value: 42\n"
    )
    metadata = {"state": state, "project": "mcc", "email": "someone@example.org", "host": "secret-host",
                "startedAt": "2020-03-24T02:01:46.594824"}
    if exitcode is not None:
        metadata["exitcode"] = exitcode
    (folder / "wandb-metadata.json").write_text(json.dumps(metadata))
    (folder / "wandb-summary.json").write_text('{"Loss": 1.5, "_step": 2}')


def test_sdk_0_8_folders(tmp_path: Path) -> None:
    write_old_format_run(tmp_path / "wandb" / "run-20200324_020146-killed01", state="killed", exitcode=255)
    write_old_format_run(tmp_path / "wandb" / "run-20200324_030146-running1", state="running", exitcode=None)
    source = LocalWandbSource(tmp_path)
    runs = {loc.run_id_hint: source.read(loc) for loc in source.discover()}
    killed = runs["killed01"]
    values = {(s, k): v for s, k, v in killed.history.select("step", "key", "value").iter_rows()}
    assert values[(0, "Episode reward")] == -98.5 and values[(0, "Loss")] == 12.5
    assert math.isnan(values[(1, "Episode reward")]) and values[(1, "Loss")] == math.inf
    assert len(values) == 4
    assert killed.history.filter(killed.history["step"] == 0)["runtime"].to_list() == [5.8, 5.8]
    assert killed.value_types == {"gradients/fc.0.weight": "histogram"}
    assert [i.kind for i in killed.issues] == ["malformed_line"] and "line 4" in killed.issues[0].lost
    assert killed.ended and killed.exit_code == 255
    assert killed.config == {"lr": 0.0005, "seed": 42}
    assert killed.sdk_version == "0.8.31" and killed.project == "mcc"
    assert killed.started_at == dt.datetime(2020, 3, 24, 2, 1, 46, 594824, tzinfo=dt.UTC)
    assert killed.summary == {"Loss": 1.5, "_step": 2}
    text = json.dumps([killed.config, killed.summary, killed.name, killed.tags, killed.notes])
    assert "example.org" not in text and "secret-host" not in text
    running = runs["running1"]
    assert not running.ended and running.exit_code is None


def test_nothing_to_find(tmp_path: Path) -> None:
    assert LocalWandbSource(tmp_path / "missing").discover() == []
    (tmp_path / "wandb").mkdir()
    assert LocalWandbSource(tmp_path).discover() == []


def test_run_ids_with_hyphens_underscores_and_dots(tmp_path: Path) -> None:
    """Ids W&B accepts beyond [A-Za-z0-9]: folders, logs and a committed `latest-run` copy."""
    folders = write_punctuated_id_runs(tmp_path, max_steps=5)
    assert sorted(p.name.split("-", 3)[-1] for p in folders.values()) == sorted(PUNCTUATED_RUN_IDS)
    wandb_dir = tmp_path / "wandb"
    link = wandb_dir / "latest-run"
    assert link.is_symlink() and link.resolve() == folders["bf16.base.v2"].resolve()
    link.unlink()
    shutil.copytree(folders["bf16.base.v2"], link)  # a committed real-folder copy: still one run
    source = LocalWandbSource(tmp_path)
    locators = by_id(source)
    assert sorted(locators) == sorted(PUNCTUATED_RUN_IDS) and source.discovery_issues == []
    for run_id, locator in locators.items():
        run = source.read(locator)
        assert run.run_id == run_id and run.ended and run.history.height > 0
    shutil.rmtree(folders["bf16.base.v2"])
    copy = by_id(LocalWandbSource(tmp_path))["bf16.base.v2"]
    assert copy.location == str(link)


def test_folders_named_like_runs_that_do_not_parse_are_issues(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "odd"
    shutil.copytree(store / "proj_b", root, symlinks=True)
    wandb_dir = root / "wandb"
    for name in ("run-nostamp", "offline-run-20240101_120000-", "run-2024-01-01-abc"):
        (wandb_dir / name).mkdir()
    export = wandb_dir / "run-plainrun1-history"  # a history export: the wandb-export reader's
    export.mkdir()
    (export / "0000.parquet").write_bytes(b"")
    (wandb_dir / "run-notes.txt").write_text("a file, not a folder")
    source = LocalWandbSource(root)
    assert sorted(by_id(source)) == ["plainrun1"]
    issues = source.discovery_issues
    assert sorted(Path(i.location).name for i in issues) == ["offline-run-20240101_120000-", "run-2024-01-01-abc", "run-nostamp"]
    assert {i.kind for i in issues} == {"unrecognised_run_folder"} and all(i.source == "wandb-local" for i in issues)
    assert "run-nostamp" in next(i.reason for i in issues if i.location.endswith("run-nostamp"))
    synced = RunCatalog(tmp_path / "cache", [source]).sync()
    assert sorted(Path(i.location).name for i in synced.issues if i.kind == "unrecognised_run_folder") == [
        "offline-run-20240101_120000-", "run-2024-01-01-abc", "run-nostamp"
    ]  # fmt: skip
