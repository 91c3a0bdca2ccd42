"""Run-by-run partition builds: whatever the history of changes, a build equals computing every
run afresh, only new or changed runs are computed, and the IO manager keeps rows and versions in
one Parquet file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from altgrad_pipeline import partition_tables
from altgrad_pipeline.defs.io_manager import PolarsParquetIOManager, previous_build
from altgrad_pipeline.partition_tables import RunVersionedFrame, read_build, rebuild, recipe, run_versions


class RowsPerVersion:
    """A compute function whose rows depend only on each run's version; it records what it computed."""

    def __init__(self, versions: dict[str, str]):
        self.versions = versions
        self.calls: list[list[str]] = []

    def __call__(self, run_ids: list[str]) -> pl.DataFrame:
        self.calls.append(list(run_ids))
        rows = [
            {"run_id": run, "step": step, "value": float(len(self.versions[run]) * 10 + step)}
            for run in sorted(run_ids)
            for step in range(len(self.versions[run]) % 3)  # some versions have no rows at all
        ]
        return pl.DataFrame(rows, schema={"run_id": pl.String, "step": pl.Int64, "value": pl.Float64})


def _stored(table: RunVersionedFrame, path: Path) -> RunVersionedFrame | None:
    """What the next build sees: the table after a round trip through a Parquet file."""
    table.frame.write_parquet(path, metadata=table.parquet_metadata())
    return read_build(str(path))


def _build(previous: RunVersionedFrame | None, versions: dict[str, str], built_with: str = "r") -> tuple[RunVersionedFrame, RowsPerVersion]:
    compute = RowsPerVersion(versions)
    return rebuild(previous, versions, built_with, compute).table, compute


def test_only_new_and_changed_runs_are_computed(tmp_path: Path) -> None:
    path = tmp_path / "E5M2.parquet"
    first, compute = _build(None, {"a": "v1", "b": "v22", "c": "v333"})
    assert compute.calls == [["a"], ["b"], ["c"]]  # one run at a time
    assert first.frame.get_column("run_id").to_list() == ["a", "a", "c"]  # b's version has no rows

    unchanged, compute = _build(_stored(first, path), {"a": "v1", "b": "v22", "c": "v333"})
    assert compute.calls == [] and unchanged.frame.equals(first.frame)

    versions = {"a": "v1", "c": "v4444", "d": "v22"}  # b removed, c changed, d new
    changed, compute = _build(_stored(unchanged, path), versions)
    assert compute.calls == [["c"], ["d"]]
    assert changed.frame.equals(RowsPerVersion(versions)(sorted(versions)))
    assert changed.versions == versions
    again = rebuild(_stored(changed, path), versions, "r", RowsPerVersion(versions))
    assert (again.computed, again.reused) == ([], 3)


def test_runs_without_rows_are_not_recomputed(tmp_path: Path) -> None:
    first, _ = _build(None, {"empty": "v12", "full": "v1"})  # len("v12") % 3 == 0: no rows
    _, compute = _build(_stored(first, tmp_path / "p.parquet"), {"empty": "v12", "full": "v1"})
    assert compute.calls == []


def test_a_new_recipe_starts_afresh(tmp_path: Path) -> None:
    first, _ = _build(None, {"a": "v1"}, built_with="one")
    _, compute = _build(_stored(first, tmp_path / "p.parquet"), {"a": "v1"}, built_with="two")
    assert compute.calls == [["a"]]
    assert recipe(partition_tables, x=1) != recipe(partition_tables, x=2) != recipe(pl)


def test_unreadable_or_unversioned_files_mean_a_full_build(tmp_path: Path) -> None:
    torn = tmp_path / "torn.parquet"
    torn.write_bytes(b"PAR1 torn")
    plain = tmp_path / "plain.parquet"
    pl.DataFrame({"run_id": ["a"]}).write_parquet(plain)
    assert read_build(str(torn)) is None
    assert read_build(str(plain)) is None
    assert read_build(str(tmp_path / "absent.parquet")) is None


def test_raw_runs_without_versions_are_never_reused() -> None:
    runs = pl.DataFrame({"run_id": ["a", "b"]})
    assert run_versions(runs) != run_versions(runs)
    versioned = pl.DataFrame({"run_id": ["a", "b"], "run_version": ["x", None]})
    first, second = run_versions(versioned), run_versions(versioned)
    assert first["a"] == second["a"] == "x" and first["b"] != second["b"]


def test_the_io_manager_stores_rows_and_versions_together(tmp_path: Path) -> None:
    """Through a real materialization: the file the IO manager writes is the one the next build reads."""
    versions = {"a": "v1", "c": "v333"}
    partitions = dg.StaticPartitionsDefinition(["E5M2"])

    @dg.asset(partitions_def=partitions)
    def versioned() -> RunVersionedFrame:
        return rebuild(None, versions, "r", RowsPerVersion(versions)).table

    with dg.instance_for_test() as instance:
        result = dg.materialize([versioned], partition_key="E5M2", instance=instance, resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))})
        assert result.success
        stored = previous_build(str(tmp_path), "versioned", "E5M2", instance, pytest.fail)
    assert stored is not None and stored.versions == versions and stored.recipe == "r"
    assert stored.frame.equals(RowsPerVersion(versions)(["a", "c"]))
    assert pl.read_parquet(tmp_path / "assets" / "versioned" / "E5M2.parquet").equals(stored.frame)


def test_a_lazy_table_is_counted_as_written(tmp_path: Path) -> None:
    """An asset returning a lazy table (streamed into its file, never held) gets its row count in the
    UI from the file the IO manager wrote."""

    @dg.asset
    def streamed() -> pl.LazyFrame:
        return pl.LazyFrame({"step": range(1, 1001)}).filter(pl.col("step") % 7 != 0)

    with dg.instance_for_test() as instance:
        result = dg.materialize([streamed], instance=instance, resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))})
        metadata = result.asset_materializations_for_node("streamed")[0].metadata
    assert metadata["dagster/row_count"].value == pl.read_parquet(tmp_path / "assets" / "streamed.parquet").height == 858


def test_an_altered_partition_file_is_quarantined_not_reused(tmp_path: Path) -> None:
    """A file that still decodes, with its run versions intact but other values (what a few bytes
    overwritten can give): its SHA-256 is not the recorded one, so no row of it is kept."""
    versions = {"a": "v1", "c": "v333"}

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["E5M2"]))
    def versioned() -> RunVersionedFrame:
        return rebuild(None, versions, "r", RowsPerVersion(versions)).table

    path = tmp_path / "assets" / "versioned" / "E5M2.parquet"
    with dg.instance_for_test() as instance:
        assert dg.materialize([versioned], partition_key="E5M2", instance=instance, resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))}).success
        original = read_build(str(path))
        assert original is not None
        original.frame.with_columns(pl.col("value") * 2).write_parquet(path, metadata=original.parquet_metadata())
        warnings: list[str] = []
        assert previous_build(str(tmp_path), "versioned", "E5M2", instance, warnings.append) is None
    assert warnings == [f"{path} is corrupt (its content changed since it was written): moved to "
                        f"{next((tmp_path / 'quarantine').rglob('E5M2.parquet'))}; computing every run of it again"]  # fmt: skip
    assert not path.exists()


def test_a_streamed_first_build_computes_each_run_while_the_file_is_written(tmp_path: Path) -> None:
    """A streamed first build computes nothing until the IO manager writes it, then one run at a
    time; its `describe` metadata is read from the file as written."""
    versions = {"a": "v1", "b": "v22", "c": "v333"}
    partitions = dg.StaticPartitionsDefinition(["E5M2"])
    compute = RowsPerVersion(versions)

    @dg.asset(partitions_def=partitions)
    def versioned() -> RunVersionedFrame:
        built = rebuild(None, versions, "r", compute, streamed=True, describe=lambda rows: {"n_rows": rows.select(pl.len()).collect().item()})
        assert isinstance(built.table.frame, pl.LazyFrame) and compute.calls == [[]]  # only its columns asked for
        return built.table

    with dg.instance_for_test() as instance:
        result = dg.materialize([versioned], partition_key="E5M2", instance=instance, resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))})
        assert result.success and compute.calls == [[], ["a"], ["b"], ["c"]]
        stored = previous_build(str(tmp_path), "versioned", "E5M2", instance, pytest.fail)
        metadata = result.asset_materializations_for_node("versioned")[0].metadata
    assert stored is not None and stored.versions == versions
    assert stored.frame.equals(RowsPerVersion(versions)(sorted(versions)))
    assert metadata["n_rows"].value == stored.frame.height == 3


def test_a_streamed_table_reads_only_what_a_query_asks_for() -> None:
    """Queried rather than written, a streamed table projects, filters and stops once it has
    the rows asked for: the first run's rows for a head, not every run's."""
    versions = {"a": "v1", "b": "v22", "c": "v333"}
    compute = RowsPerVersion(versions)
    frame = rebuild(None, versions, "r", compute, streamed=True).table.frame
    assert frame.lazy().filter(pl.col("step") == 1).select("run_id").collect().to_series().to_list() == ["a"]
    compute.calls.clear()
    assert frame.lazy().head(1).collect().equals(RowsPerVersion(versions)(["a"]).head(1))
    assert compute.calls == [["a"]]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["v", "v1", "v12", "v123", "v1234"]), max_size=6),
        min_size=1,
        max_size=6,
    )
)
def test_any_sequence_of_builds_equals_a_fresh_build(tmp_path_factory: pytest.TempPathFactory, builds: list[dict[str, str]]) -> None:
    path = tmp_path_factory.mktemp("partition") / "p.parquet"
    stored: RunVersionedFrame | None = None
    previous: dict[str, str] = {}
    for versions in builds:
        built, compute = _build(stored, versions)
        assert built.frame.equals(RowsPerVersion(versions)(sorted(versions)))
        assert sorted(run for call in compute.calls for run in call) == sorted(r for r, v in versions.items() if previous.get(r) != v)
        stored, previous = _stored(built, path), versions
