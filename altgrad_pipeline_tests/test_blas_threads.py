"""Every process that runs assets loads `definitions.py`, which limits BLAS to one thread: OpenBLAS's
worker threads spun between the curve fits' small products (more CPU, no shorter wall time)."""

from threadpoolctl import threadpool_info

import altgrad_pipeline.definitions  # noqa: F401 - imported for its BLAS limit


def test_blas_runs_on_one_thread_once_the_definitions_are_loaded():
    blas = [library for library in threadpool_info() if library["user_api"] == "blas"]
    assert blas, "numpy and scipy bring an OpenBLAS"
    assert {library["num_threads"] for library in blas} == {1}
