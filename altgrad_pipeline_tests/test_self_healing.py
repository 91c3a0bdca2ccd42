"""A refresh that heals itself: killed at any phase, fed hostile format names, handed damaged files
started twice at once or run out of disk space, a plain `altgrad-pipeline refresh` converges to what a clean run builds.

One small JSONL study (BF16 and E5M2, plus a run whose format is "../../../ESCAPE" and one whose
format is 300 characters) is refreshed once cleanly; every other data dir must end equal to it:
the same tables, and the same reports apart from their build times. Kills are SIGKILLs of the CLI
process at named write points (`ALTGRAD_TEST_KILL_AT`, test-only, see `atomic.kill_point`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from altgrad_pipeline import atomic, locking
from altgrad_pipeline.atomic import KILL_AT_ENV
from altgrad_pipeline.examples import example_spec, simulate_history

STEPS = 120
LONG_FORMAT = "E" * 300
_BUILT = re.compile(r"Built \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\.")


def _write_jsonl_run(root: Path, token: str, config: dict, history: list[dict]) -> None:
    """A dr_exp-style JSONL run: `exp/run_<token>/metrics.jsonl`, its job file says it completed."""
    folder = root / "exp" / f"run_{token}"
    folder.mkdir(parents=True)
    folder.joinpath("metrics.jsonl").write_text("".join(json.dumps({"step": step, **row}) + "\n" for step, row in enumerate(history)))
    (root / "exp" / "jobs").mkdir(exist_ok=True)
    (root / "exp" / "jobs" / f"{token}.json").write_text(json.dumps({"status": "completed", "config": config}))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("healing") / "runs"
    cells = [("BF16", "adamw", 1), ("BF16", "adamw", 2), ("E5M2", "adamw", 1), ("E5M2", "adamw", 2),
             ("E5M2", "manifold", 1), ("E5M2", "manifold", 2)]  # fmt: skip
    for fmt, optimizer, seed in cells:
        spec = example_spec(fmt, optimizer, seed, max_steps=STEPS)
        _write_jsonl_run(root, spec.run_name.replace("_", "-"), spec.config(), simulate_history(spec))
    # Two seeds: two identical runs would give `invalid_format` a spread of float noise (0 or 3e-17
    # by summation order), which the reports print.
    for token, fmt, seed in (("escape", "../../../ESCAPE", 7), ("long", LONG_FORMAT, 8)):
        odd = example_spec("E5M2", "adamw", seed, max_steps=STEPS)
        _write_jsonl_run(root, token, odd.config() | {"fp8_format": fmt}, simulate_history(odd))
    return root


def _refresh(store: Path, data: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """The CLI in its own process (so it can be SIGKILLed), with its instance under the data dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", KILL_AT_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    command = [sys.executable, "-m", "altgrad_pipeline.cli", "refresh", "--runs", str(store), "--data-dir", str(data), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.stdout


def _killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr


@pytest.fixture(scope="module")
def clean(store, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("clean") / "data"
    _ok(_refresh(store, data))
    return data


def _tables(data: Path) -> dict[str, pl.DataFrame]:
    """Every asset file, with the data dir's own path (in `path`-like columns) written as <data>."""
    files = sorted((data / "assets").rglob("*.parquet"))
    here = [pl.col(pl.String).str.replace_all(str(data), "<data>", literal=True),
            pl.col(pl.List(pl.String)).list.eval(pl.element().str.replace_all(str(data), "<data>", literal=True))]  # fmt: skip
    return {str(p.relative_to(data)): pl.read_parquet(p).with_columns(here) for p in files}


def _reports(data: Path) -> dict[str, str | bytes | pl.DataFrame]:
    """Every report file: Markdown and HTML as text (build times and the data dir masked), CSV
    twins as frames (their raw floats differ in the last bits with the summation order of a
    parallel aggregation, which the rounded Markdown tables hide), the rest as bytes."""
    files = sorted(p for p in (data / "reports").rglob("*") if p.is_file())
    def content(path: Path) -> str | bytes | pl.DataFrame:
        if path.suffix in (".md", ".html"):
            return _BUILT.sub("Built <time>.", path.read_text()).replace(str(data), "<data>")
        return pl.read_csv(path, infer_schema_length=None) if path.suffix == ".csv" else path.read_bytes()

    return {str(p.relative_to(data)): content(p) for p in files}


def _same(value: str | bytes | pl.DataFrame, expected: str | bytes | pl.DataFrame) -> bool:
    if isinstance(expected, pl.DataFrame):
        try:
            assert_frame_equal(value, expected)  # floats to a relative 1e-5
        except AssertionError:
            return False
        return True
    return value == expected


def assert_like_clean(data: Path, clean: Path) -> None:
    """The same tables and the same reports (build times aside) as the clean refresh; no temp file
    left, and no per-run piece (a first build computes each run while its file is written)."""
    tables, expected = _tables(data), _tables(clean)
    assert sorted(tables) == sorted(expected)
    for name, frame in expected.items():
        assert_frame_equal(tables[name], frame, check_row_order=False), name  # ties may sort either way
    reports, expected_reports = _reports(data), _reports(clean)
    assert sorted(reports) == sorted(expected_reports)
    assert [name for name in reports if not _same(reports[name], expected_reports[name])] == []
    assert not [p for p in data.rglob("*.tmp") if "quarantine" not in p.parts]
    assert not (data / "cache" / "spill").exists()


def test_odd_format_names_stay_inside_the_data_dir_and_are_explained(clean, store):
    outside = [p for p in clean.parent.parent.rglob("*") if "ESCAPE" in p.name or LONG_FORMAT[:64] in p.name]
    assert outside == []
    assert sorted(p.stem for p in (clean / "assets" / "raw_runs").glob("*.parquet")) == ["BF16", "E5M2", "invalid_format"]
    issues = pl.read_parquet(clean / "assets" / "ingest_issues.parquet").filter(pl.col("kind") == "invalid_format")
    assert sorted(issues.get_column("reason").str.contains("ESCAPE").to_list()) == [False, True]
    assert issues.get_column("reason").str.contains(LONG_FORMAT).any() and issues.get_column("run_id").null_count() == 0
    rankings = pl.read_parquet(clean / "assets" / "format_rankings.parquet")
    assert "E5M2" in rankings.get_column("fp8_format").to_list()
    assert "E5M2" in (clean / "reports" / "format_comparison.md").read_text()


@pytest.mark.parametrize(
    ("phase", "kill_at", "full"),
    [
        ("after a partition's first table", "write:run_histories", False),
        ("mid-partition", "write:layer_metrics", False),
        ("mid-analysis", "write:format_rankings", True),
        ("mid-report, its temp file written", "rename:failure_modes.md", True),
    ],
)
def test_a_refresh_killed_at_any_phase_heals_on_a_plain_rerun(phase, kill_at, full, store, clean, tmp_path):
    data = tmp_path / "data"
    if full:  # the analysis phases: a built data dir, then a --full refresh killed in its analysis
        shutil.copytree(clean, data)
    _killed(_refresh(store, data, *(["--full"] if full else []), kill_at=kill_at))
    out = _ok(_refresh(store, data))
    assert "Marked failed 1 run(s) whose process was gone" in out, out
    assert "Everything is up to date." not in out and "Materializing analysis and reports" in out, out
    assert_like_clean(data, clean)  # the killed writer's temp folder included
    if kill_at.startswith("rename:"):
        assert "Removed 1 temp folder(s) left by a killed writer" in out, out
    if kill_at == "write:run_histories":  # converged: the next refresh has nothing to do, and says so
        assert "Everything is up to date." in _ok(_refresh(store, data))


def test_damaged_partition_and_cache_files_are_named_and_rebuilt(store, clean, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    partition = data / "assets" / "run_histories" / "E5M2.parquet"
    with open(partition, "r+b") as handle:  # 64 bytes inside the file: still decodes, with wrong values
        handle.seek(partition.stat().st_size // 2)
        handle.write(bytes(range(64)))
    deleted = data / "assets" / "layer_metrics" / "BF16.parquet"
    deleted.unlink()
    cache = data / "cache" / "runs"
    histories = sorted((cache / "runs").glob("*.history.parquet"))
    details = sorted((cache / "runs").glob("*.json"))
    histories[0].write_bytes(histories[0].read_bytes()[:100])  # truncated
    details[1].write_text('{"row": {"run_id": ')  # garbled
    analysis = data / "assets" / "format_rankings.parquet"
    analysis.write_bytes(analysis.read_bytes()[:-10])
    out = _ok(_refresh(store, data))
    for path in (partition, deleted, histories[0], details[1], analysis):
        assert str(path) in out, (path, out)
    assert "Materializing format partition E5M2" in out and "Materializing format partition BF16" in out
    assert len(list((data / "quarantine").rglob("*.parquet"))) == 2  # the missing file had nothing to move
    assert len([p for p in (cache / "quarantine").rglob("*") if p.is_file()]) == 4  # both files of both runs
    assert_like_clean(data, clean)


def test_two_refreshes_started_together_one_waits_and_both_end_like_a_clean_run(store, clean, tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", KILL_AT_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "altgrad_pipeline.cli", "refresh", "--runs", str(store), "--data-dir", str(data)]
    first, second = (subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2))
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert not any("Traceback" in out + err for out, err in outputs), outputs
    waited = [out for out, _ in outputs if "Another refresh of this data dir is running (pid" in out]
    assert len(waited) == 1 and "Everything is up to date." in waited[0], outputs
    assert_like_clean(data, clean)


@contextlib.contextmanager
def _small_disk(folder: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib` mounted at `folder` (root with CAP_SYS_ADMIN, as in the dev container
    and CI); the test is skipped, saying why, where mounting is not allowed."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one failed here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _du_kib(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def _whole(path: Path) -> bool:
    """Whether a file at its final path is complete, judged by its format's own ending."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        try:
            pl.read_parquet(path)
        except Exception:  # noqa: BLE001 - any failure to decode is a truncated file
            return False
        return True
    if path.suffix == ".png":
        return data.endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".svg":
        return data.rstrip().endswith(b"</svg>")
    if path.suffix == ".html":
        return data.rstrip().endswith(b"</html>")
    if path.suffix == ".json":
        try:
            json.loads(data)
        except ValueError:
            return False
    return True


@pytest.mark.parametrize("fraction", [0.35, 0.85], ids=["disk-full-while-ingesting", "disk-full-while-reporting"])
def test_a_full_disk_is_said_plainly_and_a_rerun_after_freeing_space_heals(fraction, store, clean, tmp_path):
    # The data dir is the mount point, as deep as the clean one: reports link runs by relative path.
    with _small_disk(tmp_path / "data", int(_du_kib(clean) * fraction)) as data:
        result = _refresh(store, data)
        assert result.returncode == 1, result.stdout + result.stderr
        last = result.stderr.strip().splitlines()[-1]
        failed_steps = [line for line in result.stdout.splitlines() if "out of disk space writing " + str(data) in line]
        assert (last.startswith("Refresh failed: the disk is full: ") and str(data) in last) or failed_steps, result.stdout + result.stderr
        files = [p for p in data.rglob("*") if p.is_file() and "dagster_home" not in p.parts]
        assert not [p for p in data.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.parent.name], "temp files left behind"
        assert [p for p in files if not _whole(p)] == []
        subprocess.run(["mount", "-o", "remount,size=1g", str(data)], check=True)  # space freed
        for database in (data / "dagster_home").rglob("*.db"):  # SQLite rolled back, never corrupt
            with contextlib.closing(sqlite3.connect(database)) as connection:
                assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",), database
        out = _ok(_refresh(store, data))
        assert "Everything is up to date." not in out
        assert_like_clean(data, clean)


def test_only_temp_folders_of_gone_writers_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)  # reaped: no such process any more (a reused pid would only keep a folder)
    figures = tmp_path / "reports" / "figures"
    abandoned = figures / f".loss.svg.{dead_pid}-0123456789ab.tmp"
    in_use = figures / f".loss.png.{os.getpid()}-0123456789ab.tmp"  # a live writer's
    kept_instance = tmp_path / "dagster_home" / f".runs.db.{dead_pid}-0123456789ab.tmp"
    lookalike = figures / ".notes.tmp"  # not a temp folder's name
    for folder in (abandoned, in_use, kept_instance, lookalike):
        folder.mkdir(parents=True)
        (folder / "half-written").write_bytes(b"\x89PNG")
    assert atomic.remove_abandoned_temps(tmp_path, locking.gone_here, skip=("dagster_home",)) == [abandoned]
    assert not abandoned.exists() and in_use.exists() and kept_instance.exists() and lookalike.exists()
