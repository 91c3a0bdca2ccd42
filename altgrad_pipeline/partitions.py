"""One partition per FP8 format. Dynamic, so a new format (E2M5, say) becomes a new partition
with no code change: the refresh command and the sensor register the formats they find."""

import dagster as dg

fp8_format_partitions = dg.DynamicPartitionsDefinition(name="fp8_format")
