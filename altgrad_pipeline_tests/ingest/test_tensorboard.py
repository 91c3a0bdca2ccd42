"""TensorBoard reader against files written by TensorBoard's own writer, with EventAccumulator
(full loading, no sampling) as the independent reference."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import crc32c
import numpy as np
import polars as pl
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from altgrad_pipeline.ingest.tensorboard import TensorBoardSource
from altgrad_pipeline.ingest.tensorboard import events as event_files
from altgrad_pipeline.ingest.tensorboard.events import DECODE_SLACK, decode_simple_value_events, tags_at
from altgrad_pipeline.ingest.tensorboard.framing import HEADER_BYTES, masked_crc, simple_value_crcs

SPECIAL = [math.nan, math.inf, -math.inf]


def scalar_event(tag: str, step: int, value: float, wall: float) -> event_pb2.Event:
    return event_pb2.Event(
        wall_time=wall, step=step, summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
    )


def tensor_event(tag: str, step: int, value: float, wall: float, *, double: bool, metadata: bool, content: bool):
    dtype = types_pb2.DT_DOUBLE if double else types_pb2.DT_FLOAT
    tensor = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto())
    if content:
        tensor.tensor_content = struct.pack("<d" if double else "<f", value)
    elif double:
        tensor.double_val.append(value)
    else:
        tensor.float_val.append(value)
    summary_value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if metadata:
        summary_value.metadata.plugin_data.plugin_name = "scalars"
    return event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=[summary_value]))


def write(folder: Path, events: list[event_pb2.Event]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(folder), max_queue_size=len(events) + 10, flush_secs=1000)
    for event in events:
        writer.add_event(event)
    writer.close()
    return next(folder.glob("events.out.tfevents.*"))


def read_one(root: Path):
    source = TensorBoardSource(root)
    locators = source.discover()
    return source, locators, [source.read(loc) for loc in locators]


def reference(folder: Path) -> dict[tuple[str, int], float]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    points = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        for e in acc.Tensors(tag):
            points[(tag, e.step)] = float(np.asarray(e.tensor_proto.double_val or e.tensor_proto.float_val or
                                                     np.frombuffer(e.tensor_proto.tensor_content,
                                                                   "<f8" if e.tensor_proto.dtype == types_pb2.DT_DOUBLE else "<f4"))[0])  # fmt: skip
    return points


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_every_scalar_arrives_as_event_accumulator_sees_it(tmp_path: Path) -> None:
    events = []
    for step in range(300):
        value = SPECIAL[step % 3] if step % 50 == 7 else step * 0.25
        events.append(scalar_event("loss", step, value, 1000.0 + step))
        events.append(scalar_event("grad_norm_l2/layers.0.weight", step, -value, 1000.0 + step))
        events.append(tensor_event("f32_tensor", step, value, 1000.0 + step, double=False, metadata=step == 0, content=step % 2 == 0))
        events.append(tensor_event("f64_tensor", step, 1e-300 * step if step % 50 != 7 else value, 1000.0 + step,
                                   double=True, metadata=step == 0, content=step % 2 == 1))  # fmt: skip
    folder = tmp_path / "runs" / "a"
    write(folder, events)

    _, locators, [run] = read_one(tmp_path / "runs")

    assert len(locators) == 1 and run.source == "tensorboard" and run.ended is False
    expected = reference(folder)
    got = {(k, s): v for k, s, v in run.history.select("key", "step", "value").iter_rows()}
    assert set(got) == set(expected) and len(got) == 1200
    assert all(same(got[p], expected[p]) for p in expected)
    assert got[("loss", 7)] == math.inf and math.isnan(got[("loss", 57)]) and got[("loss", 107)] == -math.inf
    assert got[("f64_tensor", 3)] == 3e-300  # float64 kept, not narrowed
    row = run.history.filter(key="loss", step=10).row(0, named=True)
    assert row["timestamp"] == 1010.0 and row["runtime"] == pytest.approx(1010.0 - run.started_at.timestamp())
    assert run.issues == []


def test_restart_start_event_supersedes_later_points(tmp_path: Path) -> None:
    events = [scalar_event("loss", s, float(s), 100.0 + s) for s in range(10)]
    events.append(event_pb2.Event(wall_time=200.0, step=6, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    events += [scalar_event("loss", s, 100.0 + s, 200.0 + s) for s in range(6, 12)]
    write(tmp_path / "r", events)

    _, _, [run] = read_one(tmp_path)

    values = dict(run.history.select("step", "value").iter_rows())
    assert values == {**{s: float(s) for s in range(6)}, **{s: 100.0 + s for s in range(6, 12)}}
    restart = [i for i in run.issues if i.kind == "restart_superseded"]
    assert len(restart) == 1 and restart[0].lost == "4 values at steps 6..9"


def test_hparams_and_non_scalars(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import summary_v2

    hp = summary_v2.hparams_pb({"fp8_format": "E5M2", "lr": 0.001, "amp": True}, start_time_secs=1)
    image = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="samples", image=summary_pb2.Summary.Image(height=1))])
    events = [event_pb2.Event(wall_time=1.0, step=0, summary=hp), event_pb2.Event(wall_time=1.0, step=0, summary=image)]
    events.append(scalar_event("loss", 0, 1.5, 2.0))
    write(tmp_path / "r", events)

    _, _, [run] = read_one(tmp_path)

    assert run.config == {"fp8_format": "E5M2", "lr": 0.001, "amp": True}
    assert run.value_types == {"samples": "image"}
    assert run.history.select("key", "value").rows() == [("loss", 1.5)]


def test_nested_directories_are_separate_runs(tmp_path: Path) -> None:
    write(tmp_path / "exp", [scalar_event("a", 0, 1.0, 1.0)])
    write(tmp_path / "exp" / "validation", [scalar_event("b", 0, 2.0, 1.0)])

    _, locators, runs = read_one(tmp_path)

    assert [r.history.get_column("key").to_list() for r in runs] == [["a"], ["b"]]
    assert len({r.run_id for r in runs}) == 2


def test_torn_record_is_read_once_complete(tmp_path: Path) -> None:
    path = write(tmp_path / "r", [scalar_event("loss", s, float(s), 1.0 + s) for s in range(20)])
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])
    source = TensorBoardSource(tmp_path)
    [locator] = source.discover()

    first = source.read(locator)
    assert first.history.height == 19
    assert [i.kind for i in first.issues] == ["torn_record"]

    path.write_bytes(whole)
    second = source.read(source.discover()[0])
    assert second.history.get_column("value").to_list() == [float(s) for s in range(20)]
    assert second.issues == []


def test_replaced_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = write(tmp_path / "r", [scalar_event("loss", s, float(s), 1.0 + s) for s in range(20)])
    source = TensorBoardSource(tmp_path)
    first = source.read(source.discover()[0])
    replacement = write(tmp_path / "new", [scalar_event("acc", s, -float(s), 5.0 + s) for s in range(5)])
    replacement.replace(path)

    second = source.read(source.discover()[0])

    assert first.history.height == 20
    assert second.history.select("key", "step", "value").rows() == [("acc", s, -float(s)) for s in range(5)]
    assert second.issues == []


def test_crc_mismatch_skips_only_that_record(tmp_path: Path) -> None:
    path = write(tmp_path / "r", [scalar_event("loss", s, float(s), 1.0 + s) for s in range(10)])
    data = bytearray(path.read_bytes())
    # Flip a byte inside the data of the 4th record (records: file_version, then steps 0..9).
    offset = 0
    for _ in range(4):
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 16 + length
    data[offset + 12 + 5] ^= 0xFF
    path.write_bytes(bytes(data))

    _, _, [run] = read_one(tmp_path)

    assert run.history.get_column("step").to_list() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [(i.kind, i.lost) for i in run.issues] == [("crc_mismatch", "1 events (their values, if any)")]


def test_unknown_file_version_is_reported_and_read(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    records = [event_pb2.Event(wall_time=1.0, file_version="brain.Event:9"), scalar_event("loss", 1, 2.0, 2.0)]
    with open(folder / "events.out.tfevents.1.host", "wb") as handle:
        for event in records:
            payload = event.SerializeToString()
            header = struct.pack("<Q", len(payload))
            handle.write(header + struct.pack("<I", masked_crc(crc32c.crc32c(header))) + payload
                         + struct.pack("<I", masked_crc(crc32c.crc32c(payload))))  # fmt: skip

    _, _, [run] = read_one(tmp_path)

    assert run.history.select("key", "step", "value").rows() == [("loss", 1, 2.0)]
    assert [i.kind for i in run.issues] == ["unknown_file_version"]


def record_offsets(data: bytes) -> list[int]:
    """Start of every TFRecord in an event file's bytes."""
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 16 + length
    return offsets


def mixed_events() -> list[event_pb2.Event]:
    """simple_value events with steps of 1 to 9 varint bytes (and none: step 0), tensors, a
    START, and an image larger than the smallest decode buffers used below."""
    events = [scalar_event(f"tag/{i % 7}" * (1 + i % 3), (i * 2654435761) % (1 << (7 * (1 + i % 9))), i / 7, 10.0 + i)
              for i in range(400)]  # fmt: skip
    events.insert(50, tensor_event("t64", 3, 1e-300, 1.0, double=True, metadata=True, content=False))
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    events.insert(120, event_pb2.Event(wall_time=5.0, step=0, session_log=start))
    image = summary_pb2.Summary.Image(height=1, encoded_image_string=bytes(range(256)) * 8)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="img", image=image)])
    events.insert(200, event_pb2.Event(wall_time=6.0, step=1, summary=summary))
    return events


@pytest.mark.parametrize("chunk_bytes", [40, 97, 1000, 4096])
def test_records_across_decode_chunks_read_as_in_one_chunk(tmp_path: Path, monkeypatch, chunk_bytes: int) -> None:
    write(tmp_path / "r", mixed_events())
    _, _, [whole] = read_one(tmp_path)

    monkeypatch.setattr(event_files, "CHUNK_BYTES", chunk_bytes)
    _, _, [chunked] = read_one(tmp_path)

    assert whole.history.height > 250 and whole.value_types == {"img": "image"}
    assert chunked.history.equals(whole.history)
    assert chunked.issues == whole.issues and [i.kind for i in whole.issues] == ["restart_superseded"]


def test_vectorised_crc_is_crc32c_of_every_record() -> None:
    steps = [0, 1, 127, 128, 16383, 16384, 2**35 + 3, 2**62 + 11]
    values = [0.0, -1.5, math.inf, math.nan, 3.4e38, 1e-45]
    payloads = [
        scalar_event(tag, step, value, wall).SerializeToString()
        for tag in ("a", "loss", "grad_norm_l2/model.layers.11.mlp.weight", "x" * 100)
        for step in steps
        for value, wall in zip(values, [1e-3, 1.7e9, -3.0, 1e300, 2.5, 7.0], strict=True)
    ]
    framed = b"".join(struct.pack("<Q", len(p)) + b"\0" * 4 + p + b"\0" * 4 for p in payloads)
    padded = np.frombuffer(framed + bytes(DECODE_SLACK), dtype=np.uint8)
    starts = np.array(record_offsets(framed), dtype=np.int64) + HEADER_BYTES
    lengths = np.array([len(p) for p in payloads], dtype=np.int64)
    fast = decode_simple_value_events(padded, starts, lengths)
    codes, _ = tags_at(padded, fast.tag_start, fast.tag_end)

    crcs = simple_value_crcs(padded, starts, lengths, fast.step_bytes, codes)

    assert fast.ok.all()
    assert crcs.tolist() == [crc32c.crc32c(p) for p in payloads]


def test_crc_mismatch_in_any_byte_of_a_record_skips_only_that_record(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path / "r", [scalar_event("loss", 1000 + s, s / 3, 1.0 + s) for s in range(60)])
    whole = path.read_bytes()
    offsets = record_offsets(whole)
    target = offsets[31]  # step 1030, in the middle of a 1,000-byte decode chunk
    (length,) = struct.unpack_from("<Q", whole, target)
    monkeypatch.setattr(event_files, "CHUNK_BYTES", 1000)

    for position in range(target + HEADER_BYTES, target + HEADER_BYTES + length + 4):
        data = bytearray(whole)
        data[position] ^= 0x5A
        path.write_bytes(bytes(data))

        _, _, [run] = read_one(tmp_path)

        assert run.history.get_column("step").to_list() == [1000 + s for s in range(60) if s != 30], position
        assert [(i.kind, i.position) for i in run.issues] == [("crc_mismatch", "record 31")], position


def test_corrupt_record_length_stops_the_file_and_is_not_waited_for(tmp_path: Path) -> None:
    path = write(tmp_path / "r", [scalar_event("loss", s, float(s), 1.0 + s) for s in range(20)])
    whole = path.read_bytes()
    offsets = record_offsets(whole)
    for record, length in ((6, 50), (20, 1 << 40)):  # mid-file; the last record, pointing past the end
        data = bytearray(whole)
        data[offsets[record] : offsets[record] + 8] = struct.pack("<Q", length)
        path.write_bytes(bytes(data))

        _, _, [run] = read_one(tmp_path)

        assert run.history.get_column("step").to_list() == list(range(record - 1))
        assert [(i.kind, i.position) for i in run.issues] == [("corrupt_record_length", f"record {record}")]


CORPUS_RUN_DIRS = {
    "AkshayKulkarni3467__NAF_DQN": 1,
    "TheCodeheadMT__TensorBoard-Tutorial": 10,  # 9 training dirs + the hparams experiment root
    "BozzoloLu__GAN": 5,
    "JustinFletcher__tensorflow-zoo": 2,
    "wanghoppe__tempo": 1,
    "PhilippMarquardt__VisualDL": 1,
}


@pytest.mark.corpora
@pytest.mark.parametrize("corpus", sorted(CORPUS_RUN_DIRS))
def test_every_corpus_run_dir_is_read(corpora_dir: Path, corpus: str) -> None:
    source = TensorBoardSource(corpora_dir / corpus)
    locators = source.discover()
    runs = [source.read(loc) for loc in locators]

    assert len(runs) == CORPUS_RUN_DIRS[corpus]
    for run in runs:
        expected = reference(Path(run.location))
        got = {(k, s): v for k, s, v in run.history.select("key", "step", "value").iter_rows()}
        # Every (tag, step) TensorBoard shows is there, with TensorBoard's last value for it.
        assert set(got) == set(expected)
        assert all(same(got[p], expected[p]) for p in expected)
    if corpus == "wanghoppe__tempo":
        # File 2 ends mid-record (the writer was killed); file 1's steps 8457..8557 were orphaned.
        assert [i.kind for i in runs[0].issues] == ["torn_record", "restart_superseded", "duplicate_step"]
        assert next(i for i in runs[0].issues if i.kind == "restart_superseded").lost == "111 values at steps 8457..8557"
    if corpus == "AkshayKulkarni3467__NAF_DQN":
        assert runs[0].history.filter(key="episode/Return").height == 21780
        assert "gamma" in runs[0].config or runs[0].config


def text_event(tag: str, step: int, strings: list[str], wall: float, shape: list[int]) -> event_pb2.Event:
    """A text summary as `tf.summary.text` / `SummaryWriter.add_text` write it."""
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in shape]),
        string_val=[s.encode() for s in strings],
    )
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    value.metadata.plugin_data.plugin_name = "text"
    return event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=[value]))


def test_text_summaries_are_kept_as_text_at_their_step(tmp_path: Path) -> None:
    events = []
    for step in range(4):
        events.append(scalar_event("loss", step, 1.0 / 2**step, 10.0 + step))
        events.append(text_event("sample", step, [f"step {step}: «ünï» | *md*"], 10.0 + step, []))
    events.append(text_event("table", 2, ["a", "b", "c", "d"], 12.0, [2, 2]))
    events.append(text_event("sample", 3, ["step 3: «ünï» | *md*"], 13.5, []))  # the same text again
    events.append(text_event("sample", 1, ["rewritten"], 14.0, []))
    write(tmp_path / "r", events)

    _, _, [run] = read_one(tmp_path)

    texts = {(k, s): t for k, s, t in run.history.filter(pl.col("text").is_not_null()).select("key", "step", "text").iter_rows()}
    assert texts == {
        ("sample", 0): "step 0: «ünï» | *md*",
        ("sample", 1): "rewritten",
        ("sample", 2): "step 2: «ünï» | *md*",
        ("sample", 3): "step 3: «ünï» | *md*",
        ("table", 2): '[["a", "b"], ["c", "d"]]',
    }
    assert run.history.filter(pl.col("text").is_not_null())["value"].null_count() == 5
    assert run.history.filter(key="loss")["value"].to_list() == [1.0, 0.5, 0.25, 0.125]
    assert run.history.filter(key="loss")["text"].null_count() == 4
    assert "sample" not in run.value_types and "table" not in run.value_types
    (rewrite,) = [i for i in run.issues if i.kind == "duplicate_step"]
    assert "1 values" in rewrite.reason and "'sample' at step 1" in rewrite.reason
