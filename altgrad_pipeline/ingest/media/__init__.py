"""W&B media logged in run histories, decoded at ingest: the media index (`values`: `run_media`,
`histograms`), the rows of W&B Tables (`tables`), and where a run's media and table files are read
from (`store`: local run folders or the W&B API)."""
