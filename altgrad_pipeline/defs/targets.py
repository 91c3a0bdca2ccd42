"""Which assets a refresh touches, read from the loaded asset graph rather than a hard-coded list,
so assets added later with the format partitions (layer_metrics, ...) are refreshed too."""

from __future__ import annotations

import dagster as dg

from altgrad_pipeline.defs.partitions import fp8_format_partitions


def format_partitioned_keys(repository: dg.RepositoryDefinition) -> list[dg.AssetKey]:
    """Every materializable asset partitioned by FP8 format."""
    graph = repository.asset_graph
    return sorted(
        (k for k in graph.materializable_asset_keys if graph.get(k).partitions_def == fp8_format_partitions),
        key=lambda k: k.to_user_string(),
    )


def run_store_root_keys(repository: dg.RepositoryDefinition) -> list[dg.AssetKey]:
    """Unpartitioned assets read straight from the run stores (no upstream asset, no automation
    condition), such as `ingest_issues`: they go stale whenever runs change."""
    graph = repository.asset_graph
    return sorted(
        (
            k
            for k in graph.materializable_asset_keys
            if graph.get(k).partitions_def is None
            and not graph.get(k).parent_keys
            and graph.get(k).automation_condition is None
        ),
        key=lambda k: k.to_user_string(),
    )
