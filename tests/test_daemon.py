"""The real `dagster-daemon` with the publish sensor on: a new commit gets published once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from assets.state import SHA_TAG
from dagster_project.demo import commit_tiny_model, git
from resources.registry.registry import Registry
from resources.storage import open_store
from tests.conftest import LLAMA, PROMPTS
from tests.processes import dagster_home, start, stop, wait_for
from tests.records import version_record

TRACKED = "test-org/tiny-llama-tracked"
KEY = TRACKED.replace("/", "__")


def sensor_ticks(instance: DagsterInstance) -> list:
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)]


@pytest.mark.vllm
def test_daemon_publishes_a_new_commit_as_a_new_suffix_exactly_once(env, tmp_path):
    git(env.mirror, "clone", "-q", str(env.mirror / LLAMA), str(env.mirror / TRACKED))
    old_sha = git(env.mirror / TRACKED, "rev-parse", "HEAD")
    env.write_catalog(
        yaml.safe_dump(
            {
                "hubs": {"mirror": {"kind": "git_mirror", "root": str(env.mirror)}},
                "models": [
                    {
                        "repo_id": TRACKED,
                        "hub": "mirror",
                        "prompts": PROMPTS,
                        "max_tokens": 6,
                        "dtype": "float32",
                    }
                ],
                "automation": {"watch": {"running": True, "interval_s": 5}},
            }
        )
    )
    # What was published before the sensor was switched on: the sensor must not redo it.
    registry = Registry(open_store(env.settings.store))
    registry.publish(version_record(TRACKED, "v1", hf_sha=old_sha))
    home = dagster_home()
    with DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        daemon = start(["dagster-daemon", "run", "-w", "workspace.yaml"], tmp_path / "daemon.log")
        try:
            wait_for(lambda: sensor_ticks(instance), 120, "a first sensor tick", daemon)
            assert instance.get_runs() == []
            assert all(t.status != TickStatus.FAILURE for t in sensor_ticks(instance))

            new_sha = commit_tiny_model(env.mirror / TRACKED, seed=7)
            started = time.monotonic()
            wait_for(
                lambda: len(registry.versions(TRACKED)) == 2, 360, "v2 in the registry", daemon
            )
            published_s = time.monotonic() - started

            # a tick that began once v2 was there saw it: no second run may come of it
            seen = time.time()
            wait_for(
                lambda: any(t.timestamp > seen and t.is_completed for t in sensor_ticks(instance)),
                60,
                "a tick after the publish",
                daemon,
            )
            assert all(t.status != TickStatus.FAILURE for t in sensor_ticks(instance))
        finally:
            stop(daemon)

        record = registry.resolve(f"{TRACKED}@latest")
        assert (record.suffix, record.hf_sha) == ("v2", new_sha)
        runs = instance.get_runs(RunsFilter(tags={SHA_TAG: new_sha}))
        assert len(runs) == 1
        assert runs[0].status == DagsterRunStatus.SUCCESS
        assert runs[0].tags["dagster/run_key"] == f"{KEY}@{new_sha}"
        assert len(instance.get_runs()) == 1
        assert record.dagster_run_id == runs[0].run_id
    print(f"new commit published {published_s:.0f}s after it was made ({Path(home)})")
