"""Write the wandb-core 0.17 layout fixtures: offline runs logged by wandb 0.17.5 with
`wandb.require("core")` (its Go writer put every block boundary 7 bytes later than any other SDK).

Run with that SDK in a side venv, from this folder (the tests only read the gzipped logs and
recompute `logged_row`):

    python3 -m venv /tmp/w175 && /tmp/w175/bin/pip install wandb==0.17.5
    /tmp/w175/bin/python make_fixtures.py

`WANDB_USERNAME`, `WANDB_HOST`, no git and a scratch directory keep the author's names and paths
out of the log (checked before anything is written here); only the `.wandb` is kept, gzipped.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The committed run: several 32 KiB blocks of history.
RUN_ID, STEPS = "core175a", 2000


def logged_row(step: int) -> dict[str, float | int]:
    """What the run logs at `step`: smooth floats, an int, and NaN / ±inf at fixed steps."""
    row: dict[str, float | int] = {
        "train/loss": 4.0 * math.exp(-step / 700) + 0.05 * math.sin(step / 7),
        "lr": 3e-4 * min(1.0, (step + 1) / 100),
        "grad/norm": 1.0 / (1 + step % 13),
        "epoch": step // 250,
    }
    if step % 97 == 5:
        row["grad/norm"] = math.nan
    if step % 211 == 7:
        row["train/loss"] = math.inf if step % 2 else -math.inf
    return row


def write_run(root: Path, run_id: str, steps: int) -> Path:
    import wandb  # the 0.17.5 SDK of the side venv

    wandb.require("core")
    run = wandb.init(project="altgrad-fixtures", id=run_id, dir=str(root), mode="offline", config={"seed": 7, "max_steps": steps})
    for step in range(steps):
        run.log(logged_row(step), step=step)
    run.finish()
    return next(root.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="altgrad-fixture-"))
    os.environ.update(
        WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true",
        WANDB_USERNAME="fixture", WANDB_HOST="fixture-host",
        WANDB_CONFIG_DIR=str(scratch / "config"), WANDB_CACHE_DIR=str(scratch / "cache"),
    )
    os.chdir(scratch)
    log = write_run(scratch, RUN_ID, STEPS)
    data = log.read_bytes()
    private = [s for s in (os.uname().nodename, os.environ.get("USER", ""), str(Path.home()), str(HERE)) if len(s) >= 3]
    leaked = [s for s in private if s.encode() in data] + re.findall(rb"[\w.+-]+@[\w-]+\.[A-Za-z]{2,}", data)
    if leaked:
        sys.exit(f"{log} holds private strings or e-mail addresses {leaked}: not written")
    (HERE / f"run-{RUN_ID}.wandb.gz").write_bytes(gzip.compress(data, mtime=0))
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
