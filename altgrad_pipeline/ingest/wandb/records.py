"""What a `.wandb` record holds and how its items are read: a columnar upb view of `Record`
(`record_view`), item names (`key` up to SDK 0.16, `nested_key` from 0.19), JSON values, config
and summary folds (`FlatItems`, `build_tree`). Shared by the protobuf reader (`log.py`) and the
vectorised decoder (`fastpath.py`)."""

from __future__ import annotations

import datetime as dt
import json
import re
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from wandb.proto import wandb_internal_pb2 as wandb_pb

#: Per-row bookkeeping the SDK adds to every history row: columns of the row, not metrics.
STEP_KEY, RUNTIME_KEY, TIMESTAMP_KEY = "_step", "_runtime", "_timestamp"
BOOKKEEPING_KEYS = (STEP_KEY, RUNTIME_KEY, TIMESTAMP_KEY)
#: Holds host names and e-mail addresses (and, from 0.26, the whole environment).
PRIVATE_KEY = "_wandb"


@cache
def record_view() -> type:
    """A columnar view of `Record` built from wandb's own field numbers.

    A non-repeated message field that occurs several times is merged by protobuf, so declaring
    `HistoryRecord.item` as one `ItemColumns` makes upb (C) collect every item's key and value
    into flat lists in one parse: no Python work per history value. Names and values are
    declared `bytes`, not `string`: the same wire format, but no UTF-8 check and no `str` per
    value (Polars validates the whole column at once). Records this reader does not need
    (environment: PII; console output; stats) stay unparsed unknown fields.
    """
    record = wandb_pb.Record.DESCRIPTOR.fields_by_name
    history = wandb_pb.HistoryRecord.DESCRIPTOR.fields_by_name
    summary = wandb_pb.SummaryRecord.DESCRIPTOR.fields_by_name
    item = wandb_pb.HistoryItem.DESCRIPTOR.fields_by_name
    step = wandb_pb.HistoryStep.DESCRIPTOR.fields_by_name
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="altgrad_wandb_view.proto", package="altgrad_wandb_view", syntax="proto2")

    def message(name: str, *fields: tuple[str, int, int, int, str | None]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            f = msg.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                f.type_name = f".altgrad_wandb_view.{type_name}"

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message(
        "ItemColumns",
        ("key", item["key"].number, rep, F.TYPE_BYTES, None),
        ("nested_key", item["nested_key"].number, rep, F.TYPE_BYTES, None),
        ("value_json", item["value_json"].number, rep, F.TYPE_BYTES, None),
    )
    message("StepView", ("num", step["num"].number, opt, F.TYPE_INT64, None))
    message(
        "HistoryColumns",
        ("item", history["item"].number, opt, F.TYPE_MESSAGE, "ItemColumns"),
        ("step", history["step"].number, opt, F.TYPE_MESSAGE, "StepView"),
    )
    message(
        "SummaryColumns",
        ("update", summary["update"].number, opt, F.TYPE_MESSAGE, "ItemColumns"),
        ("remove", summary["remove"].number, opt, F.TYPE_MESSAGE, "ItemColumns"),
    )
    message(
        "RecordView",
        ("history", record["history"].number, opt, F.TYPE_MESSAGE, "HistoryColumns"),
        ("summary", record["summary"].number, opt, F.TYPE_MESSAGE, "SummaryColumns"),
        *((name, record[name].number, opt, F.TYPE_BYTES, None) for name in ("run", "config", "exit", "header")),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("altgrad_wandb_view.RecordView"))


def item_path(item: Any) -> tuple[str, ...]:
    """`key` up to 0.16, a one-element `nested_key` from 0.19 on ('/' stays part of the name)."""
    return tuple(item.nested_key) if len(item.nested_key) else (item.key,)


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[path[-1]] = value


def utf8_text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def loads_json(text: bytes | str) -> Any:
    """JSON with NaN/Infinity (Python's json accepts them); unreadable text stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return utf8_text(text)


#: Folded config/summary items: a one-element name as the raw bytes the log holds (the common
#: case, folded without decoding), a longer path as a tuple of str; the value is JSON text.
FlatItems = dict[bytes | tuple[str, ...], bytes | str]


def _parts(path: bytes | tuple[str, ...]) -> tuple[str, ...]:
    return (utf8_text(path),) if isinstance(path, bytes) else path


#: JSON text that can only be one scalar or be invalid (no string, array, object or comma).
_SCALAR_JSON = re.compile(rb"[0-9A-Za-z.+\- \t\r\n]*")


def _loads_all(texts: list[bytes | str]) -> list[Any]:
    """`_loads` of every text. When each can only be a scalar, they are parsed as one JSON array
    (one call, not one per metric); its length confirms each text was exactly one value."""
    if all(isinstance(text, bytes) and _SCALAR_JSON.fullmatch(text) for text in texts):
        try:
            values = json.loads(b"[" + b",".join(texts) + b"]")  # type: ignore[arg-type]
        except ValueError:
            values = None
        if values is not None and len(values) == len(texts):
            return values
    return [loads_json(text) for text in texts]


def build_tree(flat: FlatItems) -> dict[str, Any]:
    """Folded `{path: value_json}` to a nested dict, `_wandb` dropped."""
    entries = [(parts, text) for parts, text in ((_parts(path), text) for path, text in flat.items()) if parts[0] != PRIVATE_KEY]
    tree: dict[str, Any] = {}
    for (parts, _), value in zip(entries, _loads_all([text for _, text in entries]), strict=True):
        set_path(tree, parts, value)
    return tree


def remove_path(flat: FlatItems, path: tuple[str, ...]) -> None:
    for existing in [p for p in flat if _parts(p)[: len(path)] == path]:
        del flat[existing]


def timestamp_utc(ts: Any) -> dt.datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, dt.UTC)


def single_names(columns: Any) -> Any:
    """The item-name container when every item has exactly one name and one value (the common
    case: `key` up to 0.16, a one-element `nested_key` from 0.19), else None."""
    n_values = len(columns.value_json)
    if not len(columns.nested_key) and len(columns.key) == n_values:
        return columns.key
    if not len(columns.key) and len(columns.nested_key) == n_values:
        return columns.nested_key
    return None
