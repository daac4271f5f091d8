"""One dynamic partition per catalog entry, keyed by the sanitised repo id, and one per
adapter, keyed `<base key>--<adapter key>` (see `ModelEntry.adapter_key`)."""

from dagster import DynamicPartitionsDefinition

models_partitions = DynamicPartitionsDefinition(name="models")
adapters_partitions = DynamicPartitionsDefinition(name="adapters")
