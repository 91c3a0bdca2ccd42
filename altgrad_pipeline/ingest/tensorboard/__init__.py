"""TensorBoard event files: a directory that directly holds `events.out.tfevents.*` files is one
run (nested directories are separate runs, as TensorBoard shows them; files of one directory are
read in name order, as TensorBoard does).

File format: TFRecord framing (u64 length, masked CRC-32C of the length, the data, masked CRC-32C
of the data) around `Event` protobufs. Scalars arrive two ways:
- `simple_value` (float32: TF1, PyTorch `SummaryWriter`, Lightning, tensorboardX);
- rank-0 tensors of the `scalars` plugin (TF2 `tf.summary.scalar`, float32 or float64, in
  `float_val`/`double_val` or `tensor_content`); the plugin metadata may be written only on a
  tag's first event, so the plugin of a tag is remembered across events and files.

Event files name no project: a string `project` hyperparameter (altgrad's TrainConfig and many
trainers log the tracker project among their settings) is taken as the run's project, so runs of
one study logged to W&B and to TensorBoard are compared as one study.

A file still being written is read up to its last whole record; the next read of the grown file
continues from there. `ended` is always False: event files never record an end, so the file age
against the grace period decides between running and stopped.

Modules: `framing` (TFRecord framing, bulk CRC-32C), `events` (one event file's records decoded,
`EventFile`), `source` (runs, hyperparameters, `TensorBoardSource`).
"""

from altgrad_pipeline.ingest.tensorboard.source import TensorBoardSource

__all__ = ["TensorBoardSource"]
