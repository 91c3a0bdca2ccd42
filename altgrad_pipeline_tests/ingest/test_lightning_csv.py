"""Lightning CSVLogger runs: sparse rows merged per step, bad rows and cells, reused version folders."""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from altgrad_pipeline.ingest.lightning_csv import LightningCsvSource
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, ParsedRun

#: What CSVLogger writes: train rows every few steps, then a val row and an epoch-end row that
#: share the last step of the epoch; every row has epoch and step, other cells empty.
CSVLOGGER_METRICS = """\
epoch,step,train_loss_step,val_loss,val_acc,train_loss_epoch
0,4,2.5,,,
0,9,2.25,,,
0,9,,2.0,0.5,
0,9,,,,2.375
1,14,nan,,,
1,19,inf,,,
1,19,,1.5,0.75,
1,19,,,,-inf
"""


def make_run(
    folder: Path, metrics: str | None = CSVLOGGER_METRICS, hparams: str | None = "lr: 0.001\nlayers: 4\n"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (folder / "metrics.csv").write_text(metrics)
    if hparams is not None:
        (folder / "hparams.yaml").write_text(hparams)
    return folder


def read_all(root: Path) -> list[ParsedRun]:
    source = LightningCsvSource(root)
    return [source.read(locator) for locator in source.discover()]


def read_one(root: Path) -> ParsedRun:
    [run] = read_all(root)
    return run


def values_of(run: ParsedRun, key: str) -> list[tuple[int, float]]:
    return list(run.history.filter(pl.col("key") == key).select("step", "value").iter_rows())


def test_csvlogger_rows_sharing_a_step_merge_value_by_value(tmp_path: Path) -> None:
    make_run(tmp_path / "lightning_logs" / "version_0")
    run = read_one(tmp_path)
    nan, inf = float("nan"), float("inf")
    rows = [
        (4, "epoch", 0.0),
        (4, "train_loss_step", 2.5),
        (9, "epoch", 0.0),
        (9, "train_loss_epoch", 2.375),
        (9, "train_loss_step", 2.25),
        (9, "val_acc", 0.5),
        (9, "val_loss", 2.0),
        (14, "epoch", 1.0),
        (14, "train_loss_step", nan),
        (19, "epoch", 1.0),
        (19, "train_loss_epoch", -inf),
        (19, "train_loss_step", inf),
        (19, "val_acc", 0.75),
        (19, "val_loss", 1.5),
    ]
    expected = pl.DataFrame(
        {
            "run_id": [run.run_id] * len(rows),
            "step": [r[0] for r in rows],
            "key": [r[1] for r in rows],
            "value": [r[2] for r in rows],
            "text": [None] * len(rows),
            "runtime": [None] * len(rows),
            "timestamp": [None] * len(rows),
        },
        schema=HISTORY_SCHEMA,
    )
    assert_frame_equal(run.history, expected, check_exact=True)
    assert run.issues == []
    assert run.value_types == {}
    assert run.config == {"lr": 0.001, "layers": 4}
    assert run.name == "lightning_logs/version_0"
    assert run.source == "lightning-csv"
    assert run.ended is False
    assert run.last_write is not None


def test_ragged_rows_are_reported_per_line_and_good_rows_kept(tmp_path: Path) -> None:
    make_run(tmp_path / "version_0", "epoch,step,loss\n0,1,0.5\n0,2,0.4,extra\n0,3\n0,4,0.3\n")
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(1, 0.5), (4, 0.3)]
    assert [(i.kind, i.position, i.lost) for i in run.issues] == [
        ("ragged_row", "line 3", "line 3 (4 non-empty cells)"),
        ("ragged_row", "line 4", "line 4 (2 non-empty cells)"),
    ]
    assert all(i.run_id == run.run_id for i in run.issues)


def test_string_cells_are_kept_as_text_and_mixed_columns_are_counted(tmp_path: Path) -> None:
    make_run(
        tmp_path / "version_0", "epoch,step,loss,phase\n0,1,0.5,warmup\n0,2,oops,train\n0,3,0.25,train\n0,4,n/a,\n"
    )
    run = read_one(tmp_path)
    assert run.history.filter(pl.col("key") == "loss").select("step", "value", "text").rows() == [
        (1, 0.5, None), (2, None, "oops"), (3, 0.25, None), (4, None, "n/a")
    ]  # fmt: skip
    assert run.history.filter(pl.col("key") == "phase").select("step", "text").rows() == [(1, "warmup"), (2, "train"), (3, "train")]
    assert run.value_types == {}
    [issue] = run.issues
    assert issue.kind == "non_numeric_value"
    assert issue.reason.startswith("2 of 4 cells in column 'loss' are not numbers (e.g. 'oops')")
    assert issue.lost == "nothing (kept in `text`)"


def test_same_key_twice_at_one_step_keeps_the_last_and_says_so(tmp_path: Path) -> None:
    make_run(tmp_path / "version_0", "epoch,step,loss\n0,5,1.0\n0,5,0.5\n0,6,0.25\n")
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(5, 0.5), (6, 0.25)]
    [issue] = run.issues
    assert (issue.kind, issue.lost) == ("duplicate_step", "1 earlier values")


def test_rows_without_a_usable_step_are_dropped_with_an_issue(tmp_path: Path) -> None:
    make_run(tmp_path / "version_0", "epoch,step,loss\n0,,1.0\n0,2.0,0.5\n0,x,0.1\n")
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(2, 0.5)]
    [issue] = run.issues
    assert (issue.kind, issue.position, issue.lost) == ("bad_step", "line 2", "2 rows")


def test_partial_last_line_waits_and_blank_or_repeated_columns_are_skipped(tmp_path: Path) -> None:
    make_run(tmp_path / "version_0", "epoch,step,loss,,loss\n0,1,0.5,7,9\n0,2,0.4,,9\n0,3,0.")
    run = read_one(tmp_path)
    assert values_of(run, "loss") == [(1, 0.5), (2, 0.4)]
    assert sorted((i.kind, i.position) for i in run.issues) == [
        ("partial_last_line", "line 4"),
        ("unusable_column", "line 1"),
    ]


def test_hparams_may_be_empty_tagged_or_broken(tmp_path: Path) -> None:
    make_run(tmp_path / "version_0", hparams="{}\n")
    tagged = "args: !!python/object:argparse.Namespace\n  lr: 0.1\nsizes: !!python/tuple [1, 2]\n"
    make_run(tmp_path / "version_1", hparams=tagged)
    make_run(tmp_path / "version_2", hparams="lr: [0.1\n")
    empty, with_tags, broken = read_all(tmp_path)
    assert (empty.config, empty.issues) == ({}, [])
    assert with_tags.config == {"args": {"lr": 0.1}, "sizes": [1, 2]}
    assert [i.kind for i in with_tags.issues] == ["unknown_yaml_tag"]
    assert (broken.config, [i.kind for i in broken.issues]) == ({}, ["malformed_config"])
    assert broken.history.height == empty.history.height == 14


def test_discover_finds_metrics_folders_and_hparams_only_versions_but_not_tensorboard(tmp_path: Path) -> None:
    make_run(tmp_path / "logs" / "version_0")
    make_run(tmp_path / "logs" / "version_1", metrics=None)
    make_run(tmp_path / "tb" / "version_0", metrics=None)
    (tmp_path / "tb" / "version_0" / "events.out.tfevents.1.host").write_bytes(b"")
    make_run(tmp_path / "other", metrics=None)
    source = LightningCsvSource(tmp_path)
    locators = source.discover()
    assert [Path(loc.location).relative_to(tmp_path).as_posix() for loc in locators] == [
        "logs/version_0",
        "logs/version_1",
    ]
    assert locators[1].fingerprint.startswith("metrics.csv:absent;hparams.yaml:")
    no_metrics = source.read(locators[1])
    assert no_metrics.history.is_empty() and no_metrics.config == {"lr": 0.001, "layers": 4}


def test_a_reused_version_folder_gets_a_new_run_id_but_a_growing_run_keeps_its_id(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "lightning_logs" / "version_3", metrics="epoch,step,loss\n0,1,0.5\n")
    first = read_one(tmp_path)
    (folder / "metrics.csv").write_text("epoch,step,loss,val_loss\n0,1,0.5,\n0,2,0.4,\n0,2,,0.45\n")
    assert read_one(tmp_path).run_id == first.run_id
    make_run(folder, metrics="epoch,step,loss\n0,1,0.7\n")
    assert read_one(tmp_path).run_id != first.run_id
    make_run(folder, metrics="epoch,step,loss\n0,1,0.5\n", hparams="lr: 0.5\n")
    assert read_one(tmp_path).run_id != first.run_id
    assert first.run_id.startswith("lightning_logs-version_3-")


def numeric_cells_by_csv_module(metrics: Path) -> int:
    """Independent count: distinct (step, column) pairs whose cell parses as a float."""
    with metrics.open(newline="") as handle:
        reader = csv.DictReader(handle)
        pairs = set()
        for row in reader:
            for column, cell in row.items():
                if column == "step" or not cell:
                    continue
                try:
                    float(cell)
                except ValueError:
                    continue
                pairs.add((int(row["step"]), column))
    return len(pairs)


@pytest.mark.corpora
def test_slm_training_corpus_every_run_read(corpora_dir: Path) -> None:
    root = corpora_dir / "0Xero7__slm_training"
    runs = read_all(root)
    assert len(runs) == 53
    assert len({run.run_id for run in runs}) == 53
    for run in runs:
        metrics = Path(run.location) / "metrics.csv"
        expected = numeric_cells_by_csv_module(metrics) if metrics.exists() else 0
        assert run.history.height == expected, run.location
        assert run.issues == [], run.location
        assert run.history.schema == pl.Schema(HISTORY_SCHEMA)
    by_location = {Path(run.location).relative_to(root).as_posix(): run for run in runs}
    assert sum(1 for run in runs if run.history.is_empty()) == 5
    old_run = by_location["snapshot_d4575f9/lightning_logs/version_0"]
    assert old_run.history.height == 502
    assert len(values_of(old_run, "val_loss")) == 20
    assert values_of(old_run, "train_loss_step")[0] == (49, 8.620475769042969)


@pytest.mark.corpora
def test_slm_training_reused_version_folders_get_distinct_ids(corpora_dir: Path) -> None:
    """Read each snapshot as its own root, so the path below the root is the same for both."""
    root = corpora_dir / "0Xero7__slm_training"
    old = {Path(r.location).name: r for r in read_all(root / "snapshot_d4575f9")}
    new = {Path(r.location).name: r for r in read_all(root / "snapshot_HEAD_cb220b2")}
    assert len(old) == 40 and len(new) == 13
    for version in new:
        assert old[version].run_id != new[version].run_id, version
    assert old["version_3"].config["d_model"] == 492 and new["version_3"].config == {}
    cut_short = old["version_3"].history
    assert (cut_short.height, cut_short.get_column("step").max()) == (98, 1147)
    assert values_of(old["version_3"], "val_loss")[0] == (286, 7.523091793060303)
