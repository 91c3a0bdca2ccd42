"""Console script `altgrad-pipeline`: `example-runs DIR` writes the example study; `refresh`
brings every asset and report up to date (exit status 1 if anything failed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _example_runs(args: argparse.Namespace) -> int:
    from altgrad_pipeline.examples import write_example_runs

    study = write_example_runs(Path(args.dir))
    print(f"Wrote {len(study.specs)} example runs to {Path(args.dir).resolve()}")
    print(f"Expected answers: {Path(args.dir).resolve() / 'EXPECTED.json'}")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from altgrad_pipeline.refresh import refresh

    report = refresh(runs=args.runs, data_dir=args.data_dir, full=args.full)
    if not report.ok:
        print(f"Refresh failed: {', '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0


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
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
