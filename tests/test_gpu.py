"""GPU steps declare what they need from Kubernetes, and per-entry needs reach their pods,
checked with dagster-k8s's own parsing, merging and Job construction."""

import dataclasses
import json
from pathlib import Path

import pytest
from dagster import validate_run_config
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from assets.gpu import GPU_STEPS, K8S_CONFIG_TAG, GpuPlacement
from assets.publish_jobs import MODEL_JOB
from dagster_project.definitions import build_definitions
from resources.catalog import load_catalog
from resources.errors import ModelpubError
from resources.settings import Settings
from tests.conftest import LLAMA, OPT


def step_pod(step_tags: dict, per_step: dict | None = None):
    """The pod spec dagster-k8s's step handler builds for a step: its op tags, then the
    executor's per-step config on top (as K8sStepHandler merges them)."""
    context = K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags))
    if per_step is not None:
        override = UserDefinedDagsterK8sConfig.from_dict(per_step)
        context = context.merge(K8sContainerContext(run_k8s_config=override))
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="modelpub:0.1.0", dagster_home="/opt/dagster/dagster_home"),
        ["dagster", "api", "execute_step"],
        "dagster-step-test",
        user_defined_k8s_config=context.run_k8s_config,
    )
    return job.spec.template.spec


def test_gpu_steps_and_only_they_ask_for_a_gpu(env):
    defs = build_definitions(env.settings)
    nodes = {
        node.name: node.definition
        for job in ("publish_model", "publish_adapter")
        for node in defs.resolve_job_def(job).graph.nodes
    }
    assert {name for name, op in nodes.items() if K8S_CONFIG_TAG in op.tags} == set(GPU_STEPS)
    assert {name for name, op in nodes.items() if op.pool == "gpu"} == set(GPU_STEPS)
    assert {"model_snapshot", "published_version", "tensorized_adapter"} < set(nodes)
    for step in GPU_STEPS:
        pod = step_pod(nodes[step].tags)
        assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
        assert pod.containers[0].resources.requests == {"nvidia.com/gpu": "1"}
        assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
        assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [
            ("nvidia.com/gpu", "Exists", "NoSchedule")
        ]
    pod = step_pod(nodes["model_snapshot"].tags)
    assert pod.containers[0].resources.limits is None and not pod.node_selector


def test_an_entrys_gpu_count_and_nodes_reach_its_gpu_step_pods(env):
    text = Path(env.settings.catalog).read_text()
    env.write_catalog(
        text.replace(
            f"repo_id: {LLAMA}",
            f"repo_id: {LLAMA}\n  tensor_parallel_size: 2\n"
            "  gpu: {node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}",
        )
    )
    catalog = load_catalog(env.settings.catalog)
    llama, opt = catalog.entry(LLAMA.replace("/", "__")), catalog.entry(OPT.replace("/", "__"))
    assert GpuPlacement("multiprocess").run_config(llama) == {}
    assert GpuPlacement("k8s").run_config(opt) == {}

    settings = dataclasses.replace(env.settings, executor="k8s")
    job = build_definitions(settings).resolve_job_def("publish_model")
    assert job.executor_def.name == "k8s"
    run_config = GpuPlacement("k8s").run_config(llama)
    assert validate_run_config(job, run_config)  # the k8s executor's schema accepts it
    per_step = run_config["execution"]["config"]["per_step_k8s_config"]
    assert set(per_step) == set(GPU_STEPS)
    for step in ("tensorized_model", "roundtrip_checks"):
        pod = step_pod(job.graph.node_named(step).definition.tags, per_step[step])
        assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "2"}
        assert pod.node_selector == {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        }
        assert len(pod.tolerations) == 1


def test_the_definitions_take_gpu_labels_and_retry_delay_from_their_settings(env):
    """Built from the `Settings` handed in, not from the environment at import time."""
    gke = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    settings = dataclasses.replace(env.settings, gpu_node_selector=gke, retry_delay_s=7.0)
    job = build_definitions(settings).resolve_job_def("publish_model")
    pod = step_pod(job.graph.node_named("tensorized_model").definition.tags)
    assert pod.node_selector == gke
    delays = {
        node.name: node.definition.retry_policy.delay
        for node in job.graph.nodes
        if node.definition.retry_policy is not None
    }
    assert delays == dict.fromkeys(MODEL_JOB.steps, 7.0)  # every asset step, the checks none


def test_gpu_node_labels_come_from_the_environment():
    def labels(environ: dict) -> dict:
        return Settings.from_env(environ).gpu_node_selector

    gke = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert labels({"MODELPUB_GPU_NODE_SELECTOR": json.dumps(gke)}) == gke
    assert labels({}) == {"nvidia.com/gpu.present": "true"}
    for bad in ("nvidia-l4", '["a"]', '{"a": 1}'):
        with pytest.raises(ModelpubError, match="MODELPUB_GPU_NODE_SELECTOR"):
            labels({"MODELPUB_GPU_NODE_SELECTOR": bad})


def test_an_unknown_executor_is_refused(env):
    refused = "MODELPUB_EXECUTOR='celery': use 'multiprocess' or 'k8s'"
    with pytest.raises(ModelpubError, match=refused):
        build_definitions(dataclasses.replace(env.settings, executor="celery"))
