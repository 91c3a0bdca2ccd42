"""Console script `altgrad-pipeline`: `example-runs DIR` writes the example study; `refresh`
brings every asset and report up to date (exit status 1 if anything failed, 2 if a run store
cannot be read); `worker` serves Celery steps (ALTGRAD_EXECUTOR=celery) on this machine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: Imported by the Celery worker before it forks its pool, so every task starts with the project loaded.
WORKER_INCLUDES = "altgrad_pipeline.definitions"


def _example_runs(args: argparse.Namespace) -> int:
    from altgrad_pipeline.examples import write_example_runs

    study = write_example_runs(Path(args.dir))
    print(f"Wrote {len(study.specs)} example runs to {Path(args.dir).resolve()}")
    print(f"Expected answers: {Path(args.dir).resolve() / 'EXPECTED.json'}")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from altgrad_pipeline import settings
    from altgrad_pipeline.atomic import disk_full_message
    from altgrad_pipeline.refresh import instance_dir, refresh

    try:
        report = refresh(runs=args.runs, data_dir=args.data_dir, full=args.full)
    except settings.RunStoreError as exc:  # the user's setting, not a bug: one line, no traceback
        print(f"altgrad-pipeline: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A full disk (a file, or the instance's SQLite) is the machine's state, not a bug: say so.
        message = disk_full_message(exc, instance_dir(settings.absolute_data_dir(args.data_dir)))
        if message is None:
            raise
        print(f"Refresh failed: {message}", file=sys.stderr)
        return 1
    if not report.ok:
        print(f"Refresh failed: {', '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0


def worker_command(args: argparse.Namespace, environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `dagster-celery worker start` command line and environment for this machine: the
    broker and backend of ALTGRAD_CELERY_BROKER / _BACKEND, the instance of DAGSTER_HOME (default
    as for `refresh`), and this interpreter's `bin/` first on PATH, because dagster-celery starts
    `celery` by name."""
    import yaml

    from altgrad_pipeline import settings
    from altgrad_pipeline.refresh import dagster_home

    bin_dir = Path(sys.executable).parent
    env = dict(environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env[settings.EXECUTOR_ENV] = "celery"
    home = Path(env["DAGSTER_HOME"]) if env.get("DAGSTER_HOME") else dagster_home(settings.absolute_data_dir(env.get(settings.DATA_DIR_ENV)))
    home.mkdir(parents=True, exist_ok=True)
    env["DAGSTER_HOME"] = str(home)
    choice = settings.ExecutorChoice(
        name="celery",
        celery_broker=env.get(settings.CELERY_BROKER_ENV) or settings.DEFAULT_CELERY_URL,
        celery_backend=env.get(settings.CELERY_BACKEND_ENV) or settings.DEFAULT_CELERY_URL,
    )
    config = home / "altgrad_celery.yaml"
    # The same block as the executor's config, where dagster-celery's CLI looks for it.
    executor_config = {"broker": choice.celery_broker, "backend": choice.celery_backend}
    config.write_text(yaml.safe_dump({"execution": {"config": executor_config}}))
    command = [
        str(bin_dir / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(config),
        "-i", WORKER_INCLUDES, "-l", args.loglevel,
    ]  # fmt: skip
    if args.name:
        command += ["-n", args.name]
    for queue in args.queue:
        command += ["-q", queue]
    return [*command, "--", f"--concurrency={args.concurrency}"], env


def _worker(args: argparse.Namespace) -> int:
    try:
        import dagster_celery  # noqa: F401
    except ImportError:
        print("altgrad-pipeline worker needs the scale extra: pip install 'altgrad-pipeline[scale]'", file=sys.stderr)
        return 2
    command, env = worker_command(args, dict(os.environ))
    os.execve(command[0], command, env)  # the worker is this process: signals reach it directly


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="altgrad-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    examples = commands.add_parser("example-runs", help="write a store of example altgrad runs (wandb offline)")
    examples.add_argument("dir", help="folder to write the runs into")
    examples.set_defaults(handler=_example_runs)
    refresh = commands.add_parser("refresh", help="ingest new or changed runs and rebuild what is stale")
    refresh.add_argument("--runs", default=None, help="override ALTGRAD_RUNS")
    refresh.add_argument("--data-dir", default=None, help="override ALTGRAD_DATA_DIR")
    refresh.add_argument("--full", action="store_true", help="rebuild every partition, stale or not")
    refresh.set_defaults(handler=_refresh)
    worker = commands.add_parser(
        "worker", help="serve Celery steps for runs launched with ALTGRAD_EXECUTOR=celery (needs the scale extra)"
    )
    worker.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, help="steps at once (default: cores)")
    worker.add_argument("--name", default=None, help="Celery node name (default: dagster-<uuid>@<host>)")
    worker.add_argument("--queue", action="append", default=[], help="queue to listen on (repeatable; default: dagster)")
    worker.add_argument("--loglevel", default="INFO", help="Celery log level")
    worker.set_defaults(handler=_worker)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
