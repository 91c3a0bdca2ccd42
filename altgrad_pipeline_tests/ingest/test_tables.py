"""raw_runs derivations: format, optimizer and state follow the study rules, not the raw config.

altgrad's BF16 baseline keeps `fp8_format: "E5M2"` in its config, and a NaN-stopped run exits 0:
these tests pin the derivations that keep such runs from being miscounted."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from altgrad_pipeline.ingest.model import ParsedRun
from altgrad_pipeline.ingest.tables import StudyRules, config_columns, flatten_config, pivot_history, raw_runs_frame

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def _run(run_id: str, **kwargs) -> ParsedRun:
    return ParsedRun(run_id=run_id, source="test", location=f"/runs/{run_id}", **kwargs)


@pytest.mark.parametrize(
    ("config", "name", "expected"),
    [
        ({"use_fp8": False, "fp8_format": "E5M2"}, None, "BF16"),  # altgrad's baseline keeps the default format
        ({"use_fp8": True, "fp8_format": "E5M2"}, None, "E5M2"),
        ({"fp8_format": "FP8_E3M4"}, None, "E3M4"),
        ({"fp8_format": "none"}, None, "BF16"),  # classification runs say "none" for BF16
        ({"fp8_format": "e2m5"}, None, "E2M5"),  # a new format needs no code change
        ({}, "E7M0_manifold", "E7M0"),  # classification run names carry the condition
        ({}, "BF16_adamw", "BF16"),
        ({"lr": 0.1}, "my-run", "no_format"),
    ],
)
def test_fp8_format_is_derived(config, name, expected):
    frame = raw_runs_frame([_run("r", config=config, name=name)], now=NOW)
    assert frame.item(0, "fp8_format") == expected


@pytest.mark.parametrize(
    ("config", "name", "expected"),
    [
        ({"use_manifold_aware": True}, None, "ManifoldAdamW"),
        ({"use_manifold_aware": False}, "E5M2_manifold", "AdamW"),  # the config wins over the name
        ({}, "E5M2_manifold", "ManifoldAdamW"),
        ({}, None, "AdamW"),
    ],
)
def test_optimizer_is_derived(config, name, expected):
    assert raw_runs_frame([_run("r", config=config, name=name)], now=NOW).item(0, "optimizer") == expected


def test_rules_are_configurable_for_other_studies():
    rules = StudyRules(format_key="precision", enabled_key="quantize", optimizer_key="fancy_opt", optimizer_on="Fancy")
    frame = raw_runs_frame(
        [_run("a", config={"precision": "E4M3", "fancy_opt": True}), _run("b", config={"precision": "E4M3", "quantize": False})],
        rules=rules,
        now=NOW,
    )
    assert frame.select("fp8_format", "optimizer").rows() == [("E4M3", "Fancy"), ("BF16", "AdamW")]


def test_state_from_exit_record_file_age_and_cut_log():
    fresh = NOW - dt.timedelta(seconds=30)
    old = NOW - dt.timedelta(hours=5)
    runs = [
        _run("finished", ended=True, exit_code=0, last_write=old),
        _run("failed", ended=True, exit_code=1, last_write=old),
        _run("running", ended=False, last_write=fresh),
        _run("crashed", ended=False, last_write=old),
        _run("cut", ended=False, last_write=fresh, cut_short=True),
    ]
    frame = raw_runs_frame(runs, now=NOW, grace_s=3600)
    assert dict(frame.select("run_id", "state").rows()) == {
        "finished": "finished",
        "failed": "failed",
        "running": "running",
        "crashed": "crashed",
        "cut": "crashed",
    }


def test_history_extent_and_typed_config_columns():
    history = pl.DataFrame(
        {"run_id": ["r"] * 3, "step": [0, 1, 1], "key": ["loss", "loss", "grad_norm"], "value": [2.0, float("nan"), 1.0],
         "runtime": [0.0, 1.0, 1.0], "timestamp": [1.0, 2.0, 2.0]},
    )  # fmt: skip
    run = _run("r", history=history, config={"seed": 3, "max_steps": 500, "optim": {"lr": 6e-4, "betas": [0.9, 0.95]}})
    row = raw_runs_frame([run], now=NOW).row(0, named=True)
    assert (row["first_step"], row["last_step"], row["n_steps"], row["n_values"]) == (0, 1, 2, 3)
    assert (row["seed"], row["max_steps"]) == (3, 500)
    assert row["config.optim.lr"] == 6e-4
    assert row["config.optim.betas"] == "[0.9, 0.95]"


def test_mixed_config_types_across_runs_stay_readable():
    frame = config_columns([{"seed": 1}, {"seed": "2"}, {"seed": 2.5}, {}])
    assert frame.get_column("config.seed").to_list() == ["1", "2", "2.5", None]
    assert flatten_config({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}


def test_pivot_history_widens_chosen_keys_and_keeps_nan():
    history = pl.DataFrame(
        {"run_id": ["r"] * 4, "step": [0, 0, 1, 1], "key": ["loss", "lr", "loss", "lr"],
         "value": [1.0, 0.1, float("nan"), 0.1], "runtime": [0.0] * 4, "timestamp": [0.0] * 4}
    )  # fmt: skip
    wide = pivot_history(history, ["loss"])
    assert wide.columns == ["run_id", "step", "loss"]
    assert wide.get_column("loss").to_list()[0] == 1.0
    assert wide.get_column("loss").is_nan().to_list() == [False, True]


def test_runs_without_a_project_join_their_study_by_config():
    frame = raw_runs_frame(
        [_run("a", project="altgrad"), _run("b", config={"project": "altgrad"}), _run("c"), _run("d", project="p", config={"project": "q"})],
        now=NOW,
    )
    assert frame.get_column("project").to_list() == ["altgrad", "altgrad", None, "p"]
