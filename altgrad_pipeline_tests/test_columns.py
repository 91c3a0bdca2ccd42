"""Every column of every table has a description in the UI's Columns panel (`dagster/column_schema`),
and every column README's Tables section names is one of them: the docs and the UI cannot drift."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import dagster as dg
import pytest

from altgrad_pipeline.definitions import ASSETS, build_resources, defs

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def column_schemas(tmp_path_factory) -> dict[str, dg.TableSchema]:
    """Each asset's schema as the UI shows it: its latest materialization's, else its definition's.
    failure_modes and format_rankings state theirs when built: they are built here on an empty store."""
    base = tmp_path_factory.mktemp("columns")
    (base / "runs").mkdir()
    schemas = {
        node.key.to_user_string(): node.metadata["dagster/column_schema"]
        for node in defs.resolve_asset_graph().asset_nodes
        if "dagster/column_schema" in node.metadata
    }
    built = [dg.AssetKey("failure_modes"), dg.AssetKey("format_rankings")]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            ASSETS, selection=dg.AssetSelection.assets(*built).upstream() - dg.AssetSelection.from_string('partitions:"dynamic"'),
            instance=instance, resources=build_resources(runs=str(base / "runs"), data_dir=str(base / "data")),
        )  # fmt: skip
        for event in result.get_asset_materialization_events():
            schema = event.materialization.metadata.get("dagster/column_schema")
            if schema is not None:
                schemas[event.asset_key.to_user_string()] = schema.value
    return schemas


def test_every_column_of_every_table_has_a_description(column_schemas):
    assert {"failure_modes", "format_rankings", "manifold_stats", "raw_runs"} <= set(column_schemas)
    undescribed = {
        asset: [c.name for c in schema.columns if not (c.description or "").strip()]
        for asset, schema in column_schemas.items()
    }
    assert {asset: names for asset, names in undescribed.items() if names} == {}


#: Backticked names in README's key-columns cells that are not columns: values, file kinds, and
#: columns that exist only in the Parquet files (one per config key or W&B Table column).
README_VALUES = {
    ".wandb", '"7998.707"', "config.<key>", "col.<name>", "power_law", "shifted_power_law", "exponential", "two_power",
}


def _readme_rows() -> list[tuple[list[str], list[str]]]:
    """README's Tables section, row by row: (assets, backticked names in the key-columns cell)."""
    section = README.read_text().split("## Tables", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("asset", "---"):
            rows.append((re.findall(r"`([a-z_]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[2])))
    return rows


def test_every_column_the_readme_names_is_a_described_column(column_schemas):
    """A family (`mean_*`, `<criterion>_std`) names every column it matches; a row of several assets
    names columns of any of them."""
    rows = _readme_rows()
    documented = {asset for assets, _ in rows for asset in assets}
    assert {"format_rankings", "failure_modes", "manifold_stats", "training_dynamics", "sweep_summary",
            "run_outcomes", "run_summaries", "layer_metrics"} <= documented  # fmt: skip
    unknown = {}
    for assets, names in rows:
        columns = [c.name for asset in assets for c in column_schemas[asset].columns]
        unknown.update({
            name: assets for name in names
            if name not in README_VALUES and not fnmatch.filter(columns, re.sub(r"<[^>]+>", "*", name))
        })  # fmt: skip
    assert unknown == {}
