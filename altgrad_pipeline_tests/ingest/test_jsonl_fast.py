"""The JSONL fast path against the reference reader: equal runs on generated logs of every line shape."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from altgrad_pipeline.ingest import jsonl_fast
from altgrad_pipeline.ingest.jsonl import LINE_SHAPE, JsonlLog
from altgrad_pipeline.ingest.model import ParsedRun

NAN, INF = float("nan"), float("inf")


def read(data: bytes, *, fast: bool, cuts: list[int] = ()) -> ParsedRun:
    log = JsonlLog(Path("never-read.jsonl"))
    log.fast = fast
    for end in [*cuts, len(data)]:
        log.feed(data[log.position.offset : end])
    return log.parsed_run("r")


def assert_same_run(data: bytes, cuts: list[int] = ()) -> ParsedRun:
    fast, reference = read(data, fast=True, cuts=cuts), read(data, fast=False, cuts=cuts)
    assert_frame_equal(fast.history, reference.history, check_exact=True)
    assert fast.issues == reference.issues
    assert fast.value_types == reference.value_types
    assert (fast.config, fast.ended, fast.exit_code) == (reference.config, reference.ended, reference.exit_code)
    return fast


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -0.0, 1e-320, 1.23e-320, 1.24e-320, -1.24e-320, 2**53 + 1, 1e308]),
)
scalars = st.one_of(
    numbers,
    numbers,
    st.text(max_size=8),
    st.sampled_from(["NaN", "a: b", 'q"uote', "\\", "null", "😀", "Infinity"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=3),
)
keys = st.sampled_from(["loss", "acc", "val/acc", "lr", "step", "_step", "iter", "global_step", "timestamp",
                        "_runtime", "time", "type", "value", "NaN", "a:b", "null", "é", "x"])
flat = st.dictionaries(keys, scalars, max_size=5)
nested = st.dictionaries(keys, st.one_of(scalars, flat, st.fixed_dictionaries({"_type": st.just("image-file")})), max_size=4)
metric_line = st.one_of(
    st.builds(lambda step, body: {"step": step, **body}, st.integers(0, 40), nested),
    st.builds(lambda step, m: {"step": step, "metrics": m}, st.integers(0, 40), nested),
    nested,
)
hydra_lines = st.sampled_from([
    {"type": "dict_config", "value": {"lr": 0.1, "model": {"depth": 2}}},
    {"type": "str", "value": "epoch done"},
    {"type": "str", "value": "Training time 12s"},
    {"data_name": "train", "agg_stats": {"loss": 1.5, "acc": NAN}},
    {"data_name": "val", "agg_stats": {"loss": INF}},
])
raw_lines = st.sampled_from(["", "   ", "{", "[]", "null", '{"step": 1, "loss": -NaN}', '{"step": 2, "loss": NaNx}',
                             '{"step": 3, "loss": 1, "loss": 2}', '{"step": 4,"acc":0.5}', '{"step" : 5, "acc" : 1}',
                             '{"step": 6.5, "acc": 1}', '{"step": null, "acc": 1}', '{"step": "7", "acc": 1}',
                             '\t{"step": 8}', '{"step": 9, "t": "\u0001"}', '{"step": 10, "e": 1e999}', "{}"])


def render(line: Any, compact: bool) -> str:
    if isinstance(line, str):
        return line
    return json.dumps(line, separators=(",", ":") if compact else None, ensure_ascii=not compact)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.one_of(metric_line, metric_line, metric_line, hydra_lines, raw_lines), max_size=40),
    compact=st.booleans(),
    cut_fractions=st.lists(st.floats(0, 1), max_size=3),
)
def test_generated_logs_read_the_same_fast_and_by_the_reference(
    lines: list[Any], compact: bool, cut_fractions: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl_fast, "MIN_BLOCK_LINES", 4)
    data = "".join(render(line, compact) + "\n" for line in lines).encode()
    assert_same_run(data, sorted(int(f * len(data)) for f in cut_fractions))


def test_long_plain_log_is_read_fast_around_its_odd_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [json.dumps({"step": s, "loss": 1 / (s + 1), "acc": NAN if s % 97 == 0 else s / 1000}) for s in range(3000)]
    rows[1500] = '{"step": 1500, "loss": '  # torn
    rows[2000] = json.dumps({"type": "str", "value": "checkpoint"})
    rows[2500] = json.dumps({"step": 2500, "loss": "diverged", "acc": INF})
    data = ("\n".join(rows) + "\n").encode()
    run = assert_same_run(data)
    assert [issue.kind for issue in run.issues] == ["malformed_line"]
    segments, lines = jsonl_fast.split_segments(data, first_line=1, shape=LINE_SHAPE)
    assert lines == len(rows)
    declined = sum(segment.data.count(b"\n") for segment in segments if segment.rows is None)
    assert declined <= 3 * jsonl_fast.MIN_BLOCK_LINES
    assert math.isinf(run.history.filter(key="acc", step=2500).item(0, "value"))


@pytest.mark.parametrize(
    "odd_line",
    [
        '{"step": 9, "msg": "a: NaN, b", "x": 1.23e-320}',  # a token inside a string, a literal sentinel
        '{"step": 9, "k: NaN, j": null, "x": 1.23e-320}',  # inside the key of a null
        '{"step": 9, "l": ["a: Infinity}"], "x": -1.24e-320}',  # inside a list's string
        '{"step": 9, "x": [NaN], "y": 1.23e-320}',  # in a list
        '{"step": 9, "x": +Infinity}',
        '{"step": 9, "x": -NaN}',
        '{"step": 9, "x": NaN , "y": - Infinity}',
    ],
)
def test_tokens_that_are_not_values_are_never_mapped(odd_line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only `: NaN,` / `: NaN}` become sentinels; one inside a string or anywhere else must not
    turn a literal equal to a sentinel into NaN or inf, nor be read as a value."""
    monkeypatch.setattr(jsonl_fast, "MIN_BLOCK_LINES", 1)
    rows = [json.dumps({"step": s, "loss": NAN if s == 3 else -INF if s == 5 else 1.0}) for s in range(8)]
    assert_same_run(("\n".join([*rows, odd_line, *rows]) + "\n").encode())


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.integers(1, 3), st.dictionaries(st.sampled_from(["b", "a", "c/d", "é"]), scalars, max_size=4)),
        max_size=30,
    ),
    back=st.booleans(),
    cut_fractions=st.lists(st.floats(0, 1), max_size=3),
)
def test_logs_with_increasing_steps_read_the_same_fast_and_by_the_reference(
    lines: list[tuple[int, dict[str, Any]]], back: bool, cut_fractions: list[float]
) -> None:
    """The shape the fast path reads without `keep_last_writes`' checks (every line fast, steps
    increasing across feeds), and the same log with a line going back a step at its end."""
    steps = itertools.accumulate(gap for gap, _ in lines)
    rows = [{"step": step, **body} for step, (_, body) in zip(steps, lines, strict=True)]
    if back and rows:
        rows.append({"step": rows[-1]["step"] - 1, "a": 1.0})
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    assert_same_run(data, sorted(int(f * len(data)) for f in cut_fractions))


def test_a_plain_increasing_log_is_known_in_order_until_a_step_goes_back() -> None:
    data = "".join(json.dumps({"step": s, "b": s, "a": NAN if s % 7 == 0 else -s}) + "\n" for s in range(300)).encode()
    log = JsonlLog(Path("never-read.jsonl"))
    log.feed(data[: len(data) // 2 + 5])
    log.feed(data[log.position.offset :])
    assert log._in_order
    log.feed(b'{"step": 299, "a": 1}\n')
    assert not log._in_order
    run = assert_same_run(data + b'{"step": 299, "a": 1}\n', [len(data) // 3])
    assert [issue.kind for issue in run.issues] == ["duplicate_step"]
