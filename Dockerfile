# The code location image for Kubernetes (deploy/helm/values.yaml) and for Celery workers.
# Build: docker build -t ghcr.io/altgrad/altgrad-pipeline:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    ALTGRAD_CACHE_DIR=/var/cache/altgrad

WORKDIR /opt/altgrad
COPY pyproject.toml setup.py README.md workspace.yaml ./
COPY altgrad_pipeline ./altgrad_pipeline
# gcc only for the install: it compiles the `.wandb` reader's wire scan (setup.py), then leaves the image.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install '.[scale]' \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && mkdir -p "$DAGSTER_HOME" "$ALTGRAD_CACHE_DIR"
COPY deploy/postgres/dagster.yaml /opt/dagster/dagster_home/dagster.yaml

EXPOSE 3030
# The code location: the webserver and daemon reach it over gRPC; the K8sRunLauncher runs
# `dagster api execute_run` in Jobs from this same image. A Celery worker overrides the command
# with `altgrad-pipeline worker`.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "altgrad_pipeline.definitions"]
