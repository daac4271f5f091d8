"""Re-executing a failed publish run from failure, with Dagster's re-execution API (what
the UI's "Re-execute from failure" does): the new run reads what its parent staged and
validated, and publishes that version."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, ReexecutionOptions, execute_job, reconstructable

from assets.state import ALIASES_TAG
from dagster_project.definitions import build_definitions
from resources.registry.registry import Registry
from resources.settings import Settings
from resources.storage import LocalStore
from tests.conftest import LLAMA

pytestmark = pytest.mark.vllm

KEY = LLAMA.replace("/", "__")


def publish_model_job():
    """The job as the code location builds it (reconstructable: its steps run in their own
    processes, as under the daemon)."""
    return build_definitions(Settings.from_env()).resolve_job_def("publish_model")


def test_a_run_failed_at_the_publish_step_is_reexecuted_from_failure(env, instance):
    instance.add_dynamic_partitions("models", [KEY])
    job = reconstructable(publish_model_job)
    # An alias name the publish step refuses: it fails after the checks passed.
    tags = {"dagster/partition": KEY, ALIASES_TAG: "Not An Alias"}
    with execute_job(job, instance=instance, tags=tags, raise_on_error=False) as failed:
        assert not failed.success
        failed_steps = [e.step_key for e in failed.all_events if e.is_step_failure]
        assert failed_steps == ["published_version"]  # once: a bad tag is not retried
    registry = Registry(LocalStore(env.settings.store))
    assert registry.versions(LLAMA) == []

    options = ReexecutionOptions.from_failure(failed.run_id, DagsterInstance.get())
    with execute_job(
        job,
        instance=instance,
        reexecution_options=options,
        tags={"dagster/partition": KEY, ALIASES_TAG: "latest"},  # the tag fixed
        raise_on_error=False,
    ) as again:
        assert again.success
        ran = {e.step_key for e in again.all_events if e.is_step_success}
        assert ran == {"published_version"}  # nothing staged or checked again
    record = registry.resolve(LLAMA)
    assert record.suffix == "v1" and record.dagster_run_id == again.run_id
    assert record.validation_report.endswith(f"/v1/{failed.run_id}.json")
    assert record.validation["passed"]
