"""Weights & Biases runs: local run folders and their `.wandb` transaction logs, the W&B API,
history exports, media of API runs.

From the bottom: `names` (the one rule for W&B's local names), `framing` (blocks and CRC-checked
chunks of a `.wandb` log, both block layouts), `records` (what a `Record` holds: the upb view,
item names, config and summary folds), `fastpath` (history and summary records decoded with numpy
over the wire format), `history` (items to the long table, media values), `log` (`WandbLogReader`:
one `.wandb` file), `local` (run folders, resumed runs, SDK 0.8 folders), `export` (history
exports), `api` (`wandb://` stores), `media_api` (tables and histograms of API runs).
"""
