"""`.wandb` decoding checked against runs written by the real wandb SDK (offline), value by value,
and against byte surgery on those files (the endings real logs have)."""

from __future__ import annotations

import math
import shutil
import struct
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from altgrad_pipeline.ingest.wandb.framing import BLOCK_SIZE, LOG_HEADER
from altgrad_pipeline.ingest.wandb.log import WandbLogReader, read_wandb_log
from altgrad_pipeline_tests.conftest import offline_wandb_env
from altgrad_pipeline_tests.sdk import finish_and_flush

STEPS = 40
KEYS = ("train/loss", "val loss", "grad.norm", "lr")


def logged_value(key: str, step: int) -> float:
    """What the writer logs; NaN and +-inf at fixed steps, so the reader must keep them exactly."""
    if key == "train/loss" and step == 7:
        return math.nan
    if key == "grad.norm" and step == 9:
        return math.inf
    if key == "grad.norm" and step == 11:
        return -math.inf
    return {"train/loss": 3.0 / (step + 1), "val loss": step * 0.25, "grad.norm": step + 0.5, "lr": 1e-3 * step}[key]


def input_seq(step: int) -> str:
    """A logged text: quotes, a newline, a tab and non-ASCII, so JSON escapes must be undone."""
    return f'seq {step}: "ab"\n\tcd → é'


def write_sdk_run(root: Path, *, exit_code: int, steps: int = STEPS, padding: int = 0) -> Path:
    """One offline run written by the real SDK; returns its `.wandb` file."""
    import wandb

    run = wandb.init(
        mode="offline",
        dir=root,
        project="altgrad-test",
        name=f"E5M2_manifold_exit{exit_code}",
        group="fp8",
        notes="reader test",
        tags=["fp8", "e5m2"],
        config={"fp8_format": "E5M2", "lr": 1e-3, "optim": {"betas": [0.9, 0.95]}},
    )
    for step in range(steps):
        row: dict[str, object] = {key: logged_value(key, step) for key in KEYS}
        row["point"] = "3"
        row["input_seq"] = input_seq(step)
        if padding:
            row["notes/text"] = "x" * padding
        if step % 10 == 0:
            row["grad/global"] = wandb.Histogram([0.1, 0.2, 0.2, 0.4])
        run.log(row, step=step)
    run.config.update({"late_key": 7})
    run.summary["best/val loss"] = 0.125
    finish_and_flush(run, exit_code=exit_code)
    (log,) = root.glob("wandb/offline-run-*/run-*.wandb")
    return log


@pytest.fixture(scope="module")
def sdk_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sdk")
    with pytest.MonkeyPatch.context() as env:
        offline_wandb_env(env, base)
        return {
            "finished": write_sdk_run(base / "finished", exit_code=0),
            "failed": write_sdk_run(base / "failed", exit_code=1, steps=3),
            # ~90 KB of string payload: spans blocks, so block-level damage can be tested.
            "long": write_sdk_run(base / "long", exit_code=0, steps=60, padding=1500),
        }


def expected_values() -> dict[tuple[int, str], float]:
    return {(step, key): logged_value(key, step) for step in range(STEPS) for key in KEYS}


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_history_equals_what_was_logged(sdk_runs: dict[str, Path]) -> None:
    log = read_wandb_log(sdk_runs["finished"])
    numbers = log.history.filter(pl.col("text").is_null())
    got = {(s, k): v for s, k, v in numbers.select("step", "key", "value").iter_rows()}
    expected = expected_values()
    assert set(got) == set(expected)
    assert all(same_float(got[pair], expected[pair]) for pair in expected)
    assert math.isnan(got[(7, "train/loss")]) and got[(9, "grad.norm")] == math.inf and got[(11, "grad.norm")] == -math.inf
    assert log.history.columns == ["run_id", "step", "key", "value", "text", "runtime", "timestamp"]
    assert log.history["run_id"].unique().to_list() == [log.run_id]
    assert log.history.select("step", "key").rows() == sorted(log.history.select("step", "key").rows())
    assert log.history["runtime"].null_count() == 0 and log.history["timestamp"].min() > 1.7e9
    assert log.issues == []


def test_strings_are_kept_as_text_and_other_values_become_types(sdk_runs: dict[str, Path]) -> None:
    log = read_wandb_log(sdk_runs["finished"])
    assert log.value_types == {"grad/global": "histogram"}
    strings = log.history.filter(pl.col("text").is_not_null())
    assert strings["value"].null_count() == strings.height  # a string is never a number, "3" included
    assert dict(strings.filter(pl.col("key") == "point").select("step", "text").iter_rows()) == dict.fromkeys(range(STEPS), "3")
    got = dict(strings.filter(pl.col("key") == "input_seq").select("step", "text").iter_rows())
    assert got == {step: input_seq(step) for step in range(STEPS)}
    assert strings.height == 2 * STEPS and strings["runtime"].null_count() == 0
    keys = set(log.history["key"].unique())
    assert not any(k.startswith("grad/global") for k in keys)
    assert not keys & {"_step", "_runtime", "_timestamp"}


def test_run_facts_config_summary_and_exit(sdk_runs: dict[str, Path]) -> None:
    finished = read_wandb_log(sdk_runs["finished"])
    assert finished.project == "altgrad-test"
    assert finished.name == "E5M2_manifold_exit0" and finished.group == "fp8" and finished.notes == "reader test"
    assert finished.tags == ["fp8", "e5m2"]
    assert finished.config == {"fp8_format": "E5M2", "lr": 1e-3, "optim": {"betas": [0.9, 0.95]}, "late_key": 7}
    assert finished.ended and finished.exit_code == 0
    assert finished.sdk_version and finished.sdk_version[0].isdigit() and "+" not in finished.sdk_version
    assert finished.started_at is not None and finished.started_at.tzinfo is not None
    assert finished.summary["_step"] == STEPS - 1
    assert finished.summary["train/loss"] == pytest.approx(3.0 / STEPS)
    assert finished.summary["best/val loss"] == 0.125
    assert finished.summary["grad/global"]["_type"] == "histogram"
    assert "_wandb" not in finished.summary and "_wandb" not in finished.config
    failed = read_wandb_log(sdk_runs["failed"])
    assert failed.ended and failed.exit_code == 1
    assert sorted(failed.history["step"].unique()) == [0, 1, 2]


def test_partial_last_record_then_resume_when_the_file_grows(sdk_runs: dict[str, Path], tmp_path: Path) -> None:
    full = sdk_runs["finished"].read_bytes()
    growing = tmp_path / "run-grow.wandb"
    growing.write_bytes(full[: len(full) - 40])
    reader = WandbLogReader(str(growing))
    reader.feed_file(growing)
    partial = reader.result()
    assert not partial.ended
    assert [i.kind for i in partial.issues] == ["truncated_tail"]
    assert partial.partial_tail_bytes > 0 and partial.complete_until + partial.partial_tail_bytes == len(full) - 40
    assert partial.history.height > 0
    growing.write_bytes(full)
    reader.feed_file(growing)
    complete = reader.result()
    reference = read_wandb_log(sdk_runs["finished"])
    assert complete.ended and complete.exit_code == 0 and complete.issues == []
    assert complete.complete_until == len(full)
    assert complete.history.equals(reference.history)
    assert complete.summary == reference.summary


def test_crc_mismatch_skips_to_the_next_block_and_keeps_the_rest(sdk_runs: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(sdk_runs["long"].read_bytes())
    assert len(data) > 3 * BLOCK_SIZE
    data[BLOCK_SIZE + 100] ^= 0xFF  # inside block 1
    damaged = tmp_path / "run-crc.wandb"
    damaged.write_bytes(bytes(data))
    log = read_wandb_log(damaged)
    reference = read_wandb_log(sdk_runs["long"])
    crc = [i for i in log.issues if i.kind == "crc_mismatch"]
    assert len(crc) == 1 and "block 1" in crc[0].lost and "bytes" in crc[0].lost
    assert log.ended and log.exit_code == 0  # records after the damaged block are kept
    assert 0 < log.history.height < reference.history.height
    assert log.history["step"].max() == reference.history["step"].max()
    joined = log.history.join(reference.history, on=["step", "key"], suffix="_ref")
    assert joined.height == log.history.height
    assert joined.filter(~pl_same("value", "value_ref")).height == 0
    assert joined["text"].equals(joined["text_ref"])


@pytest.mark.parametrize("flip", [BLOCK_SIZE - 2, BLOCK_SIZE, BLOCK_SIZE + 4, BLOCK_SIZE + 6, BLOCK_SIZE + 7])
def test_damage_at_the_first_block_boundary_is_not_taken_for_another_layout(
    sdk_runs: dict[str, Path], tmp_path: Path, flip: int
) -> None:
    """The wandb-core 0.17 layout puts block 1 seven bytes later; a standard log damaged exactly
    there must still be read as standard, the damage reported and the blocks after it kept."""
    data = bytearray(sdk_runs["long"].read_bytes())
    data[flip] ^= 0x5A
    damaged = tmp_path / "run-boundary.wandb"
    damaged.write_bytes(bytes(data))
    log = read_wandb_log(damaged)
    assert log.log_layout == "standard" and log.ended and log.exit_code == 0
    assert log.issues and log.issues[0].kind in ("crc_mismatch", "bad_chunk")
    reference = read_wandb_log(sdk_runs["long"])
    assert reference.log_layout == "standard" and 0 < log.history.height <= reference.history.height
    joined = log.history.join(reference.history, on=["step", "key"], suffix="_ref")
    assert joined.height == log.history.height and joined.filter(~pl_same("value", "value_ref")).height == 0


def pl_same(left: str, right: str):  # noqa: ANN201 - a Polars expression
    return (pl.col(left) == pl.col(right)) | (pl.col(left).is_nan() & pl.col(right).is_nan())


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "run-empty.wandb"
    empty.write_bytes(b"")
    log = read_wandb_log(empty)
    assert [i.kind for i in log.issues] == ["empty_log"] and log.history.height == 0 and not log.ended
    header_only = tmp_path / "run-header.wandb"
    header_only.write_bytes(LOG_HEADER)
    log = read_wandb_log(header_only)
    assert [i.kind for i in log.issues] == ["no_run_record"] and log.history.height == 0
    wrong = tmp_path / "run-wrong.wandb"
    wrong.write_bytes(b"not a wandb log at all")
    assert [i.kind for i in read_wandb_log(wrong).issues] == ["bad_header"]


def test_trailing_bare_chunk_header(sdk_runs: dict[str, Path], tmp_path: Path) -> None:
    data = sdk_runs["failed"].read_bytes()
    bare = tmp_path / "run-bare.wandb"
    bare.write_bytes(data + struct.pack("<IHB", 0x12345678, 200, 1))
    log = read_wandb_log(bare)
    reference = read_wandb_log(sdk_runs["failed"])
    assert [(i.kind, i.lost) for i in log.issues] == [("truncated_tail", "7 bytes at the end")]
    assert log.history.equals(reference.history) and log.exit_code == 1


def test_file_cut_on_a_block_boundary_has_no_exit(sdk_runs: dict[str, Path], tmp_path: Path) -> None:
    data = sdk_runs["long"].read_bytes()
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(data[: 2 * BLOCK_SIZE])
    log = read_wandb_log(cut)
    assert not log.ended and log.exit_code is None
    assert log.history.height > 0
    assert all(i.kind == "truncated_tail" for i in log.issues)  # at most the record spanning the cut


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_never_raises_nor_invents_values(sdk_runs: dict[str, Path], tmp_path: Path, data: st.DataObject) -> None:
    original = sdk_runs["finished"].read_bytes()
    damaged = bytearray(original[: data.draw(st.integers(0, len(original)), label="cut")])
    for _ in range(data.draw(st.integers(0, 3), label="flips")):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "run-fuzz.wandb"
    path.write_bytes(bytes(damaged))
    log = read_wandb_log(path)
    expected = expected_values()
    for step, key, value, text in log.history.select("step", "key", "value", "text").iter_rows():
        if text is None:
            assert (step, key) in expected and same_float(value, expected[(step, key)])
        else:
            assert text == {"point": "3", "input_seq": input_seq(step)}[key]


def test_folder_without_a_log_is_an_issue(tmp_path: Path) -> None:
    from altgrad_pipeline.ingest.wandb.local import RunFolder, read_segment

    folder = tmp_path / "wandb" / "run-20260101_000000-nolog123"
    (folder / "files").mkdir(parents=True)
    shutil.copyfile(__file__, folder / "files" / "output.log")
    segment = read_segment(RunFolder(folder, "nolog123", "20260101_000000"), grace_period_s=3600)
    assert [i.kind for i in segment.log.issues] == ["missing_log"]
    assert segment.log.history.height == 0 and segment.last_write is not None


def write_metric_summary_run(root: Path) -> Path:
    """A run whose summary is not the last history row: `define_metric` min / max+last
    summaries, a summary-only key, and a manual summary value that a later row overwrites."""
    import wandb

    run = wandb.init(mode="offline", dir=root, project="altgrad-test")
    run.define_metric("loss", summary="min")
    run.define_metric("acc", summary="max,last")
    losses, accuracies = [3.0, 1.0, 2.0, 0.5, 4.0, 2.5], [0.1, 0.9, 0.3, 0.2, 0.5, 0.4]
    for step, (loss, acc) in enumerate(zip(losses, accuracies, strict=True)):
        run.log({"loss": loss, "acc": acc, "lr": 0.1 * step}, step=step)
        if step == 2:
            run.summary["best"] = 1.0
    run.finish()
    (log,) = root.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    while not read_wandb_log(log).ended and time.monotonic() < deadline:
        time.sleep(0.1)  # finish() can return before the service has flushed the log
    return log


class RecordingReader(WandbLogReader):
    """Keeps every record's bytes, to fold the summary independently of the reader's fast path."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.payloads: list[bytes] = []

    def _decode(self, payload: bytes | memoryview, offset: int) -> None:
        self.payloads.append(bytes(payload))
        super()._decode(payload, offset)


def reference_summary(payloads: list[bytes]) -> dict[str, object]:
    """Every summary record decoded by wandb's own classes and folded in order (the slow path)."""
    import json

    from wandb.proto import wandb_internal_pb2 as wandb_pb

    flat: dict[tuple[str, ...], object] = {}
    for payload in payloads:
        record = wandb_pb.Record.FromString(payload)
        if record.WhichOneof("record_type") != "summary":
            continue
        for item in record.summary.update:
            flat[tuple(item.nested_key) or (item.key,)] = json.loads(item.value_json)
        for item in record.summary.remove:
            path = tuple(item.nested_key) or (item.key,)
            flat = {p: v for p, v in flat.items() if p[: len(path)] != path}
    tree: dict[str, object] = {}
    for path, value in flat.items():
        if path[0] == "_wandb":
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[path[-1]] = value
    return tree


def test_summary_fold_matches_the_slow_path_when_summary_differs_from_history(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as env:
        offline_wandb_env(env, tmp_path)
        path = write_metric_summary_run(tmp_path)
    reader = RecordingReader(str(path))
    reader.feed_file(path)
    log = reader.result()
    assert log.summary == reference_summary(reader.payloads)
    assert log.summary["loss"] == {"min": 0.5}
    assert log.summary["acc"] == {"max": 0.9, "last": 0.4}
    assert log.summary["best"] == 1.0 and log.summary["_step"] == 5
    last_row = {k: v for s, k, v in log.history.select("step", "key", "value").iter_rows() if s == 5}
    assert last_row == {"loss": 2.5, "acc": 0.4, "lr": 0.5}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_a_record_with_invalid_utf8_is_an_issue_not_a_crash(sdk_runs: dict[str, Path]) -> None:
    """A history item whose name is not UTF-8 parses in the lenient view but not as a Record:
    the record becomes an issue and every other value of the run is kept."""
    import wandb.proto.wandb_internal_pb2 as pb

    item_fields = pb.HistoryItem.DESCRIPTOR.fields_by_name
    item = _field(item_fields["nested_key"].number, b"\xff\xfe") + _field(item_fields["nested_key"].number, b"x")
    item += _field(item_fields["value_json"].number, b"1.0")
    history = _field(pb.HistoryRecord.DESCRIPTOR.fields_by_name["item"].number, item)
    record = _field(pb.Record.DESCRIPTOR.fields_by_name["history"].number, history)
    reader = WandbLogReader("synthetic")
    reader.feed_file(sdk_runs["finished"])
    before = reader.result().history.height
    reader._decode(record, offset=0)  # noqa: SLF001 - one record, exactly as the framing hands it over
    log = reader.result()
    assert log.history.height == before
    assert [i.kind for i in log.issues] == ["bad_record"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), damage=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(["payload", "crc", "type"])), max_size=3))
def test_block_crc_check_finds_the_first_damaged_chunk(seed: int, damage: list[tuple[float, str]]) -> None:
    """`first_crc_mismatch` (one zlib call per block, the rest predicted from the stored CRCs)
    names the same chunk as checking every chunk with its own call."""
    import random
    import zlib

    import numpy as np

    from altgrad_pipeline.ingest.wandb.framing import TYPE_CRC, first_crc_mismatch

    rnd = random.Random(seed)
    out, at, length, kind, crc = bytearray(LOG_HEADER), [], [], [], []
    while len(out) < 5 * BLOCK_SIZE:
        room = BLOCK_SIZE - len(out) % BLOCK_SIZE
        if room < 7:
            out += bytes(room)
            continue
        size = min(rnd.choice([0, 1, 5, 40, 300, 900, 4000]), room - 7)
        chunk_kind, payload = rnd.randint(1, 4), rnd.randbytes(size)
        at.append(len(out))
        length.append(size)
        kind.append(chunk_kind)
        crc.append(zlib.crc32(payload, TYPE_CRC[chunk_kind]))
        out += struct.pack("<IHB", crc[-1], size, chunk_kind) + payload
    for where, what in damage:
        index = int(where * len(at))
        if what == "payload" and length[index]:
            out[at[index] + 7 + rnd.randrange(length[index])] ^= rnd.randint(1, 255)
        elif what == "crc":
            crc[index] ^= 1 << rnd.randrange(32)
        else:  # a type byte read as another valid type
            kind[index] = kind[index] % 4 + 1
            out[at[index] + 6] = kind[index]
    expected = next(
        (i for i in range(len(at)) if zlib.crc32(bytes(out[at[i] + 7 : at[i] + 7 + length[i]]), TYPE_CRC[kind[i]]) != crc[i]), None
    )
    arrays = (np.asarray(a, dtype=np.int64) for a in (at, length, kind, crc))
    assert first_crc_mismatch(memoryview(bytes(out)), 0, *arrays, 0) == expected
