"""The wandb-core 0.17 block layout (blocks 7 bytes later than every other SDK's), checked on a
log wandb 0.17.5 wrote with `wandb.require("core")` (`wandb_core_017/make_fixtures.py`), value by
value against what it logged, and on byte surgery of that log (tears, damage, a growing file)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import polars as pl
import pytest

from altgrad_pipeline.ingest.model import issues_frame
from altgrad_pipeline.ingest.tables import raw_runs_frame
from altgrad_pipeline.ingest.wandb.framing import BLOCK_SIZE, LAYOUT_CORE_017, LOG_HEADER
from altgrad_pipeline.ingest.wandb.local import LocalWandbSource
from altgrad_pipeline.ingest.wandb.log import WandbLogReader, read_wandb_log
from altgrad_pipeline_tests.ingest.wandb_core_017.make_fixtures import (
    RUN_ID,
    STEPS,
    logged_row,
)

FIXTURE = Path(__file__).parent / "wandb_core_017" / f"run-{RUN_ID}.wandb.gz"


@pytest.fixture(scope="module")
def core_log() -> bytes:
    return gzip.decompress(FIXTURE.read_bytes())


def write(tmp_path: Path, data: bytes, name: str = RUN_ID) -> Path:
    path = tmp_path / f"run-{name}.wandb"
    path.write_bytes(data)
    return path


def chunk_is_whole(data: bytes, pos: int) -> bool:
    crc, length, kind = struct.unpack_from("<IHB", data, pos)
    payload = data[pos + 7 : pos + 7 + length]
    return 1 <= kind <= 4 and zlib.crc32(payload, zlib.crc32(bytes([kind]))) == crc


def expected_history() -> pl.DataFrame:
    rows = [(step, key, float(value)) for step in range(STEPS) for key, value in logged_row(step).items()]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "key": pl.String, "expected": pl.Float64}, orient="row")


def assert_logged_values(history: pl.DataFrame) -> None:
    """Every value of `history` is the one logged at its (step, key), bit for bit (NaN as NaN)."""
    joined = history.join(expected_history(), on=["step", "key"], how="left")
    assert joined["expected"].null_count() == 0
    same = (pl.col("value") == pl.col("expected")) | (pl.col("value").is_nan() & pl.col("expected").is_nan())
    assert joined.filter(~same).height == 0


def test_the_fixture_is_the_shifted_layout_over_several_blocks(core_log: bytes) -> None:
    assert core_log.startswith(LOG_HEADER) and len(core_log) > 3 * BLOCK_SIZE
    assert not chunk_is_whole(core_log, BLOCK_SIZE) and chunk_is_whole(core_log, BLOCK_SIZE + len(LOG_HEADER))


def test_every_step_and_value_is_read(core_log: bytes, tmp_path: Path) -> None:
    log = read_wandb_log(write(tmp_path, core_log))
    assert log.log_layout == LAYOUT_CORE_017 and log.issues == []
    assert log.sdk_version == "0.17.5" and log.ended and log.exit_code == 0
    assert log.run_id == RUN_ID and log.config == {"seed": 7, "max_steps": STEPS}
    assert log.history.height == expected_history().height
    assert log.history["step"].unique().sort().to_list() == list(range(STEPS))
    assert log.history["runtime"].null_count() == 0 and log.history["timestamp"].null_count() == 0
    assert_logged_values(log.history)
    non_finite = log.history.filter(~pl.col("value").is_finite())
    assert non_finite.height == sum(1 for s in range(STEPS) for v in logged_row(s).values() if not math.isfinite(v))


def test_run_folder_is_finished_without_issues(core_log: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "wandb" / f"offline-run-20240801_120000-{RUN_ID}"
    folder.mkdir(parents=True)
    write(folder, core_log)
    source = LocalWandbSource(tmp_path)
    (locator,) = source.discover()
    run = source.read(locator)
    assert issues_frame(run.issues).height == 0
    row = raw_runs_frame([run]).row(0, named=True)
    assert (row["state"], row["log_layout"], row["n_steps"], row["last_step"]) == ("finished", LAYOUT_CORE_017, STEPS, STEPS - 1)
    assert row["n_values"] == expected_history().height


@pytest.mark.parametrize("tear", [2 * BLOCK_SIZE + 5_000, 5 * BLOCK_SIZE + 7 + 100, -1_000])
def test_torn_log_keeps_everything_before_the_tear(core_log: bytes, tmp_path: Path, tear: int) -> None:
    full = read_wandb_log(write(tmp_path, core_log, "full"))
    torn = read_wandb_log(write(tmp_path, core_log[:tear]))
    assert torn.log_layout == LAYOUT_CORE_017 and not torn.ended
    assert [i.kind for i in torn.issues] == ["truncated_tail"]
    last = torn.history["step"].max()
    assert 0 < last < STEPS - 1  # type: ignore[operator]
    assert torn.history.equals(full.history.filter(pl.col("step") <= last))


def test_damage_in_a_later_block_skips_that_block_only(core_log: bytes, tmp_path: Path) -> None:
    data = bytearray(core_log)
    data[3 * BLOCK_SIZE + 7 + 500] ^= 0xFF  # inside the 4th block of this layout
    log = read_wandb_log(write(tmp_path, bytes(data)))
    assert log.log_layout == LAYOUT_CORE_017 and log.ended and log.exit_code == 0
    assert log.issues[0].kind == "crc_mismatch" and "block 3" in log.issues[0].lost
    # and at most the record the skipped block's end cut, continued in the next block
    assert [i.kind for i in log.issues[1:]] in ([], ["broken_record"])
    assert 0 < STEPS * 4 - log.history.height < 400
    assert_logged_values(log.history)


@pytest.mark.parametrize("first", [BLOCK_SIZE - 3, BLOCK_SIZE + 2, BLOCK_SIZE + 9, 3 * BLOCK_SIZE])
def test_growing_log_read_in_two_feeds_equals_one_read(core_log: bytes, tmp_path: Path, first: int) -> None:
    path = write(tmp_path, core_log[:first])
    reader = WandbLogReader(str(path))
    reader.feed_file(path)
    partial = reader.result()
    assert all(i.kind == "truncated_tail" for i in partial.issues)
    path.write_bytes(core_log)
    reader.feed_file(path)
    grown = reader.result()
    assert grown.log_layout == LAYOUT_CORE_017 and grown.issues == [] and grown.complete_until == len(core_log)
    assert_logged_values(grown.history)
    assert grown.history.height == expected_history().height
