"""Training dynamics (learning-curve fits, knee, plateau) and sweep summaries (varying
hyperparameters, per-setting statistics over seeds): pure Polars/SciPy modules, Dagster wiring
in `assets.py`."""
