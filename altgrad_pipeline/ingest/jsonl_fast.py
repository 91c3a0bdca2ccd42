"""Vectorised JSON-lines reading: Polars' NDJSON parser on blocks of plain metric lines.

Why it exists. `json.loads` per line and flattening in Python make several Python objects per
value (about 0.5 M values per CPU-second); Polars parses a block of lines straight into columns.

How. Python's `json` writes NaN and ±Infinity as bare tokens, which Polars rejects: those
standing as an object's value (`: NaN,`) are replaced by subnormal sentinel numbers and mapped
back after parsing, and counting proves that every replaced token was a value (no sentinel text
in a key or a string, as many sentinel numbers as tokens, so no literal already meant one); a
token anywhere else outside strings makes Polars fail, which declines its block. Lines become
columns, columns become the reader's long rows with numpy. Every byte scan is one numpy pass
whose result is a handful of positions (line ends, tokens); where quotes matter (a `:` or `null`
inside a string) they are located only when the counts say so.

Contract: whatever the reference reader (`parse_json_lines` + `JsonlLog._take`) could read
differently is declined, never guessed at, and the caller reads it with that reader, in line order:
  - per line, before parsing: a line that is not exactly `{...}`, or holds a control byte;
  - per block (halved until the offending lines sit in blocks of `MIN_BLOCK_LINES`): a parse
    error; a type Polars would coerce (a key holding strings and other values, integers beyond
    64 bits); keys Polars' schema sample missed or a key written twice in a line (found by counting
    `:` against parsed cells, plus `null`s); surrogate escapes; a null step; nested names that
    collide after '/'-joining; sentinel text in a key or string, strings in lists beside tokens,
    more sentinel numbers than tokens;
  - per row: typed and aggregate lines (dr_gen), a step that is not an integer, W&B media dicts.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

NAN_TOKEN, INF_TOKEN = b"NaN", b"Infinity"
#: Subnormal numbers no logger writes as such: stand-ins for NaN and ±inf while Polars parses.
NAN_SENTINEL, INF_SENTINEL = b"1.23e-320", b"1.24e-320"
_NAN_VALUE, _INF_VALUE = float(NAN_SENTINEL), float(INF_SENTINEL)
#: Below this many lines a block that cannot be read fast goes to the reference reader whole.
MIN_BLOCK_LINES = 64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_NUMBER_TYPES = (pl.Int64, pl.Float64)


@dataclass(frozen=True)
class LineShape:
    """The line conventions of the reference reader that the fast path must reproduce."""

    step_fields: tuple[str, ...]
    timestamp_fields: tuple[str, ...]
    runtime_fields: tuple[str, ...]
    container: str
    #: A line holding one of these top-level fields is typed or aggregate: read by the reference.
    declined_fields: tuple[str, ...]


@dataclass
class _Leaf:
    """One flattened column of a parsed block: `present` where the line has a value for it."""

    name: str
    key: str  # as in the JSON object
    kind: str  # number, text, bool, list or struct
    present: np.ndarray
    top_level: bool
    in_container: bool
    numbers: np.ndarray | None = None
    texts: pl.Series | None = None


@dataclass
class FastRows:
    """Rows of consecutive metric lines read by the fast path, long and in write order except
    for the step of lines without a step field, which depends on the metric lines before them."""

    lines: np.ndarray
    step: np.ndarray
    has_step: np.ndarray
    cell_row: np.ndarray
    columns: dict[str, pl.Series]
    value_types: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.lines)

    @property
    def first_line_without_step(self) -> int | None:
        missing = np.flatnonzero(~self.has_step)
        return int(self.lines[missing[0]]) if missing.size else None

    def line_steps(self, metric_index: int) -> np.ndarray:
        """The step of each line, a line without step field taking the index of its metric line."""
        return np.where(self.has_step, self.step, metric_index + np.arange(self.count, dtype=np.int64))

    def frame(self, metric_index: int, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """The rows (keys sorted within a line, none twice)."""
        step = self.line_steps(metric_index)
        return pl.DataFrame(
            {"line": self.lines[self.cell_row], "step": step[self.cell_row], **self.columns}, schema=schema
        )


@dataclass
class Segment:
    """Consecutive complete lines from `first_line` on: `rows` when read fast, else `data` (each
    line with its newline) for the reference reader."""

    first_line: int
    data: bytes = b""
    rows: FastRows | None = None


def split_segments(data: bytes, *, first_line: int, shape: LineShape) -> tuple[list[Segment], int]:
    """Read the complete lines in `data` (which ends with a newline, or is empty) as segments in
    line order; also returns how many lines there were (the scan has counted them)."""
    if not data:
        return [], 0
    reader = _BlockReader(data, first_line, shape)
    objects, eligible = reader.objects, reader.objects | (reader.lengths == 0)
    out: list[Segment] = []
    bounds = np.flatnonzero(np.diff(eligible.astype(np.int8))) + 1
    for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(objects)])), strict=True):
        if eligible[lo] and objects[lo:hi].any():
            reader.read(int(lo), int(hi), out)
        else:
            reader.decline(int(lo), int(hi), out)
    return out, len(reader.ends)


def _token_positions(data: bytes, u8: np.ndarray, token: bytes, anchor: int = 0) -> np.ndarray:
    """Start positions of `token`, found from its rarely used byte `token[anchor]` (numpy: a scan
    by Python's `bytes.count` is several times slower), after `in` (memchr) says it occurs."""
    if token[anchor : anchor + 1] not in data:
        return np.zeros(0, np.int64)
    found = np.flatnonzero(u8[anchor : len(u8) - len(token) + anchor + 1] == token[anchor])
    for i, byte in enumerate(token):
        if i != anchor:
            found = found[u8[found + i] == byte]
    return found


def _value_context(u8: np.ndarray, positions: np.ndarray, length: int, *, minus: bool) -> np.ndarray:
    """Whether each token stands where Python's `json` reads it as an object's value: after `:`
    (a space between allowed; `-` before Infinity), before `,` or `}` (after a space). Only these
    become sentinels: Polars rejects a token left anywhere else outside strings (in a list, after
    `+`, glued to other bytes), so its block is declined, and a replaced one that sat inside a
    string shows as sentinel text in a key or string (`_sentinels_all_values`)."""
    last = len(u8) - 1

    def at(index: np.ndarray) -> np.ndarray:
        return np.where((index >= 0) & (index <= last), u8[np.clip(index, 0, last)], 0)

    before = positions - 1
    if minus:
        before = before - (at(before) == ord("-"))
    before = before - (at(before) == ord(" "))
    after = positions + length
    after = after + (at(after) == ord(" "))
    return (at(before) == ord(":")) & np.isin(at(after), list(b",}"))


class _BlockReader:
    """One byte scan of the data (line ends, tokens), then blocks of lines read against it."""

    def __init__(self, data: bytes, first_line: int, shape: LineShape) -> None:
        self.data, self.first_line, self.shape = data, first_line, shape
        u8 = np.frombuffer(data, np.uint8)
        low = np.flatnonzero(u8 < 32)
        is_newline = u8[low] == 10
        self.ends = low[is_newline]
        self.starts = np.concatenate(([0], self.ends[:-1] + 1))
        self.lengths = self.ends - self.starts
        first, last = u8[np.minimum(self.starts, len(u8) - 1)], u8[self.ends - 1]
        self.objects = (self.lengths >= 2) & (first == ord("{")) & (last == ord("}"))
        self.objects[np.searchsorted(self.ends, low[~is_newline])] = False
        self.u8 = u8
        self.backslashes = np.flatnonzero(u8 == ord("\\")) if b"\\" in data else np.zeros(0, np.int64)
        self.nulls = _token_positions(data, u8, b"null", anchor=1)
        nans, infs = _token_positions(data, u8, NAN_TOKEN), _token_positions(data, u8, INF_TOKEN)
        self.nans = nans[_value_context(u8, nans, len(NAN_TOKEN), minus=False)]
        self.infs = infs[_value_context(u8, infs, len(INF_TOKEN), minus=True)]
        self.text = self._with_sentinels(every_token=len(self.nans) + len(self.infs) == len(nans) + len(infs))
        step_names = "|".join(re.escape(json.dumps(name)[1:-1]) for name in shape.step_fields)
        self.null_step = re.compile(rb'"(?:' + step_names.encode() + rb')"\s*:\s*null')

    @functools.cached_property
    def _string_delimiters(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the `"` that open or close strings (not escaped by an odd run of
        backslashes), and how many of them precede each line."""
        quotes = np.flatnonzero(self.u8 == ord('"'))
        after_backslash = np.flatnonzero(self.u8[np.maximum(quotes - 1, 0)] == ord("\\"))
        if after_backslash.size:
            backslashes = self.backslashes
            run_start = np.flatnonzero(np.diff(backslashes, prepend=-2) != 1)
            last = np.searchsorted(backslashes, quotes[after_backslash] - 1)
            first = run_start[np.searchsorted(run_start, last, side="right") - 1]
            escaped = after_backslash[(last - first + 1) % 2 == 1]
            quotes = np.delete(quotes, escaped)
        return quotes, np.searchsorted(quotes, self.starts)

    def outside_strings(self, positions: np.ndarray) -> np.ndarray:
        """The positions that are not inside a string (parity of delimiters since their line's start)."""
        quotes, before_line = self._string_delimiters
        line = np.searchsorted(self.ends, positions)
        return positions[(np.searchsorted(quotes, positions) - before_line[line]) % 2 == 0]

    def _with_sentinels(self, *, every_token: bool) -> bytes:
        """The data with the NaN and Infinity tokens in value context replaced (one `bytes.replace`
        per token when there are many and no other, else slices joined)."""
        if every_token and len(self.nans) + len(self.infs) > 4096:
            return self.data.replace(NAN_TOKEN, NAN_SENTINEL).replace(INF_TOKEN, INF_SENTINEL)
        cuts = sorted([(int(p), NAN_TOKEN, NAN_SENTINEL) for p in self.nans] + [(int(p), INF_TOKEN, INF_SENTINEL) for p in self.infs])
        parts, at = [], 0
        for position, token, sentinel in cuts:
            parts += [self.data[at:position], sentinel]
            at = position + len(token)
        parts.append(self.data[at:])
        return b"".join(parts)

    def _shifted(self, position: int) -> int:
        """Where a byte position of the data is in `text`."""
        return (
            position
            + int(np.searchsorted(self.nans, position)) * (len(NAN_SENTINEL) - len(NAN_TOKEN))
            + int(np.searchsorted(self.infs, position)) * (len(INF_SENTINEL) - len(INF_TOKEN))
        )

    def _keys_all_read(self, start: int, end: int, count: Callable[[np.ndarray], int], cells: int) -> bool:
        """Every key of the block data[start:end] became a cell: none dropped by a schema sample,
        none written twice. Outside strings each key is followed by one `:`, and each cell has a
        key (a null has a key and no cell). `:` and `null` inside strings are located only when present."""
        nulls = count(self.nulls)
        if not nulls and np.count_nonzero(self.u8[start:end] == ord(":")) == cells:  # then no `:` is inside a string either
            return True
        return count(self._colons_outside) == cells + count(self._nulls_outside)

    @functools.cached_property
    def _colons_outside(self) -> np.ndarray:
        return self.outside_strings(np.flatnonzero(self.u8 == ord(":")))

    @functools.cached_property
    def _nulls_outside(self) -> np.ndarray:
        return self.outside_strings(self.nulls)

    def decline(self, lo: int, hi: int, out: list[Segment]) -> None:
        """Lines [lo, hi) for the reference reader (merged with a declined segment just before)."""
        if lo >= hi:
            return
        data = self.data[self.starts[lo] : self.ends[hi - 1] + 1]
        if out and out[-1].rows is None and out[-1].first_line + out[-1].data.count(b"\n") == self.first_line + lo:
            out[-1].data += data
        else:
            out.append(Segment(self.first_line + lo, data=data))

    def read(self, lo: int, hi: int, out: list[Segment]) -> None:
        """Lines [lo, hi) (objects and empty lines): fast where the block checks pass, halved where not."""
        lines = self.first_line + lo + np.flatnonzero(self.objects[lo:hi])
        parsed = self._parse(int(self.starts[lo]), int(self.ends[hi - 1]) + 1, len(lines))
        if parsed is None:
            if hi - lo <= MIN_BLOCK_LINES:
                self.decline(lo, hi, out)
            else:
                mid = (lo + hi) // 2
                self.read(lo, mid, out) if self.objects[lo:mid].any() else self.decline(lo, mid, out)
                self.read(mid, hi, out) if self.objects[mid:hi].any() else self.decline(mid, hi, out)
            return
        rows = _Rows(*parsed, lines, self.shape)
        keep = ~rows.declined
        bounds = np.flatnonzero(np.diff(keep.astype(np.int8))) + 1
        for a, b in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(lines)])), strict=True):
            if keep[a]:
                out.append(Segment(int(lines[a]), rows=rows.fast_rows(int(a), int(b))))
            else:
                self.decline(int(lines[a]) - self.first_line, int(lines[b - 1]) - self.first_line + 1, out)

    def _parse(self, start: int, end: int, objects: int) -> tuple[list[_Leaf], bool] | None:
        """The flattened columns of the block data[start:end] and whether it held NaN/Infinity
        tokens (then sentinels are mapped back), or None when a block check fails."""

        def count(positions: np.ndarray) -> int:
            return int(np.searchsorted(positions, end) - np.searchsorted(positions, start))

        block = self.data[start:end]
        if count(self.backslashes) and _SURROGATE_ESCAPE.search(block):
            return None
        if count(self.nulls) and self.null_step.search(block):
            return None
        text = self.text[self._shifted(start) : self._shifted(end)]
        for infer in (100, None):
            try:
                frame = pl.read_ndjson(io.BytesIO(text), infer_schema_length=infer)
            except (pl.exceptions.PolarsError, pl.exceptions.PanicException, ValueError):
                if infer is None or objects <= infer:
                    return None
                continue
            if frame.height != objects:
                return None
            flat = _flatten(frame, self.shape.container)
            if flat is None:
                return None
            leaves, cells = flat
            if not self._keys_all_read(start, end, count, cells):
                if infer is None or objects <= infer:
                    return None
                continue
            tokens = count(self.nans) + count(self.infs)
            if tokens and not _sentinels_all_values(frame.schema, leaves, count(self.nans), count(self.infs)):
                return None
            if not _texts_are_strings(block, leaves):
                return None
            return leaves, tokens > 0
        return None


def _flatten(frame: pl.DataFrame, container: str) -> tuple[list[_Leaf], int] | None:
    """Leaves ('/'-joined names; `container` transparent) and the count of non-null cells, structs
    included; None for a type the reference reader would see differently or colliding names.
    Column by column as Series (a Polars expression per column costs ~35 µs, a Series call ~3 µs);
    a number column's nulls are its NaNs, since parsed NaN tokens are still sentinels here."""
    leaves: list[_Leaf] = []
    cells = 0

    def walk(series: pl.Series, name: str, valid: np.ndarray | None, top: bool, inside: bool) -> bool:
        key = series.name
        nonlocal cells
        dtype = series.dtype
        if dtype in _NUMBER_TYPES:
            numbers = series.to_numpy()
            numbers = numbers if numbers.dtype == np.float64 else numbers.astype(np.float64)
            present = ~np.isnan(numbers)
        else:
            present = series.is_not_null().to_numpy()
        if valid is not None:
            present &= valid
        cells += int(np.count_nonzero(present))
        if isinstance(dtype, pl.Struct):
            kind = "container" if top and not inside and name == container else "struct"
            prefix = "" if kind == "container" else f"{name}/"
            if kind == "struct":
                leaves.append(_Leaf(name, key, kind, present, top, inside))
            return all(
                walk(series.struct.field(f.name), f"{prefix}{f.name}", present, kind == "container", inside or kind == "container")
                for f in dtype.fields
            )
        if dtype in _NUMBER_TYPES:
            leaves.append(_Leaf(name, key, "number", present, top, inside, numbers=numbers))
        elif dtype == pl.String:
            leaves.append(_Leaf(name, key, "text", present, top, inside, texts=series))
        elif dtype == pl.Boolean:
            leaves.append(_Leaf(name, key, "bool", present, top, inside))
        elif isinstance(dtype, pl.List) and _plain_list(dtype):
            leaves.append(_Leaf(name, key, "list", present, top, inside))
        elif dtype != pl.Null:
            return False
        return True

    if not all(walk(series, series.name, None, True, False) for series in frame.get_columns()):
        return None
    names = [leaf.name for leaf in leaves]
    if len(set(names)) != len(names):
        return None
    return leaves, cells


def _plain_list(dtype: pl.DataType) -> bool:
    """A list of scalars or of such lists: nothing inside that has keys."""
    inner = dtype.inner
    return _plain_list(inner) if isinstance(inner, pl.List) else inner in (*_NUMBER_TYPES, pl.String, pl.Boolean, pl.Null)


def _sentinels_all_values(schema: pl.Schema, leaves: list[_Leaf], nans: int, infs: int) -> bool:
    """Every replaced token became a number: none sat inside a string (its sentinel text would
    be in a key or a string value; strings inside lists are not looked into, so a block holding
    them is declined) and there are as many sentinel numbers as tokens (more means a literal
    equal to a sentinel, which would read as NaN or inf)."""
    sentinels = [NAN_SENTINEL.decode(), INF_SENTINEL.decode()]
    if any(sentinel in key for key in _keys(schema.items()) for sentinel in sentinels):
        return False
    if any(_strings_in_list(dtype) for dtype in schema.values()):
        return False
    found_nan = found_inf = 0
    for leaf in leaves:
        if leaf.kind == "text" and leaf.texts.str.contains_any(sentinels).any():
            return False
        if leaf.kind == "number":
            values = leaf.numbers[leaf.present]
            found_nan += int(np.count_nonzero(values == _NAN_VALUE))
            found_inf += int(np.count_nonzero(np.abs(values) == _INF_VALUE))
    return found_nan == nans and found_inf == infs


def _keys(fields: Iterable[tuple[str, pl.DataType]]) -> Iterator[str]:
    """Every key of a parsed block's schema, struct fields included (null columns too)."""
    for name, dtype in fields:
        yield name
        if isinstance(dtype, pl.Struct):
            yield from _keys((f.name, f.dtype) for f in dtype.fields)


def _strings_in_list(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Struct):
        return any(_strings_in_list(f.dtype) for f in dtype.fields)
    if isinstance(dtype, pl.List):
        inner = dtype.inner
        return inner == pl.String or _strings_in_list(inner)
    return False


def _texts_are_strings(block: bytes, leaves: list[_Leaf]) -> bool:
    """A string column holds only JSON strings (Polars turns a key's numbers, bools and strings
    into one string column): every occurrence of its key must be followed by a string value.
    Its key must be plain ASCII, spelled the same by every writer, and the key of no other leaf."""
    keys = Counter(leaf.key for leaf in leaves)
    for leaf in leaves:
        if leaf.kind != "text":
            continue
        key = leaf.key
        if keys[key] > 1 or not key.isascii() or not key.isprintable() or '"' in key or "\\" in key:
            return False
        pattern = re.escape(f'"{key}"'.encode())
        if len(re.findall(pattern + rb"\s*:", block)) != len(re.findall(pattern + rb'\s*:\s*"', block)):
            return False
    return True


def _first_present(candidates: list[_Leaf], n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the value of the first candidate present there (in candidate order) and
    whether there was one; the chosen cells are taken out of their leaves' `present`."""
    values = np.zeros(n)
    found = np.zeros(n, dtype=bool)
    for leaf in candidates:
        chosen = leaf.present & ~found
        values[chosen] = leaf.numbers[chosen]
        found |= chosen
        leaf.present = leaf.present & ~chosen
    return values, found


def _floats(values: np.ndarray, present: np.ndarray, index: np.ndarray | None = None) -> pl.Series:
    """values[index], null where not present[index]: no mask when all are present, nothing
    gathered when none are (the usual cases for a column of the long table), and numpy's buffer
    handed over through pyarrow rather than copied (a fresh copy costs page faults)."""
    if index is not None:
        present = present[index]
    if not present.any():
        return pl.Series([None], dtype=pl.Float64).new_from_index(0, len(present))
    if index is not None:
        values = values[index]
    return pl.Series(pa.array(values, mask=None if present.all() else ~present))


def _restore_tokens(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values[values == _NAN_VALUE] = np.nan
    values[values == _INF_VALUE] = np.inf
    values[values == -_INF_VALUE] = -np.inf
    return values


class _Rows:
    """A parsed block as the reference reader would see each line: declined rows, step, time."""

    def __init__(self, leaves: list[_Leaf], tokens: bool, lines: np.ndarray, shape: LineShape) -> None:
        n = len(lines)
        self.tokens = tokens
        self.lines = lines
        top = {leaf.name: leaf for leaf in leaves if leaf.top_level and not leaf.in_container}
        inner = {leaf.name: leaf for leaf in leaves if leaf.top_level and leaf.in_container}
        declined = np.zeros(n, dtype=bool)
        for name in shape.declined_fields:
            if name in top:
                declined |= top[name].present
        names = {leaf.name for leaf in leaves}
        for leaf in leaves:
            if leaf.kind == "struct" and f"{leaf.name}/_type" in names:
                declined |= leaf.present

        def numeric(fields: tuple[str, ...], sources: list[dict[str, _Leaf]]) -> tuple[np.ndarray, np.ndarray]:
            candidates = [s[f] for s in sources for f in fields if f in s and s[f].kind == "number"]
            values, found = _first_present(candidates, n)
            return self.restored(values), found

        self.timestamp, self.has_timestamp = numeric(shape.timestamp_fields, [top, inner])
        self.runtime, self.has_runtime = numeric(shape.runtime_fields, [top, inner])
        step = np.zeros(n)
        has_step = np.zeros(n, dtype=bool)
        for name in shape.step_fields:
            leaf = top.get(name)
            if leaf is None:
                continue
            chosen = leaf.present & ~has_step
            has_step |= chosen
            if leaf.kind != "number":
                declined |= chosen
                continue
            step[chosen] = leaf.numbers[chosen]
            leaf.present = leaf.present & ~chosen
        integral = np.isfinite(step) & (step == np.floor(step)) & (np.abs(step) < 2.0**63)
        declined |= has_step & ~integral
        self.step = np.where(has_step & integral, step, 0).astype(np.int64)
        self.has_step = has_step
        self.declined = declined
        self.values = sorted((leaf for leaf in leaves if leaf.kind in ("number", "text")), key=lambda leaf: leaf.name)
        self.typed = [leaf for leaf in leaves if leaf.kind in ("bool", "list")]

    def restored(self, values: np.ndarray) -> np.ndarray:
        """Values with the NaN/Infinity sentinels mapped back (a literal equal to one only where
        the block had no tokens, so that no sentinel was written)."""
        return _restore_tokens(values) if self.tokens else values

    def fast_rows(self, a: int, b: int) -> FastRows:
        """Rows [a, b) in long form, row-major (write order)."""
        n, width = b - a, len(self.values)
        if width:
            present = np.column_stack([leaf.present[a:b] for leaf in self.values])
            cells = np.flatnonzero(present.ravel())
        else:
            cells = np.zeros(0, dtype=np.int64)
        row, column = np.divmod(cells, max(width, 1))
        is_number = np.array([leaf.kind == "number" for leaf in self.values], dtype=bool)
        if width and is_number.any():
            numbers = np.column_stack([leaf.numbers[a:b] if leaf.kind == "number" else np.zeros(n) for leaf in self.values])
            value = self.restored(numbers.ravel()[cells])
        else:
            value = np.zeros(len(cells))
        texts = [leaf.texts.slice(a, n) for leaf in self.values if leaf.kind == "text"]
        if texts:
            position = np.cumsum(~is_number) - 1
            pool = pl.concat([*texts, pl.Series([None], dtype=pl.String)])
            index = np.where(is_number[column], len(pool) - 1, position[column] * n + row)
            text = pool.gather(index)
        else:
            text = pl.Series([None], dtype=pl.String).new_from_index(0, len(cells))
        names = pl.Series([leaf.name for leaf in self.values], dtype=pl.String)
        whole = row + a
        columns = {
            "key": names.gather(column),
            "value": _floats(value, is_number[column]),
            "text": text,
            "runtime": _floats(self.runtime, self.has_runtime, whole),
            "timestamp": _floats(self.timestamp, self.has_timestamp, whole),
        }
        value_types = {
            leaf.name: leaf.kind for leaf in self.typed if leaf.present[a:b].any()
        }
        return FastRows(self.lines[a:b], self.step[a:b], self.has_step[a:b], row, columns, value_types)
