"""The one compiled part: `_wirescan`, the `.wandb` wire-format scan of `ingest/wandb/fastpath.py`.

Optional: when it cannot be compiled (no C compiler or Python headers), the install goes on and
the fast path uses its numpy passes (the same results, about half the speed on narrow rows).
Everything else about the package is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "altgrad_pipeline.ingest.wandb._wirescan",
            ["altgrad_pipeline/ingest/wandb/_wirescan.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
    ]
)
