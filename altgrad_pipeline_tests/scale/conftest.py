"""The scale tier's cluster: PostgreSQL (Dagster instance), moto (S3 data dir), Redis (Celery broker
and backend) and two `altgrad-pipeline worker` processes, started once per session on loopback.
Skipped, saying why, when the `scale` extra or a server binary is missing."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from altgrad_pipeline.examples import example_spec, write_example_runs
from altgrad_pipeline_tests.scale import servers

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCALE_MODULES = ("dagster_postgres", "psycopg2", "dagster_celery", "celery", "redis", "s3fs", "moto", "boto3")
BUCKET = "altgrad-scale"
#: A small study over four formats, so a refresh has four partition runs to spread over the workers.
STUDY = [
    example_spec(fmt, optimizer, seed, max_steps=60)
    for fmt, optimizer in (("E5M2", "adamw"), ("E5M2", "manifold"), ("E3M4", "adamw"), ("E3M4", "manifold"), ("E0M7", "adamw"), ("E7M0", "adamw"))
    for seed in (1, 2)
]


def scale_unavailable() -> str | None:
    missing = [m for m in SCALE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"the scale extra is not installed (missing {', '.join(missing)}): pip install -e '.[scale]'"
    binaries = servers.missing_binaries()
    if binaries:
        return f"server binaries missing: {', '.join(binaries)} (apt-get install postgresql-15 redis-server)"
    if os.geteuid() != 0:
        return "the scale tier runs PostgreSQL as the `postgres` user through runuser, which needs root"
    return None


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    workers: list[servers.Server]
    study_store: Path

    def data_url(self, name: str) -> str:
        return f"s3://{BUCKET}/{name}"


@pytest.fixture(scope="session")
def study_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("scale-study")
    write_example_runs(store, STUDY)
    return store


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, study_store: Path) -> Iterator[Cluster]:
    reason = scale_unavailable()
    if reason:
        pytest.skip(reason)
    import boto3

    root = tmp_path_factory.mktemp("cluster")
    pg_root = Path(tempfile.mkdtemp(prefix="altgrad-scale-pg-"))
    started: list[servers.Server] = []
    try:
        # Started side by side (initdb and moto's imports take seconds); every one that started is
        # recorded for the teardown before a failure of another is raised.
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            launches = [pool.submit(servers.start_postgres, pg_root), pool.submit(servers.start_moto, root), pool.submit(servers.start_redis, root)]
        started.extend(launch.result()[0] for launch in launches if launch.exception() is None)
        (_, pg_port), (_, s3_port), (_, redis_port) = (launch.result() for launch in launches)
        home = root / "dagster_home"
        home.mkdir()
        shutil.copy(PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
        env = os.environ | {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(pg_port),
            "DAGSTER_PG_DB": "dagster",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "AWS_ACCESS_KEY_ID": "scale-test",
            "AWS_SECRET_ACCESS_KEY": "scale-test",
            "AWS_REGION": "us-east-1",
            "ALTGRAD_EXECUTOR": "celery",
            "ALTGRAD_CELERY_BROKER": f"redis://127.0.0.1:{redis_port}/0",
            "ALTGRAD_CELERY_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
            "ALTGRAD_CACHE_DIR": str(root / "cache"),
            "ALTGRAD_RUNS": str(study_store),
            "ALTGRAD_DATA_DIR": f"s3://{BUCKET}/refresh",
        }
        boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="scale-test",
            aws_secret_access_key="scale-test", region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)  # fmt: skip
        workers = servers.start_workers(["scale-worker-1", "scale-worker-2"], root, env)
        started.extend(workers)
        yield Cluster(root=root, env=env, workers=workers, study_store=study_store)
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
