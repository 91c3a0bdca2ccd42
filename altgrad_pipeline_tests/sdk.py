"""Writing runs with the real wandb SDK in tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from altgrad_pipeline.ingest.wandb.log import read_wandb_log


def finish_and_flush(run: Any, exit_code: int | None = None, timeout_s: float = 60.0) -> None:
    """`run.finish()` can return while wandb-core is still writing the `.wandb` log (seen under
    load: a media run read back with no media). Wait until the log holds the exit record: what was
    logged before it is then on disk. (Tearing the service down would also wait, but it ends every
    stream it holds, writing an exit record into a killed run's log too.)"""
    run.finish(exit_code=exit_code)
    log = Path(run.settings.sync_dir) / f"run-{run.id}.wandb"
    deadline = time.monotonic() + timeout_s
    while not (log.exists() and read_wandb_log(log).ended):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log} has no exit record {timeout_s:.0f} s after finish()")
        time.sleep(0.05)
