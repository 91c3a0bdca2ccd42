"""JSONL run logs: record shapes, config discovery, bad lines, and reading a log that grows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from altgrad_pipeline.ingest.jsonl import JsonlLog, JsonlSource
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, ParsedRun

NAN, INF = float("nan"), float("inf")


def write_lines(path: Path, records: list[Any], *, end: str = "\n") -> Path:
    """Lines as Python's json writes them (NaN and Infinity as bare tokens); strings verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + end)
    return path


@pytest.fixture(autouse=True, params=["fast", "reference"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test reads with the fast path and with the reference reader it must equal."""
    monkeypatch.setattr(JsonlLog, "fast", request.param == "fast")
    return request.param


def spy_on_fed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the byte strings the log parses, in order."""
    sizes: list[int] = []
    real_feed = JsonlLog.feed

    def spying_feed(self: JsonlLog, data: bytes) -> int:
        sizes.append(len(data))
        return real_feed(self, data)

    monkeypatch.setattr(JsonlLog, "feed", spying_feed)
    return sizes


def read_one(root: Path) -> ParsedRun:
    source = JsonlSource(root)
    [locator] = source.discover()
    return source.read(locator)


def history_frame(run_id: str, rows: list[tuple[int, str, float, float | None, float | None]]) -> pl.DataFrame:
    steps, keys, values, runtimes, timestamps = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "run_id": [run_id] * len(rows),
            "step": steps,
            "key": keys,
            "value": values,
            "text": [None] * len(rows),
            "runtime": runtimes,
            "timestamp": timestamps,
        },
        schema=HISTORY_SCHEMA,
    )


def values_of(run: ParsedRun, key: str) -> list[tuple[int, float]]:
    return list(run.history.filter(pl.col("key") == key).select("step", "value").iter_rows())


def kinds(run: ParsedRun) -> list[str]:
    return sorted(issue.kind for issue in run.issues)


def test_flat_records_keep_nan_and_infinity_value_by_value(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "run.jsonl",
        [
            {"step": 0, "loss": 2.5, "train/acc": 0.1, "timestamp": 1700000000.5, "_runtime": 1.0},
            {"step": 1, "loss": NAN, "train/acc": INF, "timestamp": 1700000001.5, "_runtime": 2.0},
            {"step": 2, "loss": -INF, "lr": 3, "timestamp": 1700000002.5, "_runtime": 3.0},
        ],
    )
    run = read_one(tmp_path)
    expected = history_frame(
        run.run_id,
        [
            (0, "loss", 2.5, 1.0, 1700000000.5),
            (0, "train/acc", 0.1, 1.0, 1700000000.5),
            (1, "loss", NAN, 2.0, 1700000001.5),
            (1, "train/acc", INF, 2.0, 1700000001.5),
            (2, "loss", -INF, 3.0, 1700000002.5),
            (2, "lr", 3.0, 3.0, 1700000002.5),
        ],
    )
    assert_frame_equal(run.history, expected, check_exact=True)
    assert run.issues == []
    assert run.value_types == {}
    assert run.name == "run"
    assert run.started_at is not None and run.started_at.timestamp() == 1700000000.5
    assert run.ended is False and run.exit_code is None


@pytest.mark.parametrize("step_field", ["_step", "global_step", "iter"])
def test_other_step_field_names(tmp_path: Path, step_field: str) -> None:
    write_lines(
        tmp_path / "run.jsonl",
        [{step_field: 10, "loss": 1.0, "_timestamp": 5.0}, {step_field: 20, "loss": 0.5, "time": 6.0}],
    )
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(10, 1.0), (20, 0.5)]
    assert run.history.get_column("timestamp").to_list() == [5.0, 6.0]
    assert run.issues == []


def test_strings_are_kept_as_text_at_their_step_and_key(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "run.jsonl",
        [
            {"step": step, "loss": 1.0 / (step + 1), "input_seq": f"ab\n\"{step}\" é", "grad_norm": "7998.707", "empty": ""}
            for step in range(5)
        ]
        + [{"step": 5, "grad_norm": 12.5}, {"step": 5, "grad_norm": "rewritten"}],
    )
    run = read_one(tmp_path)
    texts = run.history.filter(pl.col("text").is_not_null())
    assert texts["value"].null_count() == texts.height
    assert sorted(texts.select("step", "key", "text").iter_rows()) == sorted(
        [(step, "input_seq", f'ab\n"{step}" é') for step in range(5)]
        + [(step, "grad_norm", "7998.707") for step in range(5)]  # as logged, not a number
        + [(step, "empty", "") for step in range(5)]
        + [(5, "grad_norm", "rewritten")]  # the last write of (5, grad_norm) wins, number or not
    )
    assert values_of(run, "loss") == [(step, 1.0 / (step + 1)) for step in range(5)]
    assert run.value_types == {} and kinds(run) == ["duplicate_step"]


def test_bools_lists_and_media_are_value_types_not_values(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "run.jsonl",
        [
            {
                "step": 0,
                "loss": "1.5",
                "done": True,
                "sizes": [1, 2],
                "hist": {"_type": "histogram", "values": [1], "bins": [0, 1]},
                "val": {"note": "ok", "acc": 0.5},
                "skipped": None,
                "huge": 10**400,
            }
        ],
    )
    run = read_one(tmp_path)
    assert values_of(run, "val/acc") == [(0, 0.5)]
    assert sorted(run.history.select("key", "text").iter_rows()) == [("loss", "1.5"), ("val/acc", None), ("val/note", "ok")]
    assert run.value_types == {"done": "bool", "sizes": "list", "hist": "histogram", "huge": "integer_beyond_float"}


def test_dr_exp_nested_records_with_job_file(tmp_path: Path) -> None:
    log = write_lines(
        tmp_path / "exp" / "sweep" / "lr0.1_abc123" / "metrics.jsonl",
        [
            {"step": 0, "metrics": {"train_loss": 2.0, "epoch": 0, "timestamp": 100.0, "val": {"acc": 0.25}}},
            {"step": 1, "metrics": {"train_loss": 1.5, "epoch": 1, "timestamp": 101.0, "val": {"acc": 0.5}}},
        ],
    )
    (tmp_path / "exp" / "jobs").mkdir()
    job = {"config": {"optim": {"lr": 0.1}, "seed": 3}, "status": "completed", "tags": ["lr_sweep"]}
    (tmp_path / "exp" / "jobs" / "abc123.json").write_text(json.dumps(job))
    run = read_one(tmp_path)
    assert values_of(run, "train_loss") == [(0, 2.0), (1, 1.5)]
    assert values_of(run, "val/acc") == [(0, 0.25), (1, 0.5)]
    assert values_of(run, "epoch") == [(0, 0.0), (1, 1.0)]
    assert "timestamp" not in run.history.get_column("key").to_list()
    assert run.history.filter(pl.col("step") == 1).get_column("timestamp").unique().to_list() == [101.0]
    assert run.config == {"optim": {"lr": 0.1}, "seed": 3}
    assert run.tags == ["lr_sweep"]
    assert (run.ended, run.exit_code) == (True, 0)
    assert run.location == str(log)


def test_failed_and_running_dr_exp_jobs(tmp_path: Path) -> None:
    write_lines(tmp_path / "a_run1" / "metrics.jsonl", [{"step": 0, "metrics": {"loss": 1.0}}])
    write_lines(tmp_path / "a_run2" / "metrics.jsonl", [{"step": 0, "metrics": {"loss": 1.0}}])
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "run1.json").write_text(json.dumps({"config": {}, "status": "failed", "tags": []}))
    (tmp_path / "jobs" / "run2.json").write_text(json.dumps({"config": {}, "status": "running", "tags": []}))
    source = JsonlSource(tmp_path)
    first, second = (source.read(loc) for loc in source.discover())
    assert (first.ended, first.exit_code) == (True, 1)
    assert (second.ended, second.exit_code) == (False, None)


def test_dr_gen_hydra_log_infers_epochs_per_split_and_sees_the_end(tmp_path: Path) -> None:
    config = {"epochs": 2, "optim": {"lr": 0.1, "weight_decay": 1e-4}, "seed": 0}
    write_lines(
        tmp_path / "bs500" / "lr0.1" / "json_out.jsonl",
        [
            {"type": "dict_config", "value": config},
            {"type": "str", "value": ">> Start Epoch: 0"},
            {
                "title": "agg_train",
                "data_name": "train",
                "agg_stats": {"loss": 2.75, "acc1": 16.6, "batch_size": [500]},
            },
            {"title": "agg_val", "data_name": "val", "agg_stats": {"loss": 2.5, "acc1": 20.0}},
            {"type": "str", "value": ""},
            {"title": "agg_train", "data_name": "train", "agg_stats": {"loss": 2.25, "acc1": 25.0}},
            {"title": "agg_val", "data_name": "val", "agg_stats": {"loss": 2.0, "acc1": 30.0}},
            {"title": "agg_eval", "data_name": "eval", "agg_stats": {"loss": 2.1, "acc1": 29.0}},
            {"type": "str", "value": "Training time 0:01:02"},
            {"type": "str", "value": ">> done"},
        ],
    )
    run = read_one(tmp_path)
    assert values_of(run, "train/loss") == [(0, 2.75), (1, 2.25)]
    assert values_of(run, "train/acc1") == [(0, 16.6), (1, 25.0)]
    assert values_of(run, "val/loss") == [(0, 2.5), (1, 2.0)]
    assert values_of(run, "eval/acc1") == [(0, 29.0)]
    assert run.value_types == {"train/batch_size": "list"}
    assert run.config == config
    assert (run.ended, run.exit_code) == (True, 0)
    assert run.issues == []


def test_dr_gen_log_without_training_time_line_is_not_ended(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "json_out.jsonl",
        [
            {"type": "str", "value": "Training time 1s"},
            {"data_name": "train", "agg_stats": {"loss": 1.0}},
            {"type": "str", "value": "x"},
            {"type": "str", "value": "y"},
        ],
    )
    assert read_one(tmp_path).ended is False


def test_without_step_field_the_metric_line_index_is_the_step_and_said_once(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "run.jsonl", [{"type": "str", "value": "start"}, {"loss": 3.0}, {"loss": 2.0}, {"loss": 1.0}]
    )
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert [(i.kind, i.position) for i in run.issues] == [("no_step_field", "line 2")]
    assert run.issues[0].run_id == run.run_id


def test_malformed_lines_become_issues_and_the_rest_is_kept(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "run.jsonl",
        [
            {"step": 0, "loss": 1.0},
            '{"step": 1, "loss": ',
            "[1, 2]",
            "",
            {"step": "two", "loss": 9.0},
            {"step": 3, "loss": 0.5},
        ],
    )
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(0, 1.0), (3, 0.5)]
    assert [(i.kind, i.position) for i in run.issues] == [
        ("malformed_line", "line 2"),
        ("malformed_line", "line 3"),
        ("bad_step", "line 5"),
    ]


def test_duplicate_steps_keep_the_last_write_and_backward_steps_are_sorted(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "run.jsonl",
        [
            {"step": 0, "loss": 4.0},
            {"step": 10, "loss": 3.0},
            {"step": 5, "loss": 2.0},
            {"step": 10, "loss": 1.0},
            {"step": 10, "loss": 1.0},
        ],
    )
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(0, 4.0), (5, 2.0), (10, 1.0)]
    issues = {i.kind: i for i in run.issues}
    assert set(issues) == {"duplicate_step", "step_backwards"}
    assert issues["duplicate_step"].reason.startswith("1 (step, key) pairs")
    assert issues["duplicate_step"].lost == "2 earlier values"
    assert issues["step_backwards"].position == "line 3"


def test_partial_last_line_is_left_for_later(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"step": 0, "loss": 1.0}) + "\n" + '{"step": 1, "lo')
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(0, 1.0)]
    assert [(i.kind, i.position) for i in run.issues] == [("partial_last_line", "line 2")]


def test_config_precedence_in_log_then_job_then_siblings_then_hydra(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "run"
    log = write_lines(run_dir / "log.jsonl", [{"step": 0, "loss": 1.0}])
    (tmp_path / "outputs" / ".hydra").mkdir(parents=True)
    (tmp_path / "outputs" / ".hydra" / "config.yaml").write_text("from: parent_hydra\n")
    assert read_one(tmp_path).config == {"from": "parent_hydra"}
    (run_dir / "hparams.yaml").write_text("from: hparams\nrun_name: nice-run\n")
    assert read_one(tmp_path).config == {"from": "hparams", "run_name": "nice-run"}
    assert read_one(tmp_path).name == "nice-run"
    (run_dir / "config.yaml").write_text("from: config_yaml\n")
    assert read_one(tmp_path).config == {"from": "config_yaml"}
    (run_dir / "config.json").write_text('{"from": "config_json"}')
    assert read_one(tmp_path).config == {"from": "config_json"}
    write_lines(log, [{"type": "dict_config", "value": {"from": "log"}}, {"step": 0, "loss": 1.0}])
    assert read_one(tmp_path).config == {"from": "log"}


def test_unreadable_config_is_an_issue(tmp_path: Path) -> None:
    write_lines(tmp_path / "run.jsonl", [{"step": 0, "loss": 1.0}])
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "hparams.yaml").write_text("args: !!python/object:argparse.Namespace {lr: 0.1}\n")
    run = read_one(tmp_path)
    assert run.config == {"args": {"lr": 0.1}}
    assert kinds(run) == ["malformed_config", "unknown_yaml_tag"]


def test_discover_skips_wandb_files_and_fingerprints_config_files(tmp_path: Path) -> None:
    write_lines(tmp_path / "wandb" / "run-20240101_120000-abc" / "files" / "wandb-history.jsonl", [{"_step": 0}])
    write_lines(tmp_path / "old" / "run-20190101_120000-xyz" / "output.jsonl", [{"_step": 0}])
    write_lines(tmp_path / "copy" / "wandb-events.jsonl", [{"_step": 0}])
    log = write_lines(tmp_path / "mine" / "train.jsonl", [{"step": 0, "loss": 1.0}])
    source = JsonlSource(tmp_path)
    [locator] = source.discover()
    assert locator.location == str(log)
    assert locator.run_id_hint == source.read(locator).run_id
    assert locator.run_id_hint.startswith("train-")
    (tmp_path / "mine" / "config.json").write_text("{}")
    assert source.discover()[0].fingerprint != locator.fingerprint
    assert source.discover()[0].run_id_hint == locator.run_id_hint


def test_discover_of_a_missing_root_raises_so_cached_runs_are_kept(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        JsonlSource(tmp_path / "absent").discover()


def test_git_lfs_pointer_is_reported(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n")
    run = read_one(tmp_path)
    assert run.history.is_empty()
    assert kinds(run) == ["lfs_pointer"]


def test_a_growing_log_parses_only_new_bytes_and_matches_a_full_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed_sizes = spy_on_fed_bytes(monkeypatch)
    path = tmp_path / "run.jsonl"
    first = "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(3))
    path.write_text(first + '{"step": 3, "lo')
    log = JsonlLog(path)
    assert log.update() == 3
    assert log.position.offset == len(first)
    size_before = path.stat().st_size
    with path.open("a") as handle:
        handle.write('ss": NaN}\n' + json.dumps({"step": 4, "loss": INF}) + "\n")
    assert log.update() == 2
    assert parsed_sizes == [size_before, path.stat().st_size - len(first)]
    assert log.update() == 0
    incremental = log.parsed_run("r")
    full = JsonlLog(path)
    full.update()
    assert_frame_equal(incremental.history, full.parsed_run("r").history, check_exact=True)
    assert json.dumps(values_of(incremental, "loss")[3:]) == json.dumps([(3, NAN), (4, INF)])
    assert incremental.issues == []


def test_a_replaced_log_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "run.jsonl", [{"step": s, "loss": 1.0} for s in range(5)])
    log = JsonlLog(path)
    log.update()
    write_lines(path, [{"step": s, "acc": 0.5} for s in range(7)])
    log.update()
    run = log.parsed_run("r")
    assert run.history.get_column("key").unique().to_list() == ["acc"]
    assert run.history.height == 7


def test_source_reuses_its_log_between_reads(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "run.jsonl", [{"step": 0, "loss": 1.0}])
    source = JsonlSource(tmp_path)
    source.read(source.discover()[0])
    with path.open("a") as handle:
        handle.write(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    run = source.read(source.discover()[0])
    assert values_of(run, "loss") == [(0, 1.0), (1, 0.5)]


def test_source_caches_at_most_its_cap_of_logs(tmp_path: Path) -> None:
    for index in range(40):
        write_lines(tmp_path / f"run{index:02d}.jsonl", [{"step": 0, "loss": float(index)}])
    source = JsonlSource(tmp_path, max_cached_logs=8)
    for locator in source.discover():
        assert values_of(source.read(locator), "loss") == [(0, float(Path(locator.location).stem[len("run") :]))]
        assert len(source._logs) <= 8
    assert len(source._logs) == 8
    assert list(source._logs) == [tmp_path / f"run{index:02d}.jsonl" for index in range(32, 40)]


def test_quiet_and_ended_logs_are_dropped_while_a_growing_log_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    growing = write_lines(tmp_path / "growing.jsonl", [{"step": 0, "loss": 1.0}])
    quiet = write_lines(tmp_path / "quiet.jsonl", [{"step": 0, "loss": 1.0}])
    write_lines(  # ended
        tmp_path / "ended.jsonl", [{"data_name": "train", "agg_stats": {"loss": 1.0}}, {"type": "str", "value": "Training time 1s"}]
    )
    an_hour_ago = quiet.stat().st_mtime - 3600
    os.utime(quiet, (an_hour_ago, an_hour_ago))
    source = JsonlSource(tmp_path, grace_period_s=600)
    for locator in source.discover():
        source.read(locator)
    assert list(source._logs) == [growing]
    parsed_sizes = spy_on_fed_bytes(monkeypatch)
    appended = json.dumps({"step": 1, "loss": 0.5}) + "\n"
    with growing.open("a") as handle:
        handle.write(appended)
    [locator] = [loc for loc in source.discover() if loc.location == str(growing)]
    assert values_of(source.read(locator), "loss") == [(0, 1.0), (1, 0.5)]
    assert parsed_sizes == [len(appended)]
    [locator] = [loc for loc in source.discover() if loc.location == str(quiet)]
    assert values_of(source.read(locator), "loss") == [(0, 1.0)]
    assert parsed_sizes[1:] == [quiet.stat().st_size]
    assert list(source._logs) == [growing]


@pytest.mark.corpora
def test_mamba_integer_snapshots_read_incrementally_equal_a_full_read(corpora_dir: Path, tmp_path: Path) -> None:
    snapshots = [
        (corpora_dir / "Jayluci4__mamba-integer" / f"snapshot_{commit}" / "scripts" / "metrics.jsonl").read_bytes()
        for commit in ("f2fd811", "93eb382", "b7e725d")
    ]
    assert [s.count(b"\n") for s in snapshots] == [82, 104, 227]
    assert snapshots[1].startswith(snapshots[0]) and snapshots[2].startswith(snapshots[1])
    live = tmp_path / "metrics.jsonl"
    log = JsonlLog(live)
    new_lines = []
    for snapshot in snapshots:
        live.write_bytes(snapshot)
        new_lines.append(log.update())
    assert new_lines == [82, 22, 123]
    incremental = log.parsed_run("mamba")
    full = JsonlLog(corpora_dir / "Jayluci4__mamba-integer" / "snapshot_b7e725d" / "scripts" / "metrics.jsonl")
    full.update()
    assert_frame_equal(incremental.history, full.parsed_run("mamba").history, check_exact=True)
    history = incremental.history
    assert history.height == 227 * 9
    assert (history.get_column("step").min(), history.get_column("step").max()) == (0, 2260)
    assert history.filter(pl.col("key") == "grad/norm_gamma").get_column("value").max() > 1e10
    assert incremental.issues == []


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
record_values = st.dictionaries(st.sampled_from(["loss", "acc", "grad/norm", "lr"]), finite_or_not, min_size=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(record_values, min_size=1, max_size=20))
def test_any_floats_round_trip_exactly(tmp_path: Path, records: list[dict[str, float]]) -> None:
    path = write_lines(tmp_path / "prop.jsonl", [{"step": i, **r} for i, r in enumerate(records)])
    log = JsonlLog(path)
    log.update()
    history = log.parsed_run("p").history
    expected = [(i, key, value) for i, r in enumerate(records) for key, value in sorted(r.items())]
    actual = list(history.select("step", "key", "value").iter_rows())
    assert json.dumps(actual) == json.dumps(expected)


garbage = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=30).filter(
        lambda t: not t.strip().startswith("{")
    ),
    st.sampled_from(['{"step": 1, "loss"', "NaN", "[]", "null", '{"a": }', "\x00\x01", "}{"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(finite_or_not, min_size=1, max_size=15),
    junk=st.lists(st.tuples(st.integers(0, 15), garbage), max_size=10),
)
def test_garbage_lines_never_lose_a_good_line(tmp_path: Path, values: list[float], junk: list[tuple[int, str]]) -> None:
    lines: list[Any] = [{"step": i, "loss": v} for i, v in enumerate(values)]
    for position, text in sorted(junk, reverse=True):
        lines.insert(min(position, len(lines)), text)
    path = write_lines(tmp_path / "junk.jsonl", lines)
    log = JsonlLog(path)
    log.update()
    history = log.parsed_run("g").history
    assert json.dumps(list(history.select("step", "value").iter_rows())) == json.dumps(list(enumerate(values)))
    assert all(issue.kind == "malformed_line" for issue in log.issues)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(record_values, min_size=1, max_size=12),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=6),
)
def test_feeding_any_byte_split_equals_one_full_read(records: list[dict[str, float]], cuts: list[float]) -> None:
    data = "".join(json.dumps({"step": i, **r}) + "\n" for i, r in enumerate(records)).encode()
    log = JsonlLog(Path("never-read.jsonl"))
    for end in [*sorted(int(cut * len(data)) for cut in cuts), len(data)]:
        log.feed(data[log.position.offset : end])
    whole = JsonlLog(Path("never-read.jsonl"))
    whole.feed(data)
    assert log.position.offset == len(data)
    assert_frame_equal(log.parsed_run("s").history, whole.parsed_run("s").history, check_exact=True)


def test_a_step_beyond_int64_loses_its_line_only(tmp_path):
    lines = [json.dumps({"step": step, "loss": 1.0 / (step + 1)}) for step in range(5)]
    lines.insert(2, '{"step": 9223372036854775808, "loss": 0.1}')
    (tmp_path / "run.jsonl").write_text("\n".join(lines) + "\n")
    source = JsonlSource(tmp_path)
    [locator] = source.discover()
    run = source.read(locator)
    assert run.history.get_column("step").to_list() == [0, 1, 2, 3, 4]
    assert [(i.kind, i.position) for i in run.issues] == [("bad_step", "line 3")]
