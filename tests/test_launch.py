"""One launch contract: a run carries the same per-step GPU config whether the CLI, the
sensor or a schedule starts it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from dagster import build_schedule_context, build_sensor_context, validate_run_config

from assets.gpu import GPU_STEPS, GpuPlacement
from dagster_project import cli, launch
from dagster_project.cli import runner
from dagster_project.definitions import build_definitions
from resources.catalog import load_catalog
from resources.errors import ModelpubError
from resources.registry.registry import Registry
from resources.storage import LocalStore
from tests.conftest import LLAMA, catalog_yaml
from tests.records import version_record

KEY = LLAMA.replace("/", "__")


@pytest.fixture
def k8s_env(env):
    """A tensor-parallel entry, on the Kubernetes executor."""
    env.write_catalog(
        catalog_yaml(
            env.mirror,
            [{"repo_id": LLAMA, "tensor_parallel_size": 2, "gpu": {"node_selector": {"a": "b"}}}],
        )
    )
    env.settings = dataclasses.replace(env.settings, executor="k8s")
    return env


def gpus_per_step(run_config: dict) -> dict[str, str]:
    per_step = run_config["execution"]["config"]["per_step_k8s_config"]
    return {
        step: (
            config["container_config"]["resources"]["limits"]["nvidia.com/gpu"],
            config["pod_spec_config"]["node_selector"]["a"],
        )
        for step, config in per_step.items()
    }


def test_sensor_and_cli_launch_a_tensor_parallel_entry_alike(k8s_env, instance, monkeypatch):
    defs = build_definitions(k8s_env.settings)
    with build_sensor_context(instance=instance, resources=defs.resources) as context:
        [request] = defs.resolve_sensor_def("hub_revisions")(context).run_requests
    assert gpus_per_step(request.run_config) == dict.fromkeys(GPU_STEPS, ("2", "b"))
    job = defs.resolve_job_def(request.job_name)
    assert validate_run_config(job, request.run_config)

    launched = []
    monkeypatch.setattr(runner, "_run_publish", lambda settings, run, verbose: launched.append(run))
    runner.publish(k8s_env.settings, LLAMA)
    [by_hand] = launched
    assert (by_hand.job_name, by_hand.partition_key) == (request.job_name, request.partition_key)
    assert by_hand.run_config == request.run_config


def test_schedules_launch_with_the_same_gpu_config(k8s_env, instance):
    registry = Registry(LocalStore(k8s_env.settings.store))
    registry.publish(version_record(LLAMA, "v1", hf_sha="a" * 40, encrypted=True))
    registry.move_alias(LLAMA, "latest", "v1")  # a hand-written record: what schedules read
    instance.add_dynamic_partitions("models", [KEY])
    defs = build_definitions(k8s_env.settings)
    entry = load_catalog(k8s_env.settings.catalog).entry(KEY)
    expected = launch.publish_model(entry, GpuPlacement("k8s")).run_config
    for name in ("reverify_published", "rotate_keys"):
        schedule = defs.resolve_schedule_def(name)
        with build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime.now(UTC),
            resources=defs.resources,
            repository_def=defs.get_repository_def(),
        ) as context:
            [request] = list(schedule.evaluate_tick(context).run_requests)
        assert gpus_per_step(request.run_config) == gpus_per_step(expected), name


def test_the_cli_refuses_the_kubernetes_executor_clearly(k8s_env):
    with pytest.raises(ModelpubError, match="MODELPUB_EXECUTOR=k8s: `modelpub publish` runs"):
        cli.publish(k8s_env.settings, LLAMA)
