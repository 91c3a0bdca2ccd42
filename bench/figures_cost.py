"""CPU of the report figures alone: the six report writers run in one process on a refreshed data
dir's tables, each figure builder (build + PNG and SVG save) and each `save_figure` timed.

    python bench/figures_cost.py <data dir of a refresh> [--out <reports dir>] [--repeat N]

The tables are read as the IO manager hands them to the report assets (every format partition
concatenated); the reports are written to `--out` (a temporary dir by default), so the figures
can be compared with the refresh's. CPU is this process's user + system time around each call;
the first line gives each round's total (the first round pays matplotlib's first-use costs, as a
refresh does).
"""

from __future__ import annotations

import argparse
import functools
import resource
import tempfile
from collections import defaultdict
from pathlib import Path

import polars as pl


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(assets: Path, name: str, *, lazy: bool) -> pl.DataFrame | pl.LazyFrame:
    """An asset as the IO manager loads it: its file, or every partition file concatenated."""
    folder = assets / name
    paths = sorted(folder.glob("*.parquet")) if folder.is_dir() else [assets / f"{name}.parquet"]
    scans = [pl.scan_parquet(p) for p in paths]
    frame = scans[0] if len(scans) == 1 else pl.concat(scans, how="diagonal_relaxed")
    return frame if lazy else frame.collect()


def timed(costs: dict[str, list[float]], function, label=None):
    """`function` with its CPU added to `costs[label]`; without a label, to the stem of the path it
    is given second (`save_figure(figure, path)`)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = cpu_seconds()
        result = function(*args, **kwargs)
        costs[label or Path(args[1]).stem].append(cpu_seconds() - start)
        return result

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeat", type=int, default=1)
    arguments = parser.parse_args()

    from altgrad_pipeline.analysis import manifold
    from altgrad_pipeline.reports import (
        failure_modes,
        figures,
        format_comparison,
        manifold_comparison,
        media,
        sweep_summary,
        training_dynamics,
    )

    modules = (format_comparison, failure_modes, manifold_comparison, training_dynamics, sweep_summary, media)
    builds: dict[str, list[float]] = defaultdict(list)
    saves: dict[str, list[float]] = defaultdict(list)
    for module in modules:
        for attribute in dir(module):
            if attribute.endswith("_figure") and callable(getattr(module, attribute)) and attribute not in {"save_figure", "new_figure", "blank_figure"}:
                setattr(module, attribute, timed(builds, getattr(module, attribute), attribute))
        if hasattr(module, "save_figure"):
            module.save_figure = timed(saves, module.save_figure)
    figures.save_figure = timed(saves, figures.save_figure)

    assets = arguments.data_dir / "assets"
    table = functools.partial(load, assets)
    raw_runs = table("raw_runs", lazy=False)
    learning_curves = table("learning_curves", lazy=True)
    run_outcomes = table("run_outcomes", lazy=False)
    failure_table = table("failure_modes", lazy=False)
    run_summaries = table("run_summaries", lazy=True)
    per_run = manifold.per_run_metrics(raw_runs, learning_curves, run_outcomes, run_summaries)
    writers = {
        "format_comparison": lambda out: format_comparison.write_format_comparison_report(
            table("format_rankings", lazy=False), raw_runs, learning_curves, run_outcomes, failure_table, out),
        "failure_modes": lambda out: failure_modes.write_failure_modes_report(
            failure_table, raw_runs, learning_curves, table("layer_metrics", lazy=True), out),
        "manifold_comparison": lambda out: manifold_comparison.write_manifold_comparison_report(
            table("manifold_stats", lazy=False), per_run, raw_runs, out),
        "training_dynamics": lambda out: training_dynamics.write_training_dynamics_report(
            table("training_dynamics", lazy=False), raw_runs, learning_curves, out),
        "sweep_summary": lambda out: sweep_summary.write_sweep_summary_report(
            table("sweep_summary", lazy=False), raw_runs, learning_curves, out),
        "media": lambda out: media.write_media_report(
            table("run_media", lazy=False), table("media_tables", lazy=False), table("histograms", lazy=False),
            table("run_histories", lazy=True), run_summaries, raw_runs, out),
    }  # fmt: skip
    rounds: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        out = arguments.out or Path(scratch)
        for _ in range(arguments.repeat):
            before = (sum(map(sum, builds.values())), sum(map(sum, saves.values())))
            for write in writers.values():
                write(out)
            rounds.append((sum(map(sum, builds.values())) - before[0], sum(map(sum, saves.values())) - before[1]))
    repeat = arguments.repeat
    print(f"figures {sum(map(len, saves.values())) // repeat}, CPU-s per round, build + save (of which save_figure): "
          + ", ".join(f"{total:.2f} ({saved:.2f})" for total, saved in rounds))
    for label, costs in sorted(builds.items()):
        print(f"  {label:28s} {sum(costs) / repeat:6.3f}  ({len(costs) // repeat} figures)")
    for label, costs in sorted(saves.items()):
        print(f"    save {label:45s} {sum(costs) / repeat:6.3f}")

if __name__ == "__main__":
    main()
