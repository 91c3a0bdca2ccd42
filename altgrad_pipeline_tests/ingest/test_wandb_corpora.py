"""Every W&B run in the real corpora reads without raising, agrees with INVENTORY_wandb.tsv, and
the special cases of PARSING.md come out as described. No personal data reaches the run facts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, ParsedRun
from altgrad_pipeline.ingest.wandb.local import LocalWandbSource

pytestmark = pytest.mark.corpora


@pytest.fixture(scope="module")
def runs(corpora_dir: Path) -> dict[str, tuple[object, ParsedRun]]:
    source = LocalWandbSource(corpora_dir)
    return {loc.run_id_hint: (loc, source.read(loc)) for loc in source.discover()}


@pytest.fixture(scope="module")
def inventory(corpora_dir: Path) -> pl.DataFrame:
    return pl.read_csv(corpora_dir / "INVENTORY_wandb.tsv", separator="\t", infer_schema_length=0)


def test_every_run_is_found_once_and_parsed_or_explained(runs: dict, corpora_dir: Path) -> None:
    old_format = {p.parent.name.rsplit("-", 1)[1] for p in corpora_dir.rglob("wandb-history.jsonl")}
    assert len(old_format) == 41
    assert old_format <= set(runs)
    for loc, run in runs.values():
        assert run.history.schema == HISTORY_SCHEMA
        assert run.run_id == loc.run_id_hint
        assert run.started_at is not None or run.issues, loc.location


def test_history_agrees_with_the_inventory(runs: dict, inventory: pl.DataFrame) -> None:
    real = inventory.filter(~pl.col("path").str.contains("latest-run")).with_columns(
        pl.col("path").str.extract(r"run-([a-z0-9]+)\.wandb$", 1).alias("run_id")
    )
    single = real.group_by("run_id").len().filter(pl.col("len") == 1)
    checked = 0
    for row in real.join(single, on="run_id").iter_rows(named=True):
        _, run = runs[row["run_id"]]
        expected_rows = int(row["history_rows"])
        history = run.history
        if expected_rows == 0:
            assert history.height == 0
            continue
        if history.height == 0:  # every logged value was a table, string or histogram
            assert run.value_types, row["path"]
            continue
        if run.value_types:  # rows holding only histograms/strings have steps but no numbers
            assert int(row["step_min"]) <= history["step"].min() <= history["step"].max() <= int(row["step_max"])
        else:
            assert history["step"].min() == int(row["step_min"]), row["path"]
            assert history["step"].max() == int(row["step_max"]), row["path"]
        assert history.select("step").n_unique() <= expected_rows
        assert history["value"].is_nan().sum() == int(row["nan_values"])
        assert history["value"].is_infinite().sum() == int(row["inf_values"])
        assert run.exit_code == (int(row["exit"].split("=")[1].rstrip(")")) if "exit=" in row["exit"] else
                                 (0 if row["exit"] == "finished" else None)), row["path"]
        checked += 1
    assert checked > 60


def test_endings_described_in_parsing_notes(runs: dict) -> None:
    _, teptbr0t = runs["teptbr0t"]
    assert [(i.kind, i.lost) for i in teptbr0t.issues] == [("truncated_tail", "7 bytes at the end")]
    assert teptbr0t.history["step"].max() == 129 and not teptbr0t.ended
    _, partial = runs["6pm3vk0i"]
    assert [(i.kind, i.lost) for i in partial.issues] == [("truncated_tail", "1421 bytes at the end")]
    assert partial.history.select("step").n_unique() == 39
    _, empty = runs["2nuzazio"]
    assert [i.kind for i in empty.issues] == ["empty_log"] and empty.history.height == 0
    for run_id in ("m7i0ap16", "sw0cdcxz"):
        _, no_log = runs[run_id]
        assert [i.kind for i in no_log.issues] == ["missing_log"]
    _, cut = runs["r8mtbfdx"]  # 40 full blocks, no exit record, summary side file far ahead
    assert not cut.ended and cut.cut_short and cut.history["step"].max() == 3956
    assert cut.summary["_step"] == 62509
    _, killed = runs["cee4nz6i"]  # killed 0.25 run: no config.yaml, config only in the log
    assert not killed.ended and killed.config["hidden_dim"] == 128


def test_resumed_runs_are_single_runs(runs: dict) -> None:
    loc, dxeyt9j0 = runs["dxeyt9j0"]
    assert len(loc.parts) == 3
    assert dxeyt9j0.history["step"].min() == 50 and dxeyt9j0.history["step"].max() == 186062
    assert dxeyt9j0.history.filter(pl.col("step") > 186060).select("step").unique().height == 2
    assert dxeyt9j0.ended and dxeyt9j0.exit_code == 0
    loc, klt5o1bl = runs["klt5o1bl"]
    assert len(loc.parts) == 4
    assert klt5o1bl.history["step"].max() == 46515
    assert klt5o1bl.ended and klt5o1bl.exit_code == 0  # the last written segment finished


def test_latest_run_copies_are_not_double_counted(runs: dict, corpora_dir: Path) -> None:
    with_real_folder = {"5pppfjv9", "rc9je7bk", "ibal0bht"}
    for run_id in with_real_folder:
        loc, run = runs[run_id]
        assert "latest-run" not in loc.location and all("latest-run" not in p for p in loc.parts)
    _, vst = runs["5pppfjv9"]
    assert vst.history["step"].max() == 3986  # the full copy, not the 32-block latest-run prefix
    latest_only = {"efr29yl1", "ksyqnmkk"}  # committed only as latest-run: that copy is the run
    assert all(runs[r][0].location.endswith("latest-run") for r in latest_only)


def test_rows_without_step_field_and_nested_histograms(runs: dict) -> None:
    _, composer = runs["x9vwrijy"]  # 586 of 586 rows have no HistoryRecord.step
    assert composer.history["step"].min() == 0 and composer.history["step"].max() == 585
    assert composer.history.select("step").n_unique() == 586
    _, core = runs["bmdb6vcz"]  # 0.26: histograms as [name, _type|values|bins] items
    assert core.value_types["grad/global"] == "histogram"
    keys = set(core.history["key"].unique())
    assert "grad/global" not in keys and not any(k.startswith("grad/global/") or k.endswith("_type") for k in keys)
    _, strings = runs["ksyqnmkk"]
    assert strings.value_types == {"output_validation_table": "table-file"}


def test_logged_strings_are_read_back_at_their_step_and_key(runs: dict) -> None:
    """yzqrtop's run logged Chinese `Question`/`Answer` texts (`\\uXXXX` escapes in the log) and
    `point: "3"`, a numeric-looking string: each is kept as logged, never as a number."""
    _, run = runs["ksyqnmkk"]
    texts = run.history.filter(pl.col("text").is_not_null())
    assert texts["value"].null_count() == texts.height
    assert sorted(texts.select("step", "key", "text").iter_rows()) == [
        (0, "Answer", "测试3"), (0, "Question", "测试"),
        (1, "Answer", "测试1"), (1, "Question", "测试"),
        (2, "Answer", "测试2"), (2, "Question", "测试"),
        (6, "Answer", "测试2"), (6, "Question", "测试"), (6, "point", "3"),
    ]  # fmt: skip


def personal_strings(folders: list[Path]) -> set[str]:
    """E-mail addresses, host and user names recorded in these folders' metadata files."""
    found: set[str] = set()
    for folder in folders:
        for path in (folder / "wandb-metadata.json", folder / "files" / "wandb-metadata.json"):
            if path.is_file():
                meta = json.loads(path.read_text())
                found |= {v for f in ("email", "host", "username") if isinstance(v := meta.get(f), str) and len(v) >= 4}
    return found


def test_no_personal_data_in_run_facts(runs: dict, corpora_dir: Path) -> None:
    emails = {s for s in personal_strings([p.parent.parent for p in corpora_dir.rglob("files/wandb-metadata.json")]) if "@" in s}
    assert emails
    redacted = 0
    for loc, run in runs.values():
        secrets = emails | personal_strings([Path(p) for p in loc.parts])
        text = json.dumps([run.config, run.summary, run.name, run.tags, run.notes, run.group,
                           run.value_types], default=str)
        leaked = [s for s in secrets if re.search(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])", text)]
        assert not leaked, (run.run_id, leaked)
        assert "_wandb" not in run.config and "_wandb" not in run.summary
        redacted += "<redacted>" in text
    _, alpaca = runs["0hg90wxj"]  # HF Trainer's logging_dir carries the host name
    assert alpaca.config["logging_dir"].endswith("_<redacted>")
    assert redacted >= 1
