"""Writing runs with the real wandb SDK in tests."""

from __future__ import annotations

from typing import Any


def finish_and_flush(run: Any, exit_code: int | None = None) -> None:
    """`run.finish()` can return while wandb-core is still writing the `.wandb` log (seen under
    load: a media run read back with no media). Tearing the service down waits for the writer, so
    the test reads the whole log; the next `wandb.init` starts a new service."""
    import wandb

    run.finish(exit_code=exit_code)
    wandb.teardown()
