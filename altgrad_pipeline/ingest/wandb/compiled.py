"""The compiled part of the `.wandb` reader (`_wirescan.c`) and the switch between it and numpy.

`_wirescan` frames chunks, checks their CRCs' predictions and walks the wire format in C loops;
`framing.py` and `fastpath.py` keep numpy versions of the same steps, used when the extension is
not built (setup.py declares it optional) or when `DECODER_ENV` asks for them, and tested against
the compiled ones array by array."""

from __future__ import annotations

import os
from types import ModuleType

try:
    from altgrad_pipeline.ingest.wandb import _wirescan
except ImportError:  # not compiled: the numpy passes do the same work
    _wirescan = None

#: Which implementation frames and walks the wire format: "c" (the compiled `_wirescan`; an error
#: when it is not built), "numpy" (the numpy passes: the fallback and the differential reference),
#: or unset / "auto" (C when built).
DECODER_ENV = "ALTGRAD_WANDB_DECODER"


def compiled_scan() -> ModuleType | None:
    """The compiled scan to use, or None for the numpy passes (`DECODER_ENV` decides)."""
    choice = os.environ.get(DECODER_ENV, "auto")
    if choice == "numpy":
        return None
    if choice == "c" and _wirescan is None:
        raise ImportError(f"{DECODER_ENV}=c but altgrad_pipeline.ingest.wandb._wirescan is not built (pip install -e . compiles it)")
    if choice not in ("auto", "c"):
        raise ValueError(f"{DECODER_ENV} must be auto, c or numpy, not {choice!r}")
    return _wirescan
