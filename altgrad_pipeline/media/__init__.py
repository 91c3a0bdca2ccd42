"""W&B media logged in run histories: the media index (`run_media`), the rows of W&B Tables
(`media_tables`), histograms over training (`histograms`), per-key run summaries
(`run_summaries`) and the attention-head and histogram figures of the media report."""
