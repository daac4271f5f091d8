"""Transient hub errors are retried with backoff; permanent ones fail once, clearly."""

import pytest
from dagster import AssetSelection, DagsterEventType, DagsterInstance, materialize

from assets.publish_jobs import MODEL_JOB
from dagster_project.definitions import build_definitions
from tests.conftest import LLAMA
from tests.fake_hub import FakeHub

KEY = LLAMA.replace("/", "__")


def snapshot_run(env, endpoint: str, ref: str = "main"):
    env.write_catalog(
        "hubs:\n"
        f"  hf: {{kind: huggingface, endpoint: '{endpoint}'}}\n"
        "models:\n"
        f"  - {{repo_id: {LLAMA}, hub: hf, ref: {ref}, prompts: [hi]}}\n"
    )
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("models", [KEY])
    defs = build_definitions(env.settings)
    return materialize(
        defs.assets,
        selection=AssetSelection.assets(MODEL_JOB.fetch),
        instance=instance,
        partition_key=KEY,
        resources=defs.resources,
        raise_on_error=False,
    )


def retries(result) -> int:
    return sum(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


def test_overloaded_hub_is_retried_and_the_step_succeeds(env, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(env.mirror) as hub:
        hub.fail_next = 1  # the first attempt meets a 503
        result = snapshot_run(env, hub.endpoint)
    assert result.success
    assert retries(result) >= 1
    metadata = result.asset_materializations_for_node("model_snapshot")[0].metadata
    assert len(metadata["sha"].value) == 40


def test_missing_revision_fails_once_without_retries(env):
    with FakeHub(env.mirror) as hub:
        result = snapshot_run(env, hub.endpoint, ref="no-such-tag")
    assert not result.success
    assert retries(result) == 0
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "revision 'no-such-tag' not found" in str(failure.event_specific_data.error.message)


@pytest.mark.slow
def test_a_hub_that_rate_limits_until_retries_run_out_fails_clearly(env, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(env.mirror) as hub:
        hub.fail_next, hub.fail_status = 10**6, 429  # rate-limited for good
        result = snapshot_run(env, hub.endpoint)
    assert not result.success
    assert retries(result) == 3  # transient_retry's max_retries, then it gives up
    failure = next(e for e in result.all_events if e.is_step_failure).event_specific_data
    assert "answered 429" in failure.user_failure_data.description  # what the CLI prints
    assert not list((env.root / "store").rglob("*.json"))  # nothing reserved or published
