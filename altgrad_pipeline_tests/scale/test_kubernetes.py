"""The Kubernetes route, rendered offline (no cluster can run here): the run Job that the
K8sRunLauncher builds from deploy/helm/values.yaml runs our image with the object-store and W&B
configuration, and the image serves the code location the workspace names."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from altgrad_pipeline_tests.scale.conftest import PROJECT_ROOT

VALUES = yaml.safe_load((PROJECT_ROOT / "deploy" / "helm" / "values.yaml").read_text())
DEPLOYMENT = VALUES["dagster-user-deployments"]["deployments"][0]
IMAGE = f"{DEPLOYMENT['image']['repository']}:{DEPLOYMENT['image']['tag']}"
DAGSTER_HOME = "/opt/dagster/dagster_home"
EXECUTE_RUN = ["dagster", "api", "execute_run", json.dumps({"__class__": "ExecuteRunArgs"})]


@pytest.fixture(scope="module")
def run_job():
    """What the chart's K8sRunLauncher would submit for one run of our code location."""
    job_module = pytest.importorskip("dagster_k8s.job", reason="the scale extra (dagster-k8s) is not installed")
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    config = job_module.DagsterK8sJobConfig(
        job_image=IMAGE,
        dagster_home=DAGSTER_HOME,
        image_pull_policy=launcher["imagePullPolicy"],
        instance_config_map="altgrad-dagster-instance",
        postgres_password_secret=VALUES["global"]["postgresqlSecretName"],
        env_secrets=[s["name"] for s in launcher["envSecrets"]],
        # includeConfigInLaunchedRuns: the run gets the user deployment's environment.
        env_vars=[f"{e['name']}={e['value']}" for e in DEPLOYMENT["env"]],
    )
    user_config = job_module.UserDefinedDagsterK8sConfig(container_config=launcher["runK8sConfig"]["containerConfig"])
    return job_module.construct_dagster_k8s_job(
        config, args=EXECUTE_RUN, job_name="dagster-run-0123456789abcdef", user_defined_k8s_config=user_config,
        pod_name="dagster-run-0123456789abcdef", component="run_worker",
    )  # fmt: skip


def test_the_run_job_runs_our_image_with_the_run_command(run_job):
    container = run_job.spec.template.spec.containers[0]
    assert container.image == "ghcr.io/altgrad/altgrad-pipeline:0.1.0"
    assert container.image_pull_policy == "IfNotPresent"
    assert container.args == EXECUTE_RUN
    assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
    assert container.resources.limits == {"memory": "4Gi"}


def test_the_run_job_has_the_object_store_postgres_and_wandb_configuration(run_job):
    container = run_job.spec.template.spec.containers[0]
    env = {e.name: e.value for e in container.env}
    assert env["ALTGRAD_DATA_DIR"] == "s3://altgrad-data/study"
    assert env["ALTGRAD_RUNS"] == "wandb://altgrad-lab/altgrad"
    assert env["ALTGRAD_EXECUTOR"] == "in_process"
    assert env["DAGSTER_HOME"] == DAGSTER_HOME
    password = next(e for e in container.env if e.name == "DAGSTER_PG_PASSWORD")
    assert password.value_from.secret_key_ref.name == "dagster-postgresql-secret"
    assert {source.secret_ref.name for source in container.env_from} == {"altgrad-object-store", "altgrad-wandb"}


def test_the_image_serves_the_code_location_the_workspace_and_chart_name():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    assert "pip install '.[scale]'" in dockerfile
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    assert command[:3] == ["dagster", "api", "grpc"] and command[command.index("-m") + 1] == module
    assert DEPLOYMENT["dagsterApiGrpcArgs"] == ["--module-name", module]
    assert str(DEPLOYMENT["port"]) == command[command.index("-p") + 1]
