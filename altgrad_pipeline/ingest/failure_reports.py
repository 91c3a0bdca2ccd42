"""FormatExperimentRunner failure reports (markdown), parsed into typed fields.

The runner writes `<checkpoint_dir>/failure_reports/<FMT>_<YYYYmmdd_HHMMSS>_failure_report.md`
when a run collapses; it is the only structured failure artifact altgrad produces (the runner
logs no loss to W&B). The format in the file name and the Summary is the post-shift format.
Percentages are returned as fractions. A malformed report never raises: whatever parsed is
returned, and `parse_error` says what did not.

The `failure_reports` table holds the newest report of each run's `config.checkpoint_dir`, looked
for under every local run store (`<store root>/<checkpoint_dir>/failure_reports/`); the analysis
joins it to the runs (`failure_modes`, columns prefixed `report_`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl
import yaml

REPORT_FILE = re.compile(r"^(?P<format>.+)_(?P<timestamp>\d{8}_\d{6})_failure_report\.md$")

_TREND_STRUCT = pl.Struct(
    {
        "step": pl.Int64(),
        "stiffness_mean": pl.Float64(),
        "grid_error": pl.Float64(),
        "ulp_mean": pl.Float64(),
        "grad_below_stiffness_frac": pl.Float64(),
    }
)

#: Fields `parse_failure_report` returns, with their column types.
PARSED_REPORT_SCHEMA: dict[str, pl.DataType] = {
    "format": pl.String(),
    "collapse_step": pl.Int64(),
    "collapse_reason": pl.String(),
    "final_loss": pl.Float64(),
    "best_loss": pl.Float64(),
    "steps_completed": pl.Int64(),
    "max_steps": pl.Int64(),
    "duration_seconds": pl.Float64(),
    "gradient_sparsity": pl.Float64(),
    "zero_update_layers": pl.List(pl.String()),
    "zero_update_layers_more": pl.Int64(),
    "n_zero_update_layers": pl.Int64(),
    "bit_stall_rate": pl.Float64(),
    "overflow_rate": pl.Float64(),
    "underflow_rate": pl.Float64(),
    "diagnostic_trend": pl.List(_TREND_STRUCT),
    "loss_trend": pl.List(pl.Struct({"step": pl.Int64(), "loss": pl.Float64()})),
    "config": pl.String(),
    "generated_at": pl.String(),
    "parse_error": pl.String(),
}

#: Columns of `find_failure_reports`.
FAILURE_REPORTS_SCHEMA: dict[str, pl.DataType] = {
    "checkpoint_dir": pl.String(),
    "report_path": pl.String(),
    "report_file_format": pl.String(),
    "report_timestamp": pl.Datetime("us"),
    "n_reports": pl.Int64(),
    **PARSED_REPORT_SCHEMA,
}

#: What each column of the `failure_reports` table means (the Dagster UI's Columns panel).
FAILURE_REPORTS_DESCRIPTIONS: dict[str, str] = {
    "checkpoint_dir": "Checkpoint folder (relative to its run store) whose failure_reports/ held the report",
    "report_path": "The newest FormatExperimentRunner failure report file of that folder",
    "report_file_format": "FP8 format named in the report's file name",
    "report_timestamp": "When the report was written, from its file name",
    "n_reports": "Failure reports found in the folder (the newest one is parsed)",
    "format": "FP8 format the report states",
    "collapse_step": "Step at which the runner declared the collapse",
    "collapse_reason": "Why the runner stopped, in its words",
    "final_loss": "Last loss the report states",
    "best_loss": "Best loss the report states",
    "steps_completed": "Steps the run completed before it stopped",
    "max_steps": "Steps the run was planned for",
    "duration_seconds": "Wall time of the run, as the report states it",
    "gradient_sparsity": "Fraction of zero gradient elements at the collapse",
    "zero_update_layers": "Layers whose weights stopped changing (as listed in the report)",
    "zero_update_layers_more": "Further zero-update layers the report counts but does not list",
    "n_zero_update_layers": "Zero-update layers in all",
    "bit_stall_rate": "Bit-stall rate at the collapse",
    "overflow_rate": "Overflow rate at the collapse",
    "underflow_rate": "Underflow rate at the collapse",
    "diagnostic_trend": "The report's diagnostic trend table (step, stiffness and the quantisation rates)",
    "loss_trend": "The report's loss trend table (step, loss)",
    "config": "The run configuration the report embeds, as text",
    "generated_at": "Generation time the report states",
    "parse_error": "Why the report could not be read (null: read)",
}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"


def _sections(text: str) -> dict[str, str]:
    """Heading text (without #'s, lower-cased) -> body up to the next heading of any level."""
    parts = re.split(r"^(#{1,6})[ \t]+(.+?)[ \t]*$", text, flags=re.MULTILINE)
    return {parts[i + 1].strip().lower(): parts[i + 2] for i in range(1, len(parts) - 2, 3)}


def _table_rows(body: str) -> list[list[str]]:
    """Cells of the markdown table rows in `body`, header and separator rows excluded."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in body.splitlines()
        if line.strip().startswith("|")
    ]
    return [row for row in rows[1:] if not all(re.fullmatch(r":?-+:?", cell) for cell in row)]


def _number(text: str) -> float:
    """A float from a cell such as `nan`, `inf`, `6.123456`, `61.20%` (percent -> fraction), `12.3s`."""
    match = re.search(_NUMBER, text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"no number in {text!r}")
    value = float(match.group(0))
    return value / 100 if text.strip().endswith("%") else value


def _section(sections: dict[str, str], prefix: str) -> str:
    for heading, body in sections.items():
        if heading.startswith(prefix):
            return body
    raise ValueError(f"section '{prefix}' missing")


def parse_failure_report(text: str) -> dict[str, Any]:
    """Parse one failure report. Keys: `PARSED_REPORT_SCHEMA`; unparsed fields are None and
    `parse_error` lists what failed ("; "-separated), or is None when everything parsed.

    `zero_update_layers` holds the listed parameter names; `zero_update_layers_more` the N of a
    "... and N more" line (0 when absent); `n_zero_update_layers` their total. `config` is the
    Configuration block as JSON text.
    """
    result: dict[str, Any] = dict.fromkeys(PARSED_REPORT_SCHEMA)
    errors: list[str] = []
    sections = _sections(text)

    def attempt(field: str, parse) -> None:
        try:
            parse()
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, yaml.YAMLError) as exc:
            errors.append(f"{field}: {exc}")

    def summary() -> None:
        rows = {row[0].lower(): row[1] for row in _table_rows(_section(sections, "summary")) if len(row) >= 2}
        parsers = {
            "format": ("format", str),
            "collapse step": ("collapse_step", lambda v: int(_number(v))),
            "collapse reason": ("collapse_reason", str),
            "final loss": ("final_loss", _number),
            "best loss": ("best_loss", _number),
            "duration": ("duration_seconds", _number),
        }
        for label, (field, parse) in parsers.items():
            attempt(field, lambda: result.__setitem__(field, parse(rows[label])))
        def total_steps() -> None:
            done, total = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", rows["total steps"]).groups()  # type: ignore[union-attr]
            result["steps_completed"], result["max_steps"] = int(done), int(total)
        attempt("total_steps", total_steps)

    def sparsity() -> None:
        body = _section(sections, "gradient sparsity")
        match = re.search(r"\*\*\s*(" + _NUMBER + r")\s*%\s*\*\*", body, flags=re.IGNORECASE)
        if match is None:
            raise ValueError("no bold percentage")
        result["gradient_sparsity"] = float(match.group(1)) / 100

    def zero_update() -> None:
        body = _section(sections, "zero-update regions")
        bullets = [line.strip()[1:].strip() for line in body.splitlines() if line.strip().startswith("-")]
        layers = [m.group(1) for b in bullets if (m := re.fullmatch(r"`([^`]+)`", b))]
        more = [int(m.group(1)) for b in bullets if (m := re.fullmatch(r"\.\.\.\s*and\s+(\d+)\s+more", b))]
        if not bullets:
            raise ValueError("no bullet list")
        result["zero_update_layers"] = layers
        result["zero_update_layers_more"] = more[0] if more else 0
        result["n_zero_update_layers"] = len(layers) + result["zero_update_layers_more"]

    def quantization() -> None:
        rows = {row[0].lower(): row[1] for row in _table_rows(_section(sections, "quantization metrics")) if len(row) >= 2}
        for label, field in (("bit-stall rate", "bit_stall_rate"), ("overflow rate", "overflow_rate"), ("underflow rate", "underflow_rate")):
            attempt(field, lambda: result.__setitem__(field, _number(rows[label])))

    def diagnostics() -> None:
        body = _section(sections, "diagnostic trend")
        result["diagnostic_trend"] = [
            {
                "step": int(_number(row[0])),
                "stiffness_mean": _number(row[1]),
                "grid_error": _number(row[2]),
                "ulp_mean": _number(row[3]),
                "grad_below_stiffness_frac": _number(row[4]),
            }
            for row in _table_rows(body)
        ]

    def loss_trend() -> None:
        rows = _table_rows(_section(sections, "loss trend"))
        result["loss_trend"] = [{"step": int(_number(row[0])), "loss": _number(row[1])} for row in rows]

    def configuration() -> None:
        match = re.search(r"```(?:ya?ml)?\s*\n(.*?)```", _section(sections, "configuration"), flags=re.DOTALL)
        if match is None:
            raise ValueError("no fenced block")
        result["config"] = json.dumps(yaml.safe_load(match.group(1)), default=str)

    def footer() -> None:
        match = re.search(r"\*Generated by .+? at (\S+?)\*", text)
        if match is None:
            raise ValueError("no 'Generated by' footer")
        result["generated_at"] = match.group(1)

    for field, parse in (
        ("summary", summary),
        ("gradient_sparsity", sparsity),
        ("zero_update_layers", zero_update),
        ("quantization", quantization),
        ("diagnostic_trend", diagnostics),
        ("loss_trend", loss_trend),
        ("config", configuration),
        ("generated_at", footer),
    ):
        attempt(field, parse)
    result["parse_error"] = "; ".join(errors) or None
    return result


def find_failure_reports(store_root: Path, checkpoint_dirs: Iterable[str | None]) -> pl.DataFrame:
    """The newest failure report of each checkpoint dir, parsed (columns: `FAILURE_REPORTS_SCHEMA`).

    Looks in `<store_root>/<checkpoint_dir>/failure_reports/` for `<FMT>_<YYYYmmdd_HHMMSS>_failure_report.md`;
    when there are several, the newest timestamp wins and `n_reports` says how many there were.
    Dirs without a report get no row. An unreadable file gives a row with `parse_error` set.
    """
    rows: list[dict[str, Any]] = []
    for checkpoint_dir in sorted({d for d in checkpoint_dirs if d}):
        folder = Path(store_root) / checkpoint_dir / "failure_reports"
        found = [(m, path) for path in (folder.glob("*_failure_report.md") if folder.is_dir() else []) if (m := REPORT_FILE.match(path.name))]
        if not found:
            continue
        match, path = max(found, key=lambda item: item[0].group("timestamp"))
        try:
            parsed = parse_failure_report(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            parsed = {**dict.fromkeys(PARSED_REPORT_SCHEMA), "parse_error": f"unreadable: {exc}"}
        rows.append(
            {
                "checkpoint_dir": checkpoint_dir,
                "report_path": str(path),
                "report_file_format": match.group("format"),
                "report_timestamp": dt.datetime.strptime(match.group("timestamp"), "%Y%m%d_%H%M%S"),
                "n_reports": len(found),
                **parsed,
            }
        )
    return pl.DataFrame(rows, schema=FAILURE_REPORTS_SCHEMA)


def read_failure_reports(store_roots: Iterable[Path], checkpoint_dirs: Iterable[str | None]) -> pl.DataFrame:
    """The `failure_reports` table: the newest report of each checkpoint dir over all `store_roots`
    (columns: `FAILURE_REPORTS_SCHEMA`; when two stores hold one, the newer timestamp wins), in
    checkpoint-dir order so two refreshes write the same file."""
    checkpoint_dirs = list(checkpoint_dirs)
    found = [find_failure_reports(root, checkpoint_dirs) for root in store_roots]
    if not found:
        return pl.DataFrame(schema=FAILURE_REPORTS_SCHEMA)
    return pl.concat(found).sort("report_timestamp").unique("checkpoint_dir", keep="last").sort("checkpoint_dir")
