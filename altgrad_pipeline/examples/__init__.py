"""Example altgrad runs written with the real wandb SDK (offline), with a known ground truth.

No real altgrad logs exist (upstream commits none), so ingest, analysis, reports and sensors are
tested against a store whose answers are known in advance. Each run is described by an
`ExampleRunSpec` (format, optimizer, seed, length, failure behaviour and effect sizes), its
per-step metrics are simulated deterministically from the spec (`simulate_history`), and
`write_run` logs them through `wandb.init(mode="offline")` exactly as altgrad's `Trainer` does
(`run.log(metrics, step=step)`, one call per step, same keys, same NaN-patience stop).
`write_example_runs` writes the default study (`default_study`) and its truths (`EXPECTED.json`).

- `specs`: `ExampleRunSpec`, the nanoGPT geometry, the default study's design (`example_spec`,
  `default_study`);
- `curves`: the simulated metrics of a spec (`simulate_history`);
- `failure_report`: the FormatExperimentRunner report of a NaN collapse;
- `writing`: runs written through the wandb SDK (`write_run`, a SIGKILLed run, `clone_run`,
  `write_example_runs`);
- `truth`: the expected answers (`RunTruth`, `StudyTruth`), derived from the specs.

The default study's truths:

- BF16 has the lowest loss floor; among FP8 formats E3M4 is the sweet spot, then E5M2, E1M6, E0M7.
- Best FP8 format per layer type: embedding E5M2, attention E3M4, mlp E1M6, norm E3M4.
- E7M0 diverges and its loss is NaN from step 37; NaN patience (10) stops it after 9 NaN losses,
  so its last logged step is 45; it still finishes cleanly (exit record, code 0). A
  FormatExperimentRunner failure report is written for each E7M0 run.
- E0M7's cumulative `quantization/bit_stall_rate` climbs past `bit_stall_threshold` (0.5) and
  stays above; the run reaches max_steps.
- ManifoldAdamW changes the final loss by -0.08 on E5M2, 0 on E3M4, -0.10 on E0M7, and scales
  the per-step bit-stall rate by 0.6, 0.85 and 0.85.
- One extra E1M6 run (seed 4) is killed with SIGKILL while training step 250 (see `write_run`).

`write_run` and `write_example_runs` start processes with the spawn method: a script calling
them must guard its entry point with `if __name__ == "__main__":`.
"""

from altgrad_pipeline.examples.curves import simulate_history, total_parameter_count
from altgrad_pipeline.examples.failure_report import failure_report_markdown, write_failure_report
from altgrad_pipeline.examples.specs import (
    BASELINE_FORMAT,
    DEFAULT_FORMAT_DESIGN,
    DEFAULT_MANIFOLD_EFFECT,
    LAYER_TYPES,
    OPTIMIZERS,
    ExampleRunSpec,
    default_study,
    example_spec,
    layer_type,
    nanogpt_parameters,
)
from altgrad_pipeline.examples.truth import RunTruth, StudyTruth
from altgrad_pipeline.examples.writing import (
    ExampleStudy,
    WrittenRun,
    clone_run,
    wandb_records,
    write_example_runs,
    write_run,
)

__all__ = [
    "BASELINE_FORMAT",
    "DEFAULT_FORMAT_DESIGN",
    "DEFAULT_MANIFOLD_EFFECT",
    "LAYER_TYPES",
    "OPTIMIZERS",
    "ExampleRunSpec",
    "ExampleStudy",
    "RunTruth",
    "StudyTruth",
    "WrittenRun",
    "clone_run",
    "default_study",
    "example_spec",
    "failure_report_markdown",
    "layer_type",
    "nanogpt_parameters",
    "simulate_history",
    "total_parameter_count",
    "wandb_records",
    "write_example_runs",
    "write_failure_report",
    "write_run",
]
