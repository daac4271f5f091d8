"""One launch contract for every run this project starts.

The CLI, the revision sensor and both schedules build their runs here, so a run carries
the same tags, op config and per-step Kubernetes config however it was started: a
tensor-parallel entry launched by the sensor asks for as many GPUs per step as one
launched by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagster import RunRequest

from assets.gpu import GpuPlacement
from assets.publish_jobs import ADAPTER_JOB, MODEL_JOB, PublishJob
from assets.state import (
    ALIASES_TAG,
    BASE_TAG,
    PARTITION_TAG,
    ROTATED_FROM_TAG,
    SHA_TAG,
    VERIFY_TAG,
)
from resources.catalog import AdapterTarget, ModelEntry


@dataclass(frozen=True)
class Launch:
    """What one run is: its job, partition, tags and run config."""

    job_name: str
    partition_key: str | None
    tags: dict[str, str] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)

    def run_request(self, run_key: str) -> RunRequest:
        return RunRequest(
            run_key=run_key,
            job_name=self.job_name,
            partition_key=self.partition_key,
            tags=self.tags,
            run_config=self.run_config,
        )


def _publish(
    job: PublishJob, key: str, model: ModelEntry, gpu: GpuPlacement, force: bool, tags: dict
) -> Launch:
    return Launch(
        job_name=job.name,
        partition_key=key,
        tags=tags,
        run_config={
            "ops": {job.serialize: {"config": {"force": force}}},
            **gpu.run_config(model),
        },
    )


def publish_model(
    entry: ModelEntry,
    gpu: GpuPlacement,
    *,
    sha: str | None = None,
    force: bool = False,
    aliases: list[str] | None = None,
    rotated_from: str | None = None,
) -> Launch:
    """Publish `entry` (at `sha`, else its ref resolved by the run), moving `aliases`."""
    tags = {SHA_TAG: sha} if sha else {}
    if aliases:
        tags[ALIASES_TAG] = ",".join(aliases)
    if rotated_from:
        tags[ROTATED_FROM_TAG] = rotated_from
    return _publish(MODEL_JOB, entry.key, entry, gpu, force, tags)


def publish_adapter(
    target: AdapterTarget,
    gpu: GpuPlacement,
    *,
    sha: str | None = None,
    base_suffix: str | None = None,
    force: bool = False,
) -> Launch:
    """Publish an adapter against its base's `base_suffix` (else the base's `latest`); its
    GPU steps need what the base's do."""
    tags = {SHA_TAG: sha} if sha else {}
    if base_suffix:
        tags[BASE_TAG] = base_suffix
    return _publish(ADAPTER_JOB, target.key, target.base, gpu, force, tags)


def reverify_model(entry: ModelEntry, suffix: str, sha: str, gpu: GpuPlacement) -> Launch:
    """A checks-only run over the published `entry@suffix`; publishes nothing."""
    return Launch(
        job_name="reverify_model",
        partition_key=None,  # Dagster 1.13 gives a checks-only job no partitions
        tags={PARTITION_TAG: entry.key, VERIFY_TAG: suffix, SHA_TAG: sha},
        run_config=gpu.run_config(entry),
    )
