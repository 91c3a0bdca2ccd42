"""The vectorised history/summary decoder against the reader's protobuf path, record by record and
value by value: SDK-written runs (floats with NaN/+-inf, ints, strings, a numeric-looking string,
a histogram; keys with '/', spaces, dots, unicode), every `.wandb` file of the real corpora (SDK
0.13 to 0.26: `key` and one-element `nested_key` layouts), generated records, truncated and torn
files, and random or damaged bytes (never raise; what is decoded is what the protobuf path
decodes, the rest is handed back). The reader with and without the fast path must agree on
everything it returns, bit for bit. Every test runs with both wire scans (the compiled
`_wirescan` and the numpy passes it falls back to), and the two are compared with each other
array by array on the same inputs."""

from __future__ import annotations

import collections
import math
import os
import random
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from wandb.proto import wandb_internal_pb2 as wandb_pb
from zlib_ng import zlib_ng

from altgrad_pipeline.ingest.wandb import compiled as wandb_compiled
from altgrad_pipeline.ingest.wandb import fastpath as fp
from altgrad_pipeline.ingest.wandb import framing
from altgrad_pipeline.ingest.wandb import log as wandb_log
from altgrad_pipeline.ingest.wandb.framing import BLOCK_SIZE, LOG_HEADER
from altgrad_pipeline.ingest.wandb.log import WandbLog, WandbLogReader
from altgrad_pipeline_tests.conftest import offline_wandb_env

#: Set (to 1) where the compiled scan may be missing: its tests skip instead of failing. CI compiles
#: it (`pip install -e .` with gcc), so there a missing extension is a failure.
ALLOW_MISSING_WIRESCAN_ENV = "ALTGRAD_WIRESCAN_OPTIONAL"

KEYS = ("train/loss", "val loss", "grad.norm", "lr", "layer.0/attn.q", "損失/学習", "émoji 🚀/x")


# ---------------------------------------------------------------------------------------------
# Helpers: framing with the reader's own code, the reader as a per-record oracle, and the reader
# with the fast path forced on (every batch) or off (protobuf only).
# ---------------------------------------------------------------------------------------------


def framed(path: Path) -> list[tuple[bytes, int]]:
    """Every complete record payload (chunks reassembled) and its file offset, framed by
    `WandbLogReader` itself."""
    records: list[tuple[bytes, int]] = []

    class Collect(WandbLogReader):
        def _decode(self, payload: bytes | memoryview, offset: int) -> None:  # a small log's records
            records.append((bytes(payload), offset))

        def _flush_batch(self) -> None:  # a large log's batches
            records.extend((self._buffer[start:stop].tobytes(), offset) for start, stop, offset in self._take_batch().tolist())

    Collect(str(path)).feed_file(path)
    return records


def spans(payloads: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    lengths = np.asarray([len(p) for p in payloads], dtype=np.int64)
    ends = np.cumsum(lengths)
    return b"".join(payloads), ends - lengths, ends


def oracle(payload: bytes) -> WandbLogReader:
    """The reader's protobuf path on one record alone."""
    reader = WandbLogReader("oracle")
    reader._decode(payload, 0)
    return reader


def check_against_oracle(payloads: list[bytes], decoded: fp.DecodedRecords) -> None:
    """Every record the fast path decoded gives exactly what the protobuf path gives for it."""
    history, summary = decoded.history, decoded.summary
    first_item = np.concatenate([[0], np.cumsum(history.row_counts)])
    keys, texts = history.keys.to_list(), history.texts.to_list()
    for row, record in enumerate(history.records.tolist()):
        reference = oracle(payloads[record])
        lo, hi = first_item[row], first_item[row + 1]
        assert reference._issues == [] and reference._row_counts == [hi - lo], record
        assert reference._keys == [k.encode() for k in keys[lo:hi]], record
        assert reference._texts == [t.encode() for t in texts[lo:hi]], record
        step = int(history.step_nums[row]) if history.has_step_num[row] else None
        assert reference._row_step_nums == [step], record
    slow = set(decoded.slow_records.tolist())
    summaries = {r for r in np.flatnonzero(decoded.kinds == fp.KIND_SUMMARY).tolist() if r not in slow}
    for record in sorted(summaries):
        reference = oracle(payloads[record])
        mine = dict(summary.last_values(record, record + 1))
        assert reference._issues == [] and not reference._row_counts, record
        assert list(mine.items()) == list(reference._summary.items()), record
    rows = set(history.records.tolist())
    assert set(summary.records.tolist()) | {r for r, _ in summary.parsed} <= summaries
    assert not rows & slow and not rows & summaries
    assert rows | summaries | slow == set(range(len(payloads)))


def read_with(path: Path | bytes, *, fast: bool, threshold: int | None = None, feeds: int = 1) -> WandbLog:
    """`read_wandb_log` with the fast path on every batch (`fast`), never, or from `threshold`
    bytes of history and summary records on; a `bytes` log is fed from memory, in `feeds` parts (as a growing file is read)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wandb_log, "FASTPATH_MIN_BYTES", threshold if threshold is not None else (0 if fast else 1 << 62))
        patch.setattr(wandb_log, "time", SimpleNamespace(time=lambda: 2e9))  # the file's age is in issue texts
        if isinstance(path, Path):
            return wandb_log.read_wandb_log(path)
        reader = WandbLogReader("memory")
        cuts = sorted({0, len(path), *(len(path) * i // feeds for i in range(1, feeds))})
        for _lo, hi in zip(cuts, cuts[1:]):
            reader.feed(path[reader.offset : hi], file_age_s=1e6)
        return reader.result()


def require_wirescan() -> None:
    if wandb_compiled._wirescan is None:
        if os.environ.get(ALLOW_MISSING_WIRESCAN_ENV):
            pytest.skip(f"the compiled wire scan is not built and {ALLOW_MISSING_WIRESCAN_ENV} allows that")
        pytest.fail(f"altgrad_pipeline.ingest.wandb._wirescan is not built: `pip install -e .` compiles it (gcc, Python headers); set {ALLOW_MISSING_WIRESCAN_ENV}=1 where that is impossible")


@pytest.fixture(scope="module", autouse=True, params=["c", "numpy"])
def decoder(request: pytest.FixtureRequest) -> Any:
    """Every test of this module with each wire scan (`compiled.DECODER_ENV`)."""
    if request.param == "c":
        require_wirescan()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(wandb_compiled.DECODER_ENV, request.param)
        yield request.param


def examples_for(decoder: str, compiled_examples: int) -> settings:
    """Hypothesis settings for a property test run under `decoder`: the numpy passes get a third of
    the compiled scan's examples, since every example of the compiled run already compares the two
    scans array by array (`assert_scans_agree`)."""
    examples = compiled_examples if decoder == "c" else compiled_examples // 3
    return settings(max_examples=examples, deadline=None)


def decoded_with(scan: str, payloads: list[bytes]) -> fp.DecodedRecords:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(wandb_compiled.DECODER_ENV, scan)
        return fp.decode_records(*spans(payloads), min_active=1)


def assert_scans_agree(payloads: list[bytes]) -> None:
    """The compiled scan and the numpy passes decode the records the same, array by array: kinds,
    slow records, summary flush points, every history column and summary stream. (`min_active=1`:
    the numpy walk refuses nothing to save rounds, which the C walk never does.)"""
    if wandb_compiled._wirescan is None:
        return
    c, reference = decoded_with("c", payloads), decoded_with("numpy", payloads)
    for name in ("kinds", "slow_records", "may_fold_summary"):
        assert np.array_equal(getattr(c, name), getattr(reference, name)), name
    for name in ("records", "step_nums", "has_step_num", "row_counts", "codes"):
        assert np.array_equal(getattr(c.history, name), getattr(reference.history, name)), name
    assert c.history.names.to_list() == reference.history.names.to_list()
    assert c.history.texts.to_list() == reference.history.texts.to_list()
    for name in ("records", "codes", "value_starts", "value_ends", "parsed_records", "parsed_entry"):
        assert np.array_equal(getattr(c.summary, name), getattr(reference.summary, name)), name
    assert c.summary.names == reference.summary.names and c.summary.parsed_entries == reference.summary.parsed_entries


def float_bits(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy().view(np.uint64)


def assert_same_log(fast: WandbLog, reference: WandbLog) -> None:
    """Everything the reader returns is the same; history values bit for bit (NaN payloads,
    +-inf, -0.0), summary and config in the same key order."""
    assert_frame_equal(fast.history, reference.history)
    for column in ("value", "runtime", "timestamp"):
        assert (float_bits(fast.history, column) == float_bits(reference.history, column)).all(), column
    assert_frame_equal(fast.media, reference.media)
    assert repr(fast.summary) == repr(reference.summary) and repr(fast.config) == repr(reference.config)
    for name in ("value_types", "issues", "run_id", "name", "tags", "started_at", "sdk_version", "ended", "exit_code", "complete_until", "partial_tail_bytes", "private_strings"):
        assert getattr(fast, name) == getattr(reference, name), name


def log_bytes(payloads: list[bytes]) -> bytes:
    """A `.wandb` file holding `payloads`: header, 32 KiB blocks, CRC-checked chunks (LevelDB log
    framing, as the SDK writes it)."""
    out = bytearray(LOG_HEADER)
    for payload in payloads:
        pos, first = 0, True
        while True:
            room = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if room < 7:
                out += bytes(room)
                continue
            size = min(room - 7, len(payload) - pos)
            last = pos + size == len(payload)
            kind = (1 if last else 2) if first else (4 if last else 3)
            chunk = payload[pos : pos + size]
            out += struct.pack("<IHB", zlib.crc32(chunk, zlib.crc32(bytes([kind]))), size, kind) + chunk
            pos, first = pos + size, False
            if last:
                break
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Real files
# ---------------------------------------------------------------------------------------------


def value_of(key: str, step: int) -> object:
    if key == "train/loss" and step == 3:
        return math.nan
    if key == "grad.norm" and step == 4:
        return math.inf
    if key == "grad.norm" and step == 5:
        return -math.inf
    if key == "lr":
        return step  # an int
    return (KEYS.index(key) + 1) / (step + 1)


@pytest.fixture(scope="module")
def sdk_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fastpath-sdk")
    with pytest.MonkeyPatch.context() as env:
        offline_wandb_env(env, base)
        import wandb

        run = wandb.init(mode="offline", dir=base, project="altgrad-test", config={"lr": 1e-3})
        for step in range(40):
            row: dict[str, object] = {key: value_of(key, step) for key in KEYS}
            row["point"] = "3"
            row["label"] = "E5M2 « ok »"
            row["flag"] = True
            if step % 10 == 0:
                row["grad/global"] = wandb.Histogram([0.1, 0.2, 0.2, 0.4])
            if step % 7 == 0:
                row["sparse/only sometimes"] = 1.5 * step
            run.log(row, step=step)
        run.summary["best/val loss"] = 0.125
        run.finish()
    (log,) = base.glob("wandb/offline-run-*/run-*.wandb")
    # Under load the SDK's writer may still be appending after `finish()` returns: wait for the
    # exit record and a stable size, so both paths read the same bytes.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        size = log.stat().st_size
        kinds = {wandb_pb.Record.FromString(p).WhichOneof("record_type") for p, _ in framed(log)}
        time.sleep(0.5)
        if "exit" in kinds and log.stat().st_size == size:
            break
    return log


def test_sdk_run_record_by_record(sdk_log: Path) -> None:
    payloads = [p for p, _ in framed(sdk_log)]
    decoded = fp.decode_records(*spans(payloads))
    check_against_oracle(payloads, decoded)
    assert_scans_agree(payloads)
    history = decoded.history
    # Every plain history row is decoded; rows with a histogram (split into nested keys by
    # wandb-core) are handed back, never turned into numbers.
    kinds = [wandb_pb.Record.FromString(p).WhichOneof("record_type") for p in payloads]
    history_records = [i for i, kind in enumerate(kinds) if kind == "history"]
    with_histogram = [i for i in history_records if any(len(it.nested_key) > 1 for it in wandb_pb.Record.FromString(payloads[i]).history.item)]
    assert len(history_records) == 40 and len(with_histogram) == 4
    assert sorted(history.records.tolist()) == sorted(set(history_records) - set(with_histogram))
    assert set(with_histogram) <= set(decoded.slow_records.tolist())
    keys = set(history.keys.to_list())
    assert set(KEYS) <= keys and not any(k.startswith("grad/global") for k in keys)
    frame = pl.DataFrame({"key": history.keys, "value": history.texts.cast(pl.Float64, strict=False)})
    assert frame.filter(pl.col("key").is_in(["point", "label", "flag"]))["value"].null_count() == 3 * len(history.records)
    values = frame.filter(pl.col("key") == "grad.norm")["value"].to_list()
    assert math.inf in values and -math.inf in values
    assert any(math.isnan(v) for v in frame.filter(pl.col("key") == "train/loss")["value"].to_list())
    # All summary records are decoded (the `["_wandb", "runtime"]` ones by protobuf).
    assert not [r for r in decoded.slow_records.tolist() if kinds[r] == "summary"]


def test_sdk_run_end_to_end(sdk_log: Path) -> None:
    fast, reference = read_with(sdk_log, fast=True), read_with(sdk_log, fast=False)
    assert_same_log(fast, reference)
    assert reference.summary["best/val loss"] == 0.125 and len(fast.history) > 0
    assert math.isnan(fast.history.filter(pl.col("key") == "train/loss", pl.col("step") == 3)["value"].item())
    # The reader's own threshold: this log's history and summary records are too few for numpy.
    assert_same_log(read_with(sdk_log, fast=False, threshold=wandb_log.FASTPATH_MIN_BYTES), reference)


def corpora_logs(corpora_dir: Path) -> list[Path]:
    logs = sorted(corpora_dir.rglob("run-*.wandb"))
    if not logs:
        pytest.skip("no .wandb files in the corpora")
    return logs


@pytest.mark.corpora
def test_corpora_record_by_record_and_end_to_end(corpora_dir: Path, decoder: str) -> None:
    """Every corpus `.wandb` file reads the same with the fast path on every batch, with the
    reader's own threshold and with protobuf alone: history, summary fold, config, issues."""
    versions: dict[str, int] = {}
    layouts = {"key": 0, "nested_key": 0}
    logs = corpora_logs(corpora_dir)
    for path in logs:
        payloads = [p for p, _ in framed(path)]
        decoded = fp.decode_records(*spans(payloads), min_active=1)  # as much fast path as possible
        check_against_oracle(payloads, decoded)
        if decoder == "c":
            assert_scans_agree(payloads)
        reference = read_with(path, fast=False)
        assert_same_log(read_with(path, fast=True), reference)
        assert_same_log(read_with(path, fast=False, threshold=wandb_log.FASTPATH_MIN_BYTES), reference)
        versions[reference.sdk_version or "?"] = versions.get(reference.sdk_version or "?", 0) + len(decoded.history.records)
        if len(decoded.history.records):
            first = wandb_pb.Record.FromString(payloads[int(decoded.history.records[0])]).history.item[0]
            layouts["nested_key" if len(first.nested_key) else "key"] += 1
    assert len(logs) == 126
    # Rows were decoded by the fast path from both key layouts and from old and new writers.
    assert layouts["key"] > 0 and layouts["nested_key"] > 0
    assert any(v.startswith("0.13") for v in versions) and any(v.startswith("0.26") for v in versions)
    assert sum(versions.values()) > 40_000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_and_torn_files_read_the_same(sdk_log: Path, data: st.DataObject) -> None:
    """A log cut anywhere (a live run, a killed writer), with bytes flipped (a torn write: CRC
    mismatches, broken records), read whole or as it grows: both paths agree."""
    raw = bytearray(sdk_log.read_bytes())
    raw = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
    for _ in range(data.draw(st.integers(0, 3), label="flips")):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    feeds = data.draw(st.integers(1, 3), label="feeds")
    reference = read_with(bytes(raw), fast=False)
    assert_same_log(read_with(bytes(raw), fast=True, feeds=feeds), read_with(bytes(raw), fast=False, feeds=feeds))
    if feeds == 1:
        assert_same_log(read_with(bytes(raw), fast=True), reference)


# ---------------------------------------------------------------------------------------------
# Contract details
# ---------------------------------------------------------------------------------------------


def _name(item: Any, name: str | list[str]) -> None:
    """SDK <= 0.16 names an item by `key`, >= 0.19 by a `nested_key` list."""
    if isinstance(name, list):
        item.nested_key.extend(name)
    else:
        item.key = name


def history_record(items: list[tuple[str | list[str], str]], step: int | None = None, **extra: Any) -> bytes:
    record = wandb_pb.Record()
    record.history.SetInParent()
    for name, value in items:
        _name(record.history.item.add(value_json=value), name)
    if step is not None:
        record.history.step.num = step
    for name, value in extra.items():
        setattr(record, name, value)
    return record.SerializeToString()


def summary_record(updates: list[tuple[str | list[str], str]], removes: list[str] = ()) -> bytes:
    record = wandb_pb.Record()
    for name, value in updates:
        _name(record.summary.update.add(value_json=value), name)
    for name in removes:
        record.summary.remove.add(key=name)
    return record.SerializeToString()


def test_steps_bookkeeping_and_missing_step_fields() -> None:
    payloads = [
        history_record([("_step", "5"), ("_runtime", "1.5"), ("_timestamp", "1.7e9"), ("a", "1")], step=5),
        history_record([("a", "2"), ("_step", "6.0")]),  # no step field (Composer runs)
        history_record([("a", "3")], step=0),  # step.num == 0: an empty `step` message
        history_record([("a", "4")]),  # neither: a missing_step row
        history_record([]),  # no items at all
        history_record([("a", "5"), ("_step", "7"), ("_step", "8")], step=9),  # the first `_step` counts
    ]
    decoded = fp.decode_records(*spans(payloads), min_active=1)
    check_against_oracle(payloads, decoded)
    assert decoded.history.records.tolist() == [0, 1, 2, 3, 4, 5]
    assert decoded.history.has_step_num.tolist() == [True, False, True, False, False, True]
    fast, reference = read_with(log_bytes(payloads), fast=True), read_with(log_bytes(payloads), fast=False)
    assert_same_log(fast, reference)
    assert fast.history.select("step", "value", "runtime").rows() == [(0, 3.0, None), (5, 1.0, 1.5), (6, 2.0, None), (7, 5.0, None)]
    assert [i.kind for i in fast.issues] == ["missing_step", "missing_step", "step_regression"]


def test_what_is_refused() -> None:
    payloads = [
        history_record([("a", "1")], step=1),  # plain
        history_record([(["h", "_type"], '"histogram"'), ("a", "1")], step=2),  # split histogram
        history_record([("a", "1")], step=3, num=7),  # Record.num: fine
        history_record([("", "1")], step=4),  # empty key: proto3 omits it
        history_record([("a", "")], step=5),  # empty value
        history_record([("a", "1")], step=6)[:-1],  # truncated
        summary_record([("a", "1")], removes=["b"]),  # a remove
        summary_record([(["_wandb", "runtime"], "3"), ("_runtime", "3")]),  # parsed, not refused
        b"\x12\x05\x0a\x03\x0a\x01\xff",  # history item key not UTF-8
        b"",  # an empty Record
    ]
    decoded = fp.decode_records(*spans(payloads), min_active=1)
    check_against_oracle(payloads, decoded)
    assert decoded.history.records.tolist() == [0, 2]
    assert decoded.slow_records.tolist() == [1, 3, 4, 5, 6, 8, 9]
    assert [r for r, _ in decoded.summary.parsed] == [7, 7]
    assert decoded.kinds.tolist()[:3] == [fp.KIND_HISTORY] * 3 and decoded.kinds[9] == fp.KIND_OTHER


def test_wide_records_are_decoded_by_their_item_chains() -> None:
    wide = history_record([(f"k{i}", str(i)) for i in range(200)], step=1)
    decoded = fp.decode_records(*spans([wide] * 3))
    assert decoded.history.records.tolist() == [0, 1, 2] and decoded.slow_records.tolist() == []
    assert decoded.history.row_counts.tolist() == [200, 200, 200]
    check_against_oracle([wide] * 3, decoded)


def test_summary_fold_order_with_slow_records_in_between() -> None:
    payloads = [
        summary_record([("a", "1"), ("b", "1")]),
        summary_record([(["_wandb", "runtime"], "1"), ("a", "2")]),
        summary_record([("c", "1")], removes=["a"]),  # slow: removes `a`
        summary_record([("a", "3"), ("d", "1")]),
        history_record([("x", "1")], step=1),
        summary_record([("b", "2")]),
    ]
    decoded = fp.decode_records(*spans(payloads), min_active=1)
    assert decoded.slow_records.tolist() == [2]
    flat: dict = {}
    reference = WandbLogReader("reference")
    for payload in payloads:
        reference._decode(payload, 0)
    slow_calls: list[int] = []

    def slow(record: int) -> None:
        slow_calls.append(record)
        reader = WandbLogReader("slow")
        reader._summary = flat
        reader._decode(payloads[record], 0)

    decoded.replay(flat, slow)
    assert slow_calls == [2]
    assert [(k, v if isinstance(v, str) else v.decode()) for k, v in flat.items()] == [
        (k, v if isinstance(v, str) else v.decode()) for k, v in reference._summary.items()
    ]


def test_runtime_summaries_are_parsed_once_per_payload_before_their_items() -> None:
    """wandb-core's per-row `["_wandb", "runtime"]` summary records (same bytes, another
    `Record.num`) are parsed once per distinct payload without reading their items; one with a
    `remove` still goes to the caller, and the fold equals the protobuf path's."""

    def numbered(payload: bytes, num: int) -> bytes:
        record = wandb_pb.Record.FromString(payload)
        record.num = num
        return record.SerializeToString()

    runtime = summary_record([(["_wandb", "runtime"], "7"), ("_runtime", "7")])
    payloads = [
        numbered(runtime, 1),
        summary_record([("a", "1"), ("_runtime", "6.5")]),
        numbered(runtime, 300),  # a two-byte number: the same payload after it
        summary_record([(["_wandb", "runtime"], "8"), ("b", "2")], removes=["a"]),  # slow: a remove
        numbered(summary_record([(["_wandb", "runtime"], "9"), ("_runtime", "9")]), 301),
        summary_record([("a", "3")]),
        numbered(runtime, 302),
    ]
    decoded = fp.decode_records(*spans(payloads), min_active=1)
    check_against_oracle(payloads, decoded)
    assert decoded.slow_records.tolist() == [3]
    assert [r for r, _ in decoded.summary.parsed] == [0, 0, 2, 2, 4, 4, 6, 6]
    flat: dict = {}
    reference = WandbLogReader("reference")
    for payload in payloads:
        reference._decode(payload, 0)

    def slow(record: int) -> None:
        reader = WandbLogReader("slow")
        reader._summary = flat
        reader._decode(payloads[record], 0)

    decoded.replay(flat, slow)
    assert [(k, v if isinstance(v, str) else v.decode()) for k, v in flat.items()] == [
        (k, v if isinstance(v, str) else v.decode()) for k, v in reference._summary.items()
    ]


def test_merge_history_puts_slow_rows_in_record_order() -> None:
    payloads = [
        history_record([("a", "1"), ("_step", "1")], step=1),
        history_record([(["h", "_type"], '"histogram"'), ("a", "2"), ("_step", "2")], step=2),
        history_record([("a", "3"), ("_step", "3")], step=3),
    ]
    decoded = fp.decode_records(*spans(payloads), min_active=1)
    assert decoded.slow_records.tolist() == [1]
    slow = fp.HistoryBatch.from_rows([(1, [b"h", b"a", b"_step"], [b"{}", b"2", b"2"], 2)])
    merged = fp.merge_history(decoded.history, slow)
    assert merged.records.tolist() == [0, 1, 2] and merged.row_counts.tolist() == [2, 3, 2]
    assert merged.keys.to_list() == ["a", "_step", "h", "a", "_step", "a", "_step"]
    assert merged.texts.to_list() == ["1", "1", "{}", "2", "2", "3", "3"]
    assert merged.step_nums.tolist() == [1, 2, 3] and merged.names.n_unique() == len(merged.names) == 3


def test_the_threshold_counts_history_and_summary_bytes_only() -> None:
    """A log of many records but few history/summary bytes stays on protobuf: numpy's per-call
    cost would make a small run slower."""
    others = [wandb_pb.Record(stats=wandb_pb.StatsRecord(item=[wandb_pb.StatsItem(key="gpu", value_json="1" * 5000)])).SerializeToString()] * 300
    history = history_record([("a", "1")], step=1)
    payloads = others + [history] * 10
    assert fp.plain_record_bytes(*spans(payloads)) == 10 * wandb_pb.Record.FromString(history).history.ByteSize()
    decoded: list[int] = []

    class Counting(WandbLogReader):
        def _decode(self, payload: bytes | memoryview, offset: int) -> None:
            decoded.append(offset)
            super()._decode(payload, offset)

    reader = Counting("memory")
    reader.feed(log_bytes(payloads))  # 1.5 MB of records
    assert len(decoded) == 310 and reader.result().history["value"].to_list() == [1.0]


names = st.one_of(
    st.sampled_from(["_step", "_runtime", "_timestamp", "loss", "a/b", "x y", "損失", "_wandb", "n"]),
    st.text(min_size=0, max_size=150),  # empty names, long names (2-byte lengths), any characters
)
json_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: f"{v!r}".replace("inf", "Infinity").replace("nan", "NaN")),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(['"3"', "true", "null", '{"_type": "histogram", "bins": [1, 2]}', "[1, 2]", "1e400", "-0.0", "", "not json"]),
    st.text(max_size=300).map(lambda t: '"' + t.replace("\\", "").replace('"', "") + '"'),  # long values: 2-byte lengths
)
items = st.lists(st.tuples(st.one_of(names, st.lists(names, min_size=1, max_size=3)), json_values), max_size=12)


@st.composite
def generated_records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["history", "history", "summary", "summary", "config", "other"]))
    if kind == "history":
        return history_record(draw(items), step=draw(st.one_of(st.none(), st.integers(0, 2**40))))
    if kind == "summary":
        removes = draw(st.lists(names, max_size=2)) if draw(st.booleans()) else []
        return summary_record(draw(items), removes=removes)
    if kind == "config":
        record = wandb_pb.Record()
        for name, value in draw(items):
            record.config.update.add(value_json=value).nested_key.extend(name if isinstance(name, list) else [name])
        return record.SerializeToString()
    return wandb_pb.Record(stats=wandb_pb.StatsRecord()).SerializeToString()


def test_generated_records_read_the_same(decoder: str) -> None:
    """Random history, summary (incremental, with removes), config and other records in a log:
    history, issues and the summary fold are the same with and without the fast path."""

    @examples_for(decoder, 150)
    @given(st.lists(generated_records(), min_size=1, max_size=40))
    def check(payloads: list[bytes]) -> None:
        data = log_bytes(payloads)
        assert_same_log(read_with(data, fast=True), read_with(data, fast=False))
        assert_scans_agree(payloads)

    check()


# ---------------------------------------------------------------------------------------------
# Random and damaged bytes
# ---------------------------------------------------------------------------------------------


def test_random_bytes_never_raise_nor_invent(decoder: str) -> None:
    @examples_for(decoder, 300)
    @given(st.lists(st.binary(max_size=64), min_size=1, max_size=40))
    def check(payloads: list[bytes]) -> None:
        decoded = fp.decode_records(*spans(payloads), min_active=1)
        check_against_oracle(payloads, decoded)
        assert_scans_agree(payloads)

    check()


@pytest.fixture(scope="module")
def real_payloads(sdk_log: Path) -> list[bytes]:
    return [p for p, _ in framed(sdk_log)]


def test_damaged_real_records_never_raise_nor_invent(real_payloads: list[bytes], decoder: str) -> None:
    @examples_for(decoder, 150)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
        chosen = [real_payloads[i] for i in sorted(rng.sample(range(len(real_payloads)), k=min(30, len(real_payloads))))]
        damaged = []
        for payload in chosen:
            payload = bytearray(payload)
            action = rng.random()
            if payload and action < 0.3:
                payload = payload[: rng.randrange(len(payload))]  # truncated
            elif payload and action < 0.7:
                for _ in range(rng.randint(1, 3)):
                    payload[rng.randrange(len(payload))] = rng.randrange(256)  # flipped bytes
            elif action < 0.85:
                payload[rng.randrange(len(payload) + 1) : 0] = rng.randbytes(rng.randint(1, 4))  # inserted
            damaged.append(bytes(payload))
        decoded = fp.decode_records(*spans(damaged), min_active=1)
        check_against_oracle(damaged, decoded)
        assert_scans_agree(damaged)

    check()


def test_spans_must_lie_in_the_buffer() -> None:
    with pytest.raises(ValueError):
        fp.decode_records(b"abc", [0], [4])
    empty = fp.decode_records(b"", [], [])
    assert len(empty.history.records) == 0 and empty.slow_records.tolist() == []


# ---------------------------------------------------------------------------------------------
# The compiled scan: built, used, switchable, strict about its arguments
# ---------------------------------------------------------------------------------------------


class CountingScan:
    """`_wirescan` with a call count per function."""

    def __init__(self, module: Any) -> None:
        self.module, self.calls = module, collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.module, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args)

        return counted


def test_the_compiled_scan_is_built_and_decodes_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this environment the extension is built, and without `DECODER_ENV` the reader goes
    through it, framing and decoding (CI installs with a C compiler: this proves the fast path
    there). A log of several blocks, so that its framing is settled and done in bulk."""
    require_wirescan()
    data = log_bytes([history_record([(key, str(step / 7)) for key in KEYS], step=step) for step in range(2000)] + [summary_record([("a", "1")])])
    assert len(data) > 4 * BLOCK_SIZE
    counting = CountingScan(wandb_compiled._wirescan)
    monkeypatch.setattr(wandb_compiled, "_wirescan", counting)
    monkeypatch.delenv(wandb_compiled.DECODER_ENV, raising=False)
    assert wandb_compiled.compiled_scan() is counting
    log = read_with(data, fast=True)
    assert len(log.history) == 2000 * len(KEYS)
    assert {"frame", "predict_runs", "assemble", "classify", "scan", "first_appearance", "gather"} <= set(counting.calls), counting.calls
    monkeypatch.setenv(wandb_compiled.DECODER_ENV, "numpy")
    counting.calls.clear()
    assert_same_log(read_with(data, fast=True), log)
    assert not counting.calls


def test_the_decoder_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wandb_compiled, "_wirescan", None)
    for unset_or_auto in (None, "auto", "numpy"):
        if unset_or_auto is None:
            monkeypatch.delenv(wandb_compiled.DECODER_ENV, raising=False)
        else:
            monkeypatch.setenv(wandb_compiled.DECODER_ENV, unset_or_auto)
        assert wandb_compiled.compiled_scan() is None  # the numpy passes
    monkeypatch.setenv(wandb_compiled.DECODER_ENV, "c")
    with pytest.raises(ImportError, match="not built"):
        wandb_compiled.compiled_scan()
    monkeypatch.setenv(wandb_compiled.DECODER_ENV, "C++")
    with pytest.raises(ValueError, match="auto, c or numpy"):
        wandb_compiled.compiled_scan()


def test_the_compiled_functions_check_their_arguments() -> None:
    """Spans outside the buffer and arrays of mismatched lengths raise; nothing is read or
    written out of bounds (the C code trusts no size it is given)."""
    require_wirescan()
    scan = wandb_compiled._wirescan
    u8 = np.frombuffer(b"\x08\x01" * 8, dtype=np.uint8)
    starts, ends = np.asarray([0, 2], dtype=np.int64), np.asarray([2, 17], dtype=np.int64)
    kinds, payload = np.empty(2, dtype=np.int8), np.empty(2, dtype=np.int64)
    declared = np.asarray(fp.F_RECORD_DECLARED, dtype=np.uint64)
    with pytest.raises(ValueError, match="record spans"):
        scan.classify(u8, starts, ends, fp.F_RECORD_HISTORY, fp.F_RECORD_SUMMARY, declared, kinds, payload, payload.copy(), np.empty(2, dtype=bool))
    with pytest.raises(ValueError, match="differ in length"):
        scan.classify(u8, starts, ends[:1], fp.F_RECORD_HISTORY, fp.F_RECORD_SUMMARY, declared, kinds, payload, payload.copy(), np.empty(2, dtype=bool))
    ends[1] = 16
    with pytest.raises(ValueError, match="differ in length"):
        scan.scan(u8, starts, ends, 1, fp._SCAN_NUMBERS, np.empty(2, dtype=bool), np.empty(1, dtype=bool), np.empty(1, dtype=np.int64),
                  np.empty(4, dtype=np.int32), np.empty(3, dtype=np.int32), np.empty((4, 2), dtype=np.int64), np.empty(4, dtype=bool), np.empty(4, dtype=bool),
                  np.empty(5, dtype=np.int64), np.empty(16, dtype=np.uint8))
    with pytest.raises(ValueError, match="text buffer"):
        scan.scan(u8, starts, ends, 1, fp._SCAN_NUMBERS, np.empty(2, dtype=bool), np.empty(1, dtype=bool), np.empty(1, dtype=np.int64),
                  np.empty(4, dtype=np.int32), np.empty(4, dtype=np.int32), np.empty((4, 2), dtype=np.int64), np.empty(4, dtype=bool), np.empty(4, dtype=bool),
                  np.empty(5, dtype=np.int64), np.empty(1, dtype=np.uint8))
    with pytest.raises(ValueError, match="total length"):
        scan.gather(u8, starts, ends, np.empty(3, dtype=np.int64), np.empty(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="record spans"):
        scan.gather(u8, starts, ends + 1, np.empty(3, dtype=np.int64), np.empty(17, dtype=np.uint8))
    renumbered, entries = np.empty(5, dtype=np.int64), np.empty(4, dtype=np.int64)
    assert scan.first_appearance(np.asarray([3, 1, 3, 0, 1], dtype=np.int32), 4, renumbered, entries) == 3
    assert renumbered.tolist() == [0, 1, 0, 2, 1] and entries[:3].tolist() == [3, 1, 0]
    with pytest.raises(ValueError, match="outside the dictionary"):
        scan.first_appearance(np.asarray([3, 1, 4, 0, 1], dtype=np.int64), 4, renumbered, entries)
    offsets, out = np.empty(3, dtype=np.int64), np.empty(16, dtype=np.uint8)
    scan.gather(u8, starts, ends, offsets, out)
    assert offsets.tolist() == [0, 2, 16] and out.tobytes() == b"\x08\x01" * 8


def test_the_compiled_scan_reports_items_beyond_its_arrays() -> None:
    """More items than the arrays hold: the count says how many, so the caller can call again."""
    require_wirescan()
    record = history_record([(f"k{i}", "1") for i in range(40)], step=1)
    u8 = np.frombuffer(record + bytes(fp.PADDING), dtype=np.uint8)
    kinds, p_start, p_end, _ = fp._top_level_c(u8, np.asarray([0]), np.asarray([len(record)]))
    assert kinds.tolist() == [fp.KIND_HISTORY]
    for capacity in (0, 7, 40):
        count, names = wandb_compiled._wirescan.scan(
            u8, p_start, p_end, 1, fp._SCAN_NUMBERS, np.empty(1, dtype=bool), np.empty(1, dtype=bool), np.empty(1, dtype=np.int64),
            np.empty(capacity, dtype=np.int32), np.empty(capacity, dtype=np.int32), np.empty((capacity, 2), dtype=np.int64),
            np.empty(capacity, dtype=bool), np.empty(capacity, dtype=bool), np.empty(capacity + 1, dtype=np.int64), np.empty(len(record), dtype=np.uint8),
        )
        assert count == 40
    assert len(np.frombuffer(names, dtype=np.int64)) == 2 * 40  # the last call held them all
    ok, has_step, step, item_msg, item_ok, codes, dictionary, *_, texts = fp._scan_messages_c(u8, p_start, p_end, 1)
    assert ok.tolist() == [True] and has_step.tolist() == [True] and step.tolist() == [1]
    assert codes.tolist() == list(range(40)) and dictionary.to_pylist() == [f"k{i}".encode() for i in range(40)]
    assert texts.to_pylist() == [b"1"] * 40


def assert_framing_agrees(raw: bytes) -> None:
    """The compiled chunk walk and CRC prediction give what the numpy ones give, for both block
    layouts, from the header and from a later offset, with the stretch ending anywhere."""
    data = np.zeros(len(raw) + fp.PADDING, dtype=np.uint8)
    data[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    rng = random.Random(len(raw))
    for origin in framing.BLOCK_ORIGIN.values():
        for pos0, end in ((len(LOG_HEADER), len(raw)), (len(LOG_HEADER), rng.randint(0, len(raw))), (min(len(raw), BLOCK_SIZE + 5), len(raw))):
            if pos0 + 7 > end:
                continue
            c = wandb_log._clean_chunks_c(wandb_compiled._wirescan, data, 0, pos0, end, origin)
            reference = wandb_log._clean_chunks(data, 0, pos0, end, origin)
            if c is None or reference is None:
                assert c is None and (reference is None or not len(reference[0])), (origin, pos0, end)
                continue
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(c, reference, strict=True)), (origin, pos0, end)
            at, length, _, crc = reference
            first, run_end, predicted = (np.empty(len(at), dtype=d) for d in (np.int64, np.int64, np.uint32))
            runs = wandb_compiled._wirescan.predict_runs(at, length, crc, origin, BLOCK_SIZE, *framing._zero_byte_tables(), first, run_end, predicted)
            expected = framing._predicted_runs(at, length, crc, origin)
            for mine, theirs in zip((first[:runs], run_end[:runs], predicted[:runs]), expected, strict=True):
                assert np.array_equal(mine, theirs), (origin, pos0, end)
            mismatch = {scan: first_crc_mismatch_with(scan, memoryview(data), *reference, origin) for scan in ("c", "numpy")}
            assert mismatch["c"] == mismatch["numpy"], (origin, pos0, end)


def first_crc_mismatch_with(scan: str, view: memoryview, *chunks_and_origin: Any) -> int | None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(wandb_compiled.DECODER_ENV, scan)
        return framing.first_crc_mismatch(view, 0, *chunks_and_origin)


@pytest.mark.corpora
def test_the_compiled_framing_agrees_on_every_corpus_log(corpora_dir: Path, decoder: str) -> None:
    if decoder != "c":
        pytest.skip("compares the compiled framing with numpy's: once is enough")
    for path in corpora_logs(corpora_dir):
        assert_framing_agrees(path.read_bytes())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_compiled_framing_agrees_on_damaged_logs(sdk_log: Path, decoder: str, data: st.DataObject) -> None:
    """Cut, bytes flipped (chunk headers, lengths, types, CRCs): the same chunks, the same runs."""
    if decoder != "c":
        pytest.skip("compares the compiled framing with numpy's: once is enough")
    raw = bytearray(sdk_log.read_bytes())
    raw = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    assert_framing_agrees(bytes(raw))


def test_zlib_ngs_crc32_is_zlibs() -> None:
    """The block runs' CRC-32 comes from zlib-ng: equal to zlib's for every length around its SIMD
    steps and any starting value, on bytes and on a memoryview slice as the framing passes them."""
    rng = random.Random(5)
    for size in [*range(0, 200), 1023, 4096, 32761, 100_003]:
        data, value = rng.randbytes(size), rng.randrange(2**32)
        assert zlib_ng.crc32(data, value) == zlib.crc32(data, value), size
        assert zlib_ng.crc32(memoryview(b"x" + data)[1:]) == zlib.crc32(data), size


def test_the_compiled_framing_checks_its_arguments() -> None:
    require_wirescan()
    scan = wandb_compiled._wirescan
    data = np.zeros(64, dtype=np.uint8)
    chunk_arrays = (np.empty(4, dtype=np.int64), np.empty(4, dtype=np.int64), np.empty(4, dtype=np.uint8), np.empty(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="outside the data"):
        scan.frame(data, 0, 7, 100, 0, BLOCK_SIZE, 4, *chunk_arrays)
    with pytest.raises(ValueError, match="differ in length"):
        scan.frame(data, 0, 7, 60, 0, BLOCK_SIZE, 4, *chunk_arrays[:3], np.empty(3, dtype=np.uint32))
    at, length, crc = np.asarray([7, 10], dtype=np.int64), np.asarray([5, 1], dtype=np.int64), np.zeros(2, dtype=np.uint32)
    runs_out = (np.empty(2, dtype=np.int64), np.empty(2, dtype=np.int64), np.empty(2, dtype=np.uint32))
    with pytest.raises(ValueError, match="overlap"):
        scan.predict_runs(at, length, crc, 0, BLOCK_SIZE, *framing._zero_byte_tables(), *runs_out)
    with pytest.raises(ValueError, match="tables"):
        scan.predict_runs(at, length, crc, 0, BLOCK_SIZE, np.zeros(4, dtype=np.uint32), np.zeros(4, dtype=np.uint32), *runs_out)
    records = np.empty((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="overlap"):
        scan.assemble(data, 0, at, length, np.asarray([2, 4], dtype=np.uint8), records)
    with pytest.raises(ValueError, match="record order"):
        scan.assemble(data, 0, np.asarray([7, 20], dtype=np.int64), length, np.asarray([4, 1], dtype=np.uint8), records)
    data[7 + 7 : 7 + 7 + 5], data[20 + 7] = np.frombuffer(b"abcde", dtype=np.uint8), ord("f")
    assert scan.assemble(data, 0, np.asarray([7, 20], dtype=np.int64), length, np.asarray([2, 4], dtype=np.uint8), records) == (2, 1)
    assert records[0].tolist() == [14, 20, 7] and data[14:20].tobytes() == b"abcdef"  # the LAST chunk's byte moved down
