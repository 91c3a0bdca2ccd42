"""The one rule for W&B's local names: run folders (`run-<stamp>-<id>`, `offline-run-<stamp>-<id>`),
`latest-run` links or copies, and transaction logs (`run-<id>.wandb`).

The id is everything after the stamp: W&B accepts ids with `-`, `_`, `.` and most other characters
(`wandb.init(id="e5m2-adamw-s1")`; the SDK rejects only a few such as `/ : # ?`), and the stamp has a
fixed shape, so the split is unambiguous. Every reader that recognises W&B folders uses these
patterns, so a run is never a W&B run to one reader and a stray folder to another.
"""

from __future__ import annotations

import re

RUN_FOLDER = re.compile(r"^(?:offline-)?run-(?P<stamp>\d{8}_\d{6})-(?P<id>.+)$")
LATEST_RUN = re.compile(r"^latest-run(?:\.\d+)?$")
LOG_NAME = re.compile(r"^run-(?P<id>.+)\.wandb$")


def named_like_run_folder(name: str) -> bool:
    """`run-*` or `offline-run-*`: a folder W&B would have written, whether or not it parses."""
    return name.startswith(("run-", "offline-run-"))
