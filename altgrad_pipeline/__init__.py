"""altgrad-pipeline: a Dagster asset graph from experiment runs to trustworthy analysis.

Notebook helpers are re-exported here: `select_runs`, `differing_config`, `load_curves`, and
`pivot_history` to widen chosen history keys.
"""

from altgrad_pipeline.ingest.tables import pivot_history
from altgrad_pipeline.notebook import differing_config, load_curves, select_runs

__all__ = ["differing_config", "load_curves", "pivot_history", "select_runs"]
