"""What the steps that need an accelerator ask Kubernetes for.

`tensorized_model` (vLLM serializes the model from the GPU), `roundtrip_checks` and
`adapter_roundtrip_checks` (vLLM generates) run on GPU nodes; the other steps do not. On
Kubernetes each step is a pod launched by dagster-k8s's `k8s_job_executor`, which reads
the step's `dagster-k8s/config` op tag: `GpuPlacement.op_tags` requests one
`nvidia.com/gpu`, selects GPU nodes (by MODELPUB_GPU_NODE_SELECTOR, a JSON object of node
labels, where the cluster labels them differently from NVIDIA's GPU feature discovery)
and tolerates the GPU taint. Those tags are fixed when the definitions are built, so an
entry that needs more (a tensor-parallel model) or other nodes gets them per run:
`GpuPlacement.run_config(entry)` is the run config to launch its run with (the CLI's
`publish` and any sensor or schedule use it). Run-level `dagster-k8s/config` tags would
not do: dagster-k8s applies those to the run's own pod only, never to the step pods.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from assets.publish_jobs import GPU_STEPS
from resources.catalog import ModelEntry
from resources.settings import DEFAULT_NODE_SELECTOR, Settings

K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
# GPU node pools are usually tainted so that only pods asking for GPUs land there.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class GpuPlacement:
    """Where the GPU steps run: the executor, and the labels of the cluster's GPU nodes."""

    executor: str
    node_selector: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_NODE_SELECTOR))

    @classmethod
    def of(cls, settings: Settings) -> GpuPlacement:
        return cls(settings.executor, settings.gpu_node_selector)

    def k8s_config(self, count: int = 1, node_selector: Mapping[str, str] | None = None) -> dict:
        """A `dagster-k8s/config` value: `count` GPUs on a node with the GPU labels (plus
        `node_selector`), tolerating the GPU taint."""
        return {
            "container_config": {
                "resources": {
                    "requests": {GPU_RESOURCE: str(count)},
                    "limits": {GPU_RESOURCE: str(count)},
                }
            },
            "pod_spec_config": {
                "node_selector": {**self.node_selector, **(node_selector or {})},
                "tolerations": [GPU_TOLERATION],
            },
        }

    def op_tags(self) -> dict[str, str]:
        """The op tags of a GPU step: one GPU on a GPU node."""
        return {K8S_CONFIG_TAG: json.dumps(self.k8s_config())}

    def run_config(self, entry: ModelEntry) -> dict:
        """Run config giving `entry`'s GPU steps its GPU count and node selector.

        Only the Kubernetes executor has per-step pod config; elsewhere (one machine) this
        is empty, and an entry without overrides needs nothing beyond the op tags either.
        """
        if self.executor != "k8s" or (entry.gpu_count == 1 and not entry.gpu.node_selector):
            return {}
        config = self.k8s_config(entry.gpu_count, entry.gpu.node_selector)
        steps = dict.fromkeys(GPU_STEPS, config)
        return {"execution": {"config": {"per_step_k8s_config": steps}}}
