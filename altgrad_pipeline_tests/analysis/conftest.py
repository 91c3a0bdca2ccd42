"""The synthetic study and the analysis chain over it, computed once per test session."""

from __future__ import annotations

import polars as pl
import pytest

from altgrad_pipeline.analysis.layers import layer_metrics
from altgrad_pipeline.analysis.outcomes import run_outcomes
from altgrad_pipeline.analysis.summaries import run_summaries
from altgrad_pipeline_tests.analysis.synthetic import RunSpec, study


@pytest.fixture(scope="session")
def synthetic() -> tuple[list[RunSpec], pl.DataFrame, pl.DataFrame]:
    return study()


@pytest.fixture(scope="session")
def specs(synthetic) -> dict[str, RunSpec]:
    return {spec.run_id: spec for spec in synthetic[0]}


@pytest.fixture(scope="session")
def raw_runs(synthetic) -> pl.DataFrame:
    return synthetic[1]


@pytest.fixture(scope="session")
def histories(synthetic) -> pl.DataFrame:
    return synthetic[2]


@pytest.fixture(scope="session")
def outcomes(raw_runs, histories) -> pl.DataFrame:
    return run_outcomes(raw_runs, histories)


@pytest.fixture(scope="session")
def summaries(histories) -> pl.DataFrame:
    return run_summaries(histories)


@pytest.fixture(scope="session")
def per_layer(histories) -> pl.DataFrame:
    return layer_metrics(histories)
