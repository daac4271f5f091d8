"""One dynamic partition per catalog entry, keyed by the sanitised repo id."""

from dagster import DynamicPartitionsDefinition

models_partitions = DynamicPartitionsDefinition(name="models")
