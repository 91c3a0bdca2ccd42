"""The vectorised history/summary decoder against the reader's protobuf path, record by record and
value by value: SDK-written runs (floats with NaN/+-inf, ints, strings, a numeric-looking string,
a histogram; keys with '/', spaces, dots, unicode), every record of the real corpora (SDK 0.13 to
0.26: `key` and one-element `nested_key` layouts), and random or damaged bytes (never raise; what
is decoded is what the protobuf path decodes, the rest is handed back)."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from wandb.proto import wandb_internal_pb2 as wandb_pb

from altgrad_pipeline.ingest import wandb_fastpath as fp
from altgrad_pipeline.ingest.wandb_log import WandbLog, WandbLogReader, read_wandb_log

KEYS = ("train/loss", "val loss", "grad.norm", "lr", "layer.0/attn.q", "損失/学習", "émoji 🚀/x")


# ---------------------------------------------------------------------------------------------
# Helpers: framing with the reader's own code, the reader as a per-record oracle, and the fast
# path wired into the reader the way the integration patch does it.
# ---------------------------------------------------------------------------------------------


def framed(path: Path) -> list[tuple[bytes, int]]:
    """Every complete record payload (chunks reassembled) and its file offset, framed by
    `WandbLogReader` itself."""
    records: list[tuple[bytes, int]] = []

    class Collect(WandbLogReader):
        def _decode(self, payload: bytes | memoryview, offset: int) -> None:
            records.append((bytes(payload), offset))

        def _flush_batch(self) -> None:  # once the reader batches records for the fast path
            records.extend((bytes(payload), offset) for payload, offset in self._batch)
            self._batch = []

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


def fast_read(path: Path, **decode: int) -> tuple[WandbLog, fp.DecodedRecords]:
    """`read_wandb_log` with the fast path: frame as now, decode the batch with
    `decode_records`, every slow record through the reader's own `_decode`, in record order."""

    class FastReader(WandbLogReader):
        def __init__(self, location: str) -> None:
            super().__init__(location)
            self._records: list[tuple[bytes, int]] = []
            self._merged: fp.HistoryBatch | None = None

        def _decode(self, payload: bytes | memoryview, offset: int) -> None:
            self._records.append((bytes(payload), offset))

        def _flush_batch(self) -> None:  # once the reader batches records for the fast path
            self._records.extend((bytes(payload), offset) for payload, offset in self._batch)
            self._batch = []

        def decode_batch(self) -> fp.DecodedRecords:
            self._batch = self._records
            buffer, starts, ends = spans([p for p, _ in self._batch])
            decoded = fp.decode_records(buffer, starts, ends, **decode)
            slow_rows: list[tuple[int, list[bytes], list[bytes], int | None]] = []

            def slow(record: int) -> None:
                rows, items = len(self._row_counts), len(self._keys)
                WandbLogReader._decode(self, *self._batch[record])
                if len(self._row_counts) > rows:
                    slow_rows.append((record, self._keys[items:], self._texts[items:], self._row_step_nums[-1]))

            decoded.replay(self._summary, slow)
            self._merged = fp.merge_history(decoded.history, fp.HistoryBatch.from_rows(slow_rows))
            self._row_counts = self._merged.row_counts.tolist()
            return decoded

        def _history_frame(self, run_id: str) -> Any:
            assert self._merged is not None
            return fp.history_frame(self._merged, run_id=run_id, location=self.location, source=self.source)

    reader = FastReader(str(path))
    reader.feed_file(path)
    decoded = reader.decode_batch()
    return reader.result(), decoded


def assert_same_log(fast: WandbLog, reference: WandbLog) -> None:
    assert_frame_equal(fast.history, reference.history)
    for name in ("summary", "config", "value_types", "issues", "run_id", "sdk_version", "exit_code"):
        assert getattr(fast, name) == getattr(reference, name), name
    if hasattr(reference, "media"):
        assert_frame_equal(fast.media, reference.media)


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
        for name, value in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_CONFIG_DIR": str(base / "config"),
            "WANDB_CACHE_DIR": str(base / "cache"),
        }.items():
            env.setenv(name, value)
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
    fast, decoded = fast_read(sdk_log)
    reference = read_wandb_log(sdk_log)
    assert_same_log(fast, reference)
    assert reference.summary["best/val loss"] == 0.125 and len(fast.history) > 0


def corpora_logs(corpora_dir: Path) -> list[Path]:
    logs = sorted(corpora_dir.rglob("run-*.wandb"))
    if not logs:
        pytest.skip("no .wandb files in the corpora")
    return logs


@pytest.mark.corpora
def test_corpora_record_by_record_and_end_to_end(corpora_dir: Path) -> None:
    versions: dict[str, int] = {}
    layouts = {"key": 0, "nested_key": 0}
    for path in corpora_logs(corpora_dir):
        records = framed(path)
        payloads = [p for p, _ in records]
        decoded = fp.decode_records(*spans(payloads), min_active=1)  # as much fast path as possible
        check_against_oracle(payloads, decoded)
        fast, _ = fast_read(path)
        reference = read_wandb_log(path)
        assert_same_log(fast, reference)
        versions[reference.sdk_version or "?"] = versions.get(reference.sdk_version or "?", 0) + len(decoded.history.records)
        if len(decoded.history.records):
            first = wandb_pb.Record.FromString(payloads[int(decoded.history.records[0])]).history.item[0]
            layouts["nested_key" if len(first.nested_key) else "key"] += 1
    # Rows were decoded by the fast path from both key layouts and from old and new writers.
    assert layouts["key"] > 0 and layouts["nested_key"] > 0
    assert any(v.startswith("0.13") for v in versions) and any(v.startswith("0.26") for v in versions)
    assert sum(versions.values()) > 40_000


# ---------------------------------------------------------------------------------------------
# Contract details
# ---------------------------------------------------------------------------------------------


def history_record(items: list[tuple[str | list[str], str]], step: int | None = None, **extra: Any) -> bytes:
    record = wandb_pb.Record()
    record.history.SetInParent()
    for name, value in items:
        item = record.history.item.add(value_json=value)
        if isinstance(name, list):
            item.nested_key.extend(name)
        else:
            item.key = name
    if step is not None:
        record.history.step.num = step
    for name, value in extra.items():
        setattr(record, name, value)
    return record.SerializeToString()


def summary_record(updates: list[tuple[str | list[str], str]], removes: list[str] = ()) -> bytes:
    record = wandb_pb.Record()
    for name, value in updates:
        item = record.summary.update.add(value_json=value)
        if isinstance(name, list):
            item.nested_key.extend(name)
        else:
            item.key = name
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
    ]
    decoded = fp.decode_records(*spans(payloads), min_active=1)
    check_against_oracle(payloads, decoded)
    batch = decoded.history
    assert batch.records.tolist() == [0, 1, 2, 3, 4]
    assert batch.steps.to_list() == [5, 6, 0, None, None]
    assert batch.has_step_num.tolist() == [True, False, True, False, False]
    assert batch.runtimes.to_list() == [1.5, None, None, None, None]
    assert batch.timestamps.to_list() == [1.7e9, None, None, None, None]


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


def test_small_batches_of_wide_records_are_left_to_protobuf() -> None:
    wide = history_record([(f"k{i}", str(i)) for i in range(200)], step=1)
    decoded = fp.decode_records(*spans([wide] * 3))
    assert decoded.slow_records.tolist() == [0, 1, 2]
    decoded = fp.decode_records(*spans([wide] * 3), min_active=1)
    assert decoded.history.records.tolist() == [0, 1, 2]
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
    assert merged.steps.to_list() == [1, 2, 3] and merged.slow_records.tolist() == []


# ---------------------------------------------------------------------------------------------
# Random and damaged bytes
# ---------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=40))
def test_random_bytes_never_raise_nor_invent(payloads: list[bytes]) -> None:
    decoded = fp.decode_records(*spans(payloads), min_active=1)
    check_against_oracle(payloads, decoded)


@pytest.fixture(scope="module")
def real_payloads(sdk_log: Path) -> list[bytes]:
    return [p for p, _ in framed(sdk_log)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_real_records_never_raise_nor_invent(real_payloads: list[bytes], data: st.DataObject) -> None:
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


def test_spans_must_lie_in_the_buffer() -> None:
    with pytest.raises(ValueError):
        fp.decode_records(b"abc", [0], [4])
    empty = fp.decode_records(b"", [], [])
    assert len(empty.history.records) == 0 and empty.slow_records.tolist() == []
