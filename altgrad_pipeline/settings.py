"""Where runs come from, where outputs go and how steps execute, read from the environment in one place.

`ALTGRAD_RUNS` lists run stores separated by the OS path separator (`:` on Linux): local roots
and/or `wandb://entity/project` paths. `ALTGRAD_DATA_DIR` (default `./altgrad_data`) holds the
Parquet assets, the reports and, unless `DAGSTER_HOME` says otherwise, the Dagster instance. It may
be an object-store URL (`s3://bucket/prefix`, or any fsspec scheme whose library is installed): then
what must stay on a local disk (the ingest cache, the example runs, a default instance) lives under
`~/.cache/altgrad-pipeline/<hash of the URL>` instead, and credentials come from the standard
`AWS_*` variables.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

RUNS_ENV = "ALTGRAD_RUNS"
DATA_DIR_ENV = "ALTGRAD_DATA_DIR"
CACHE_DIR_ENV = "ALTGRAD_CACHE_DIR"
GRACE_ENV = "ALTGRAD_CRASH_GRACE_SECONDS"
EXECUTOR_ENV = "ALTGRAD_EXECUTOR"
CELERY_BROKER_ENV = "ALTGRAD_CELERY_BROKER"
CELERY_BACKEND_ENV = "ALTGRAD_CELERY_BACKEND"
INGEST_WORKERS_ENV = "ALTGRAD_INGEST_WORKERS"
DEFAULT_DATA_DIR = "./altgrad_data"
DEFAULT_GRACE_SECONDS = 3600.0
DEFAULT_CELERY_URL = "redis://127.0.0.1:6379/0"
#: in_process: every step in the run's own process (no process start per step; the default).
#: multiprocess: steps in forkserver children that preload the project. celery: steps on Celery workers.
EXECUTORS = ("in_process", "multiprocess", "celery")
WANDB_SCHEME = "wandb://"
#: URL schemes of MLflow SQL stores (SQLAlchemy URLs, optionally with a driver: `postgresql+psycopg://`).
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SQL_URL = re.compile(rf"^(?:{'|'.join(SQL_SCHEMES)})(?:\+\w+)?://")
_ENTRY_START = re.compile(r"^(?:[/~.]|\w[\w+.-]*://)")
#: Dagster pool of the assets that may call the W&B API: `concurrency: pools:` in dagster.yaml
#: (deploy/) caps how many of them run at once across the instance.
WANDB_API_POOL = "wandb_api"
LOCAL_STATE_ROOT = Path("~/.cache/altgrad-pipeline")
#: Format names come from run configs; only names safe as partition keys and file names are used.
_SAFE_FORMAT_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,63}")
#: The partition of runs whose format name fails `is_safe_format_name` (an ingest_issues row says why).
INVALID_FORMAT = "invalid_format"


def is_safe_format_name(name: str) -> bool:
    """The one rule for a format name that becomes a partition key and a file name: short, no path
    separator, no leading dot, nothing a shell, URL or file system reads specially."""
    return bool(_SAFE_FORMAT_NAME.fullmatch(name))


def format_partition(name: str) -> str:
    """The partition a derived format name goes to: itself when safe, else `INVALID_FORMAT`."""
    return name if is_safe_format_name(name) else INVALID_FORMAT


@dataclass(frozen=True)
class RunStoreEntry:
    """One entry of ALTGRAD_RUNS: a local folder, a W&B `entity/project` path, or an MLflow SQL
    store's SQLAlchemy URL."""

    kind: str  # "local", "wandb" or "mlflow-sql"
    target: str

    @property
    def label(self) -> str:
        if self.kind == "wandb":
            return f"{WANDB_SCHEME}{self.target}"
        return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", self.target) if self.kind == "mlflow-sql" else self.target


def parse_run_stores(value: str) -> list[RunStoreEntry]:
    """Split ALTGRAD_RUNS on the OS path separator, except where `:` opens a `scheme://`.

    A SQL URL may hold `:` itself (`postgresql://user:pw@host:5432/db`): after a SQL URL, pieces
    are joined back to it until one starts like an entry (`/`, `~`, `.` or a `scheme://`), so a
    relative folder listed after a SQL URL needs a leading `./`.
    """
    separator = re.escape(os.pathsep) + ("(?!//)" if os.pathsep == ":" else "")
    pieces: list[str] = []
    for piece in re.split(separator, value):
        if pieces and _SQL_URL.match(pieces[-1].strip()) and piece.strip() and not _ENTRY_START.match(piece.strip()):
            pieces[-1] += os.pathsep + piece
        else:
            pieces.append(piece)
    entries: list[RunStoreEntry] = []
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        if piece.startswith(WANDB_SCHEME):
            entries.append(RunStoreEntry("wandb", piece[len(WANDB_SCHEME) :].strip("/")))
        elif _SQL_URL.match(piece):
            entries.append(RunStoreEntry("mlflow-sql", piece))
        else:
            entries.append(RunStoreEntry("local", str(Path(piece).expanduser())))
    return entries


class RunStoreError(ValueError):
    """A configured run store that cannot be read: the user's to fix, so it is a message, not a traceback."""


def local_store_problem(entry: RunStoreEntry) -> str | None:
    """Why a local run store cannot be read (None when it can). `wandb://` and SQL entries are
    never checked here: their sources say what went wrong when they list runs."""
    if entry.kind != "local":
        return None
    path = Path(entry.target)
    if not path.exists():
        problem = "does not exist"
    elif not path.is_dir():
        problem = "is not a folder"
    else:
        try:
            with os.scandir(path):
                return None
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
    return (
        f"run store {entry.label} {problem}: set {RUNS_ENV} (or --runs) to the folders holding your runs, "
        f"separated by '{os.pathsep}' (wandb://entity/project and sqlite:///path/to/mlflow.db work too)"
    )


def check_local_stores(entries: list[RunStoreEntry]) -> None:
    """Raise `RunStoreError` for the first local store that is missing, not a folder or unreadable."""
    for entry in entries:
        if problem := local_store_problem(entry):
            raise RunStoreError(problem)


def data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR


def is_url(location: str) -> bool:
    """True for an object-store (fsspec) URL such as `s3://bucket/prefix`; `file://` counts as local."""
    scheme, found, _ = location.partition("://")
    return bool(found) and scheme != "file"


def absolute_data_dir(value: str | None = None) -> str:
    """The data dir as an absolute path (or URL, without a trailing slash), so the UI, the daemon,
    the CLI and every worker agree on it whatever their working directory."""
    chosen = value or data_dir()
    if chosen.startswith("file://"):
        chosen = chosen[len("file://") :]
    return chosen.rstrip("/") if is_url(chosen) else str(Path(chosen).expanduser().resolve())


def local_state_dir(data_dir_value: str) -> Path:
    """The local folder that goes with a data dir: the data dir itself, or for a URL a folder under
    `~/.cache/altgrad-pipeline` named by the URL's hash (the same on every machine)."""
    if not is_url(data_dir_value):
        return Path(data_dir_value)
    digest = hashlib.sha256(data_dir_value.encode()).hexdigest()[:16]
    return LOCAL_STATE_ROOT.expanduser() / digest


def cache_dir(data_dir_value: str) -> Path:
    """The ingest cache: always a local folder (per-run Parquet, file locks). ALTGRAD_CACHE_DIR
    overrides `<local state dir>/cache`."""
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override).expanduser().resolve() if override else local_state_dir(data_dir_value) / "cache"


def run_stores_value() -> str:
    return os.environ.get(RUNS_ENV, "")


def example_store_dir(base: str | None = None) -> Path:
    """Where `refresh` writes the bundled example runs when no ALTGRAD_RUNS is configured."""
    return local_state_dir(base or data_dir()) / "example_runs"


def fsspec_storage_options(url: str) -> dict[str, object]:
    """fsspec options for an object-store data dir, from the standard variables (S3: AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION). Other schemes read their own variables."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    options: dict[str, object] = {}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_url"] = endpoint
    if key := os.environ.get("AWS_ACCESS_KEY_ID"):
        options["key"] = key
    if secret := os.environ.get("AWS_SECRET_ACCESS_KEY"):
        options["secret"] = secret
    if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        options["client_kwargs"] = {"region_name": region}
    return options


def polars_storage_options(fsspec_options: dict[str, object]) -> dict[str, str]:
    """The same S3 options under the names Polars' object store reader takes (`aws_*`); a plain
    `http://` endpoint (a test or on-premises server) also needs `aws_allow_http`."""
    options: dict[str, str] = {}
    names = {"endpoint_url": "aws_endpoint_url", "key": "aws_access_key_id", "secret": "aws_secret_access_key"}
    for fsspec_name, polars_name in names.items():
        if fsspec_options.get(fsspec_name):
            options[polars_name] = str(fsspec_options[fsspec_name])
    client_kwargs = fsspec_options.get("client_kwargs")
    if isinstance(client_kwargs, dict) and client_kwargs.get("region_name"):
        options["aws_region"] = str(client_kwargs["region_name"])
    if options.get("aws_endpoint_url", "").startswith("http://"):
        options["aws_allow_http"] = "true"
    return options


@dataclass(frozen=True)
class ExecutorChoice:
    """How the steps of one Dagster run execute (ALTGRAD_EXECUTOR and, for Celery, its Redis URLs)."""

    name: str = "in_process"
    celery_broker: str = DEFAULT_CELERY_URL
    celery_backend: str = DEFAULT_CELERY_URL


def executor_choice() -> ExecutorChoice:
    name = (os.environ.get(EXECUTOR_ENV) or "in_process").strip().lower().replace("-", "_")
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    return ExecutorChoice(
        name=name,
        celery_broker=os.environ.get(CELERY_BROKER_ENV) or DEFAULT_CELERY_URL,
        celery_backend=os.environ.get(CELERY_BACKEND_ENV) or DEFAULT_CELERY_URL,
    )


def ingest_workers() -> int:
    """Processes that read changed runs in parallel during a catalog sync (ALTGRAD_INGEST_WORKERS;
    default: the cores this process may use)."""
    value = os.environ.get(INGEST_WORKERS_ENV)
    if value:
        return max(1, int(value))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def crash_grace_seconds() -> float:
    return float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_SECONDS)
