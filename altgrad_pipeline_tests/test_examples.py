"""The example run store: what it writes through the real wandb SDK, and that its truths hold.

Other tests build their fixtures from `altgrad_pipeline.examples`, so a wrong truth here would
make them assert the wrong thing. The `.wandb` files are decoded with a decoder written here,
independently of the module's own reader, so the check does not trust the code under test.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from wandb.proto import wandb_internal_pb2

from altgrad_pipeline.examples import (
    DEFAULT_FORMAT_DESIGN,
    LAYER_TYPES,
    ExampleRunSpec,
    StudyTruth,
    default_study,
    example_spec,
    failure_report_markdown,
    nanogpt_parameters,
    simulate_history,
    write_example_runs,
)

# ##### HELPERS


def decode_wandb(path: Path) -> list[wandb_internal_pb2.Record]:
    """Records of a `.wandb` file: 7-byte header, 32 KiB blocks, chunks of (crc, length, type)."""
    data = path.read_bytes()
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(data):
            break
        pending = (b"" if kind in (1, 2) else pending) + data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def stored_run(root: Path, run_dir: str) -> dict:
    """History rows by step, the config, and the exit record (None if absent) of one run."""
    (wandb_file,) = (root / run_dir).glob("run-*.wandb")
    rows: dict[int, dict] = {}
    config: dict = {}
    exit_record = None
    for record in decode_wandb(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = record.history.item
            rows[record.history.step.num] = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "exit":
            exit_record = record.exit
    return {"rows": rows, "config": config, "exit": exit_record}


def same_value(logged: float, stored: float) -> bool:
    return logged == stored or (math.isnan(logged) and math.isnan(stored))


# ##### A SMALL CUSTOM STUDY, WRITTEN ONCE

FINISHED = example_spec("E3M4", "adamw", seed=1, max_steps=120)
NEW_FORMAT = ExampleRunSpec(
    "E2M5", "manifold", seed=1, max_steps=60, loss_floor=3.3, layer_health=dict.fromkeys(LAYER_TYPES, 0.9)
)
NAN_STOPPED = example_spec("E7M0", "adamw", seed=2, max_steps=120, first_nan_step=12)
KILLED = example_spec("E5M2", "adamw", seed=3, max_steps=120, kill_after_steps=40)
SMALL_STUDY = [FINISHED, NEW_FORMAT, NAN_STOPPED, KILLED]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("example-store")
    study = write_example_runs(root, SMALL_STUDY, workers=1)
    runs = {w.run_name: stored_run(root, w.run_dir) for w in study.written}
    return root, study, runs


# ##### THE WRITTEN STORE


def test_every_run_has_its_wandb_file_and_expected_json(small_store):
    root, study, _ = small_store
    assert len(list(root.glob("wandb/offline-run-*/run-*.wandb"))) == 4
    expected = json.loads((root / "EXPECTED.json").read_text())
    assert expected["runs_written"] == 4
    assert expected["logged_values"] == study.logged_values == sum(
        sum(len(row) for row in simulate_history(spec)) for spec in SMALL_STUDY
    )
    assert [w["run_name"] for w in expected["written"]] == [s.run_name for s in SMALL_STUDY]


def test_finished_run_stores_exactly_the_simulated_values_and_exits_0(small_store):
    _, _, runs = small_store
    run = runs[FINISHED.run_name]
    assert sorted(run["rows"]) == list(range(120))
    assert run["exit"] is not None and run["exit"].exit_code == 0
    for step, logged in enumerate(simulate_history(FINISHED)):
        stored = run["rows"][step]
        assert set(stored) - set(logged) == {"_step", "_runtime", "_timestamp"}
        assert all(same_value(value, stored[key]) for key, value in logged.items()), step
    assert [step for step, row in run["rows"].items() if "val_loss" in row] == [100]


def test_config_has_altgrad_keys_and_upstream_quirks(small_store):
    _, _, runs = small_store
    config = {k: v for k, v in runs[FINISHED.run_name]["config"].items() if k != "_wandb"}
    assert len(config) == 41
    assert config["fp8_format"] == "E3M4" and config["use_fp8"] is True and config["use_manifold_aware"] is False
    assert config["checkpoint_dir"] == "checkpoints/e3m4-adamw-s1"
    assert config["n_layer"] == 2 and config["n_embd"] == 384 and config["learning_rate"] == 6e-4
    new_format = runs[NEW_FORMAT.run_name]["config"]
    assert new_format["fp8_format"] == "E2M5" and new_format["log_bit_position"] is True
    assert new_format["manifold_mantissa_bits"] == 2  # never derived from the format upstream
    assert "bit_position/mean" in runs[NEW_FORMAT.run_name]["rows"][10]


def test_nan_stopped_run_ends_after_patience_minus_one_nan_losses_and_still_exits_0(small_store):
    _, study, runs = small_store
    run = runs[NAN_STOPPED.run_name]
    last = 12 + NAN_STOPPED.nan_patience - 2
    assert sorted(run["rows"]) == list(range(last + 1))
    losses = [run["rows"][s]["loss"] for s in range(last + 1)]
    assert all(math.isfinite(x) for x in losses[:12])
    assert all(math.isnan(x) for x in losses[12:]) and len(losses[12:]) == NAN_STOPPED.nan_patience - 1
    assert all(run["rows"][s]["perplexity"] == math.inf for s in range(12, last + 1))
    assert [run["rows"][s]["param_nan_count"] > 0 for s in (11, 12, last)] == [False, True, True]
    assert run["exit"] is not None and run["exit"].exit_code == 0
    truth = study.truth.runs[NAN_STOPPED.run_name]
    assert (truth.outcome, truth.failure_mode, truth.first_nan_step, truth.last_step) == ("nan_stopped", "nan_loss", 12, last)


def test_nan_stopped_run_gets_a_runner_failure_report(small_store):
    root, study, _ = small_store
    written = next(w for w in study.written if w.run_name == NAN_STOPPED.run_name)
    (report,) = (root / "checkpoints" / NAN_STOPPED.run_name / "failure_reports").glob("E7M0_*_failure_report.md")
    assert written.failure_report == str(report.relative_to(root))
    assert len(report.name) == len("E7M0_20260122_203000_failure_report.md")
    text = report.read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [
        "# Failure Report: E7M0 Experiment",
        "## Summary",
        "## Collapse Analysis",
        "### Gradient Sparsity",
        "### Zero-Update Regions",
        "### Quantization Metrics at Collapse",
        "### Diagnostic Trend (Last 5 Measurements)",
        "## Configuration",
        "## Metrics History",
        "### Loss Trend",
        "## Recommendations",
    ]
    assert "| Collapse Step | 12 |" in text and "| Total Steps | 13 / 120 |" in text
    assert "| Final Loss | nan |" in text and "- `transformer.wte.weight`" in text
    assert text.splitlines()[-1].startswith("*Generated by FormatExperimentRunner at ")


def test_killed_run_has_no_exit_record_and_loses_its_uncommitted_last_row(small_store):
    _, study, runs = small_store
    run = runs[KILLED.run_name]
    assert run["exit"] is None
    assert sorted(run["rows"]) == list(range(39))  # steps 0..39 logged; 39 never committed
    truth = study.truth.runs[KILLED.run_name]
    assert (truth.outcome, truth.last_step, truth.exit_recorded) == ("killed", 38, False)


def test_expected_json_truths_match_the_specs(small_store):
    root, _, _ = small_store
    truth = json.loads((root / "EXPECTED.json").read_text())["truth"]
    assert truth["sweet_spot_format"] == "E3M4"  # E7M0 NaN-stops, E2M5 has no AdamW run, E5M2 killed
    assert truth["baseline_format"] is None
    assert truth["manifold_effect"] == {}
    assert {name: run["last_step"] for name, run in truth["runs"].items()} == {
        FINISHED.run_name: 119,
        NEW_FORMAT.run_name: 59,
        NAN_STOPPED.run_name: 20,
        KILLED.run_name: 38,
    }
    assert truth["runs"][FINISHED.run_name]["expected_final_loss"] == pytest.approx(FINISHED.expected_loss(119))


def test_an_existing_store_is_not_overwritten(small_store):
    root, _, _ = small_store
    with pytest.raises(FileExistsError):
        write_example_runs(root, [FINISHED], workers=1)


# ##### SPECS AND SIMULATION (NOTHING WRITTEN)


def test_simulation_is_deterministic_per_spec_and_differs_between_seeds():
    again = simulate_history(FINISHED)
    assert all(same_value(a, b) for row_a, row_b in zip(simulate_history(FINISHED), again) for a, b in zip(row_a.values(), row_b.values()))
    other_seed = simulate_history(example_spec("E3M4", "adamw", seed=2, max_steps=120))
    assert again[50]["loss"] != other_seed[50]["loss"]


def test_metrics_are_consistent_with_each_other():
    history = simulate_history(example_spec("E5M2", "manifold", seed=1))
    params = [p for p, _ in nanogpt_parameters(2)]
    assert len(params) == 28
    row = history[300]
    assert row["grad_norm"] == pytest.approx(math.sqrt(sum(row[f"grad_norm_l2/{p}"] ** 2 for p in params)))
    assert row["grad_snr/mean"] == pytest.approx(np.mean([row[f"grad_snr/{p}"] for p in params]))
    assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
    assert row["quantization/bit_stall_rate"] == row["bit_stall_rate"]
    assert row["quantization/overflow_rate"] == 0.0
    assert "grad_snr/transformer/h/0/attn/c_attn/weight_fp8" in row
    assert all(row[f"grad_norm_linf/{p}"] <= row[f"grad_norm_l2/{p}"] for p in params)
    assert [s for s, r in enumerate(history) if "val_loss" in r] == [100, 200, 300, 400]


def test_bf16_baseline_logs_no_fp8_keys_and_keeps_the_e5m2_config_quirk():
    spec = example_spec("BF16", "adamw", seed=1)
    config = spec.config()
    assert (config["use_fp8"], config["fp8_format"], config["max_steps"]) == (False, "E5M2", 2000)
    row = simulate_history(spec)[10]
    assert not any(k.startswith(("quantization/", "grad_cos_sim/", "shadow_loss", "bit_stall_rate")) for k in row)


def test_wte_dead_fraction_is_structurally_high_in_every_format():
    for fmt in DEFAULT_FORMAT_DESIGN:
        history = simulate_history(example_spec(fmt, "adamw", seed=1, max_steps=30, first_nan_step=None))
        wte = np.mean([row["dead_neuron_frac/transformer.wte.weight"] for row in history])
        others = np.mean([row["dead_neuron_frac/transformer.h.0.mlp.c_fc.weight"] for row in history])
        assert 0.88 < wte < 0.95 and others < 0.25, fmt


def test_default_study_size_and_design():
    specs = default_study()
    assert len(specs) == 28 < 40
    assert sum(sum(len(row) for row in simulate_history(s)) for s in specs) < 4_000_000
    cells: dict[tuple[str, str], list[int]] = {}
    for spec in specs:
        if spec.kill_after_steps is None:
            cells.setdefault((spec.format_name, spec.optimizer), []).append(spec.seed)
    assert all(seeds == [1, 2, 3] for seeds in cells.values())
    assert {("E5M2", "manifold"), ("E3M4", "manifold"), ("E5M2", "adamw"), ("E3M4", "adamw")} <= set(cells)
    assert {fmt for fmt, _ in cells} == {"BF16", "E5M2", "E3M4", "E1M6", "E0M7", "E7M0"}


def test_default_study_truths():
    truth = StudyTruth.of(default_study())
    assert truth.baseline_format == "BF16"
    assert truth.fp8_ranking == ["E3M4", "E5M2", "E1M6", "E0M7"]
    assert truth.best_format_by_layer_type == {"embedding": "E5M2", "attention": "E3M4", "mlp": "E1M6", "norm": "E3M4"}
    assert truth.manifold_effect["E5M2"]["final_loss"] == pytest.approx(-0.08)
    assert truth.manifold_effect["E3M4"]["final_loss"] == 0.0
    assert all(effect["final_bit_stall_rate"] < 0 for effect in truth.manifold_effect.values())
    e7m0 = truth.runs["e7m0-adamw-s1"]
    assert (e7m0.outcome, e7m0.first_nan_step, e7m0.last_step, e7m0.exit_recorded) == ("nan_stopped", 37, 45, True)
    killed = truth.runs["e1m6-adamw-s4"]
    assert (killed.outcome, killed.last_step, killed.max_steps) == ("killed", 248, 500)


def test_e0m7_bit_stall_crosses_the_threshold_once_and_stays_above():
    spec = example_spec("E0M7", "adamw", seed=1)
    stall = np.array([row["quantization/bit_stall_rate"] for row in simulate_history(spec)])
    crossing = StudyTruth.of([spec]).runs[spec.run_name].bit_stall_crossing_step
    assert 100 < crossing < 200
    assert stall[crossing - 1] <= 0.5 < stall[crossing] and (stall[crossing:] > 0.5).all()
    assert len(stall) == 500


def test_bf16_has_the_lowest_loss_at_the_common_step():
    losses = {fmt: example_spec(fmt, "adamw", seed=1).expected_loss(499) for fmt in DEFAULT_FORMAT_DESIGN}
    assert min(losses, key=losses.get) == "BF16"


def test_failure_report_needs_a_nan_collapse():
    with pytest.raises(ValueError):
        failure_report_markdown(FINISHED, simulate_history(FINISHED), written_at=None)  # type: ignore[arg-type]


def test_specs_reject_impossible_combinations():
    with pytest.raises(ValueError):
        ExampleRunSpec("E5M2", "sgd", seed=1)
    with pytest.raises(ValueError):
        ExampleRunSpec("E5M2", "adamw", seed=1, first_nan_step=5, kill_after_steps=10)
    with pytest.raises(ValueError):
        ExampleRunSpec("E5M2", "adamw", seed=1, layer_health={"mlp": 0.5})
