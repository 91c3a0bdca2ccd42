"""An object-store data dir (S3, served by moto in server mode on loopback) is checked like a local
one: every file's SHA-256 is recorded when it is written, an altered object is named by its URL
when read, found by a refresh's assessment, moved to `<data dir>/quarantine/` and not reused."""

from __future__ import annotations

import hashlib
import io
import socket

import dagster as dg
import polars as pl
import pytest

from altgrad_pipeline import integrity
from altgrad_pipeline.defs.io_manager import PolarsParquetIOManager, previous_build
from altgrad_pipeline.defs.schedules import damaged_files
from altgrad_pipeline.partition_tables import RunVersionedFrame

pytest.importorskip("s3fs", reason="object-store data dirs need the scale extra: pip install -e '.[scale]'")
moto_server = pytest.importorskip("moto.server", reason="moto's S3 server needs the scale extra")
boto3 = pytest.importorskip("boto3", reason="the S3 client needs the scale extra")

BUCKET = "altgrad-integrity"
DATA = f"s3://{BUCKET}/study"
FORMATS = dg.StaticPartitionsDefinition(["E5M2"])


@pytest.fixture
def s3(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


@dg.asset
def table() -> pl.DataFrame:
    return pl.DataFrame({"run_id": ["a", "b"], "value": [1.0, 2.0]})


@dg.asset
def doubled(table: pl.DataFrame) -> pl.DataFrame:
    return table.with_columns(pl.col("value") * 2)


@dg.asset(partitions_def=FORMATS)
def versioned() -> RunVersionedFrame:
    return RunVersionedFrame(pl.DataFrame({"run_id": ["a"], "value": [1.0]}), {"a": "v1"}, "r")


def _altered(client, key: str, tmp_path) -> None:
    """The object replaced by valid Parquet with the same columns and key-value metadata (a
    partition's run versions) and other values."""
    original = tmp_path / "original.parquet"
    original.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    buffer = io.BytesIO()
    pl.read_parquet(original).with_columns(pl.col("value") + 1).write_parquet(buffer, metadata=pl.read_parquet_metadata(original))
    client.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())


def _recorded(instance, key: str, partition: str | None = None) -> str:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1).records
    return records[0].asset_materialization.metadata[integrity.SHA256_KEY].value


def test_an_altered_object_is_named_quarantined_and_not_read(s3, tmp_path):
    resources = {"io_manager": PolarsParquetIOManager(base_dir=DATA)}
    with dg.instance_for_test() as instance:
        assert dg.materialize([table, doubled], instance=instance, resources=resources).success
        stored = s3.get_object(Bucket=BUCKET, Key="study/assets/table.parquet")["Body"].read()
        assert _recorded(instance, "table") == hashlib.sha256(stored).hexdigest()

        _altered(s3, "study/assets/table.parquet", tmp_path)
        result = dg.materialize([table, doubled], selection=["doubled"], instance=instance, resources=resources, raise_on_error=False)
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert f"{DATA}/assets/table.parquet is corrupt" in str(failure.step_failure_data.error)

        said: list[str] = []
        assert damaged_files(instance, DATA, [dg.AssetKey("table"), dg.AssetKey("doubled")], None, said.append)
        [moved] = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="study/quarantine/")["Contents"]]
        assert moved.endswith("/assets/table.parquet")
        assert said == [f"  {DATA}/assets/table.parquet is corrupt (its content changed since it was written): moved to s3://{BUCKET}/{moved}, rebuilding it"]
        assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="study/assets/table.parquet")
        # Rebuilt, it is whole again: nothing more to say.
        assert dg.materialize([table, doubled], instance=instance, resources=resources).success
        assert not damaged_files(instance, DATA, [dg.AssetKey("table"), dg.AssetKey("doubled")], None, said.append)


def test_an_altered_partition_object_is_not_reused(s3, tmp_path):
    resources = {"io_manager": PolarsParquetIOManager(base_dir=DATA)}
    with dg.instance_for_test() as instance:
        assert dg.materialize([versioned], partition_key="E5M2", instance=instance, resources=resources).success
        kept = previous_build(DATA, "versioned", "E5M2", instance, pytest.fail)
        assert kept is not None and kept.versions == {"a": "v1"}
        _altered(s3, "study/assets/versioned/E5M2.parquet", tmp_path)
        warnings: list[str] = []
        assert previous_build(DATA, "versioned", "E5M2", instance, warnings.append) is None
    assert len(warnings) == 1 and warnings[0].startswith(f"{DATA}/assets/versioned/E5M2.parquet is corrupt"), warnings
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="study/assets/versioned/")
