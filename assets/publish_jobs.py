"""The publish jobs described once: each one's steps by role, for whoever launches a run
(the force flag goes to its serialize step), reads its outcome (the publish step writes
the record) or places it (the GPU steps ask Kubernetes for GPUs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishJob:
    name: str  # the Dagster job
    partitions: str  # its dynamic partitions: one per catalog entry or adapter
    fetch: str  # pins the sha and fetches the snapshot
    serialize: str  # tensorizes and uploads (takes `force`)
    checks: str  # the blocking round-trip checks on `serialize`
    publish: str  # writes the version record and moves aliases
    gpu_steps: tuple[str, ...]  # the steps that run on a GPU node

    @property
    def steps(self) -> tuple[str, str, str]:
        """Its assets, in the order they run (the checks run with `serialize`)."""
        return self.fetch, self.serialize, self.publish


MODEL_JOB = PublishJob(
    name="publish_model",
    partitions="models",
    fetch="model_snapshot",
    serialize="tensorized_model",
    checks="roundtrip_checks",
    publish="published_version",
    gpu_steps=("tensorized_model", "roundtrip_checks"),  # vLLM serializes and generates
)
ADAPTER_JOB = PublishJob(
    name="publish_adapter",
    partitions="adapters",
    fetch="adapter_snapshot",
    serialize="tensorized_adapter",
    checks="adapter_roundtrip_checks",
    publish="published_adapter",
    gpu_steps=("adapter_roundtrip_checks",),  # vLLM generates with the adapter
)
PUBLISH_JOBS = {job.name: job for job in (MODEL_JOB, ADAPTER_JOB)}
GPU_STEPS = tuple(step for job in PUBLISH_JOBS.values() for step in job.gpu_steps)
