"""A W&B server that echoes the API key back (in run names, notes, tags, config, summaries, history
values and keys, error messages and a response header) and a whole `altgrad-pipeline refresh`
against it: the key is in no file of the data dir or the Dagster instance (SQLite event log,
run storage, compute logs), in none of its forms, and not in the CLI's output either."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import polars as pl
import pytest

from altgrad_pipeline.atomic import KILL_AT_ENV
from altgrad_pipeline.examples import example_spec, simulate_history
from altgrad_pipeline_tests.wandb_server import FAKE_API_KEY, FakeRun, FakeWandbServer

STEPS = 60
BASIC = base64.b64encode(f"api:{FAKE_API_KEY}".encode()).decode()
#: Every form the key may be stored in. FAKE_API_KEY is alphanumeric: URL-encoding leaves it as is.
FORMS = {
    "plain": FAKE_API_KEY,
    "basic": BASIC,
    "basic unpadded": BASIC.rstrip("="),
    "basic url-safe": base64.urlsafe_b64encode(f"api:{FAKE_API_KEY}".encode()).decode().rstrip("="),
    "basic url-encoded": urllib.parse.quote(BASIC, safe=""),
    "key base64": base64.b64encode(FAKE_API_KEY.encode()).decode().rstrip("="),
}


def _echoing_runs() -> list[FakeRun]:
    """The example study's cells, every text field of each run carrying the key in some form."""
    runs = []
    for fmt, optimizer, seed in [("BF16", "adamw", 1), ("E5M2", "adamw", 1), ("E5M2", "manifold", 1), ("E5M2", "adamw", 2), ("BF16", "adamw", 2)]:
        spec = example_spec(fmt, optimizer, seed, max_steps=STEPS)
        history = [{"_step": step, "_runtime": step * 0.5, "_timestamp": 1.7e9 + step, **row} for step, row in enumerate(simulate_history(spec))]
        history[0] |= {"echo/text": f"Authorization: Basic {BASIC}", f"echo/{FAKE_API_KEY}": 1.0}
        history[1] |= {"echo/text": f"token={urllib.parse.quote(BASIC, safe='')}"}
        runs.append(
            FakeRun(
                id=spec.run_name.replace("_", "-"),
                name=f"{spec.run_name} {FAKE_API_KEY}",
                config=spec.config() | {"echoed_key": FAKE_API_KEY, f"by_{FAKE_API_KEY}": 1, "nested": {"auth": f"Basic {BASIC}"}},
                summary={"echo": BASIC, "loss": 1.0},
                tags=["fp8", FAKE_API_KEY],
                notes=f"api:{FAKE_API_KEY}",
                group=f"group-{BASIC.rstrip('=')}",
                history=history,
            )
        )
    return runs


def _texts(folder: Path) -> dict[str, str]:
    """Every file under `folder` as text: Parquet decoded (its rows, column names and key-value
    metadata: its pages are compressed), everything else as its raw bytes."""
    texts = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            texts[str(path)] = pl.read_parquet(path).write_json() + repr(pl.read_parquet_metadata(path))
        else:
            texts[str(path)] = path.read_bytes().decode("latin-1")
    return texts


@pytest.fixture
def echoing_server(tmp_path):
    with FakeWandbServer(runs=_echoing_runs()) as server:
        server.echo_auth_header = True
        # Error texts that repeat the credentials: one run's read fails on all 6 tries (an
        # `ingest_issues` row), a history page fails twice and then answers (the client retries).
        server.fail_next(500, times=6, operation="Run", retry_after="0", echo_auth=True)
        server.fail_next(500, times=2, operation="HistoryPage", retry_after="0", echo_auth=True)
        yield server


def test_a_key_echoing_server_leaves_the_key_nowhere(echoing_server, tmp_path):
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    env = {k: v for k, v in os.environ.items() if k not in (KILL_AT_ENV,)}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]),
        "DAGSTER_HOME": str(home),
        "WANDB_BASE_URL": echoing_server.url,
        "WANDB_API_KEY": FAKE_API_KEY,
        "WANDB_MODE": "online",
    }
    command = [sys.executable, "-m", "altgrad_pipeline.cli", "refresh", "--runs", "wandb://altgrad/fp8", "--data-dir", str(data)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    # The key was really sent and really echoed: the test is not vacuous.
    assert any(r.headers.get("authorization") == f"Basic {BASIC}" for r in echoing_server.requests)
    issues = pl.read_parquet(data / "assets" / "ingest_issues.parquet").filter(pl.col("kind") == "api_error")
    assert issues.height == 1 and "planned failure 500 for Basic [redacted]" in issues.item(0, "reason")
    raw = pl.concat([pl.read_parquet(p) for p in (data / "assets" / "raw_runs").glob("*.parquet")], how="diagonal_relaxed")
    read = raw.filter(pl.col("fp8_format") != "no_format")  # the run whose reads all failed has no config
    assert sorted(read.get_column("fp8_format").unique()) == ["BF16", "E5M2"] and read.height == 4 and raw.height == 5
    assert read.get_column("name").str.contains("[redacted]", literal=True).all()
    histories = pl.concat([pl.read_parquet(p) for p in (data / "assets" / "run_histories").glob("*.parquet")])
    assert histories.filter(pl.col("key") == "echo/text").get_column("text").str.contains("[redacted]", literal=True).all()
    assert (data / "reports" / "format_comparison.md").is_file()

    texts = _texts(data) | _texts(home) | {"stdout": result.stdout, "stderr": result.stderr}
    assert any(name.endswith(".db") for name in texts) and any("compute_logs" in name for name in texts), sorted(texts)
    leaks = {(form, name) for name, text in texts.items() for form, secret in FORMS.items() if secret in text}
    assert leaks == set()
