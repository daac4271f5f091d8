"""The publish sensor, evaluated with `build_sensor_context` on a real instance.

The hubs are real git mirrors, or the real `huggingface_hub` client against the Hub's
test double (tests/fake_hub.py) where the Hub's own behaviour (slow, failing, hanging)
is what is being tested.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import yaml
from dagster import SensorResult, build_sensor_context

from assets.state import BASE_TAG, SHA_TAG
from dagster_project.definitions import build_definitions
from dagster_project.demo import commit_tiny_model, git
from resources.registry.registry import Registry
from resources.sources import watch
from resources.storage import open_store
from tests.conftest import LLAMA, OPT, catalog_yaml, execute_request
from tests.fake_hub import FakeHub
from tests.records import version_record

LLAMA_KEY, OPT_KEY = LLAMA.replace("/", "__"), OPT.replace("/", "__")


def tick(env, instance, cursor: str | None = None) -> SensorResult:
    """One sensor evaluation, then what the daemon does with its partition requests."""
    defs = build_definitions(env.settings)
    sensor = defs.resolve_sensor_def("hub_revisions")
    with build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as ctx:
        result = sensor(ctx)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return result


def requested(result: SensorResult) -> dict[str, str]:
    """partition key -> requested sha, checking each request is well formed."""
    out = {}
    for request in result.run_requests:
        sha = request.tags[SHA_TAG]
        assert request.job_name == "publish_model"
        assert request.run_key == f"{request.partition_key}@{sha}"
        assert request.partition_key not in out
        out[request.partition_key] = sha
    return out


def head(env, repo_id: str) -> str:
    return git(env.mirror / repo_id, "rev-parse", "HEAD")


def test_first_tick_adds_partitions_and_requests_each_current_sha(env, instance):
    result = tick(env, instance)

    assert requested(result) == {LLAMA_KEY: head(env, LLAMA), OPT_KEY: head(env, OPT)}
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [[LLAMA_KEY, OPT_KEY]]
    assert set(instance.get_dynamic_partitions("models")) == {LLAMA_KEY, OPT_KEY}


def test_unchanged_ref_requests_nothing_and_a_new_commit_one_run(env, instance):
    first = tick(env, instance)
    again = tick(env, instance, first.cursor)

    assert again.run_requests == []
    assert again.dynamic_partitions_requests == []
    assert "no new commits" in again.skip_reason.skip_message

    new_sha = commit_tiny_model(env.mirror / LLAMA, seed=1)
    after_commit = tick(env, instance, again.cursor)
    assert requested(after_commit) == {LLAMA_KEY: new_sha}
    assert json.loads(after_commit.cursor)["seen"] == {LLAMA_KEY: new_sha, OPT_KEY: head(env, OPT)}


def test_lost_cursor_requests_the_same_run_keys_so_nothing_runs_twice(env, instance):
    first = tick(env, instance)
    from_scratch = tick(env, instance, cursor=None)

    # Dagster launches at most one run per sensor run key: a reset cursor repeats the same
    # runs (keys, jobs, partitions, tags and config), so none is launched twice.
    def runs(result):
        return sorted(
            (r.run_key, r.job_name, r.partition_key, r.tags, repr(r.run_config))
            for r in result.run_requests
        )

    assert runs(from_scratch) == runs(first) and len(runs(first)) == 2


def test_new_catalog_entry_gets_a_partition_and_a_run(env, instance):
    env.write_catalog(catalog_yaml(env.mirror, [{"repo_id": LLAMA}]))
    first = tick(env, instance)
    assert set(requested(first)) == {LLAMA_KEY}

    env.write_catalog(catalog_yaml(env.mirror, [{"repo_id": LLAMA}, {"repo_id": OPT}]))
    second = tick(env, instance, first.cursor)

    assert requested(second) == {OPT_KEY: head(env, OPT)}
    assert [r.partition_keys for r in second.dynamic_partitions_requests] == [[OPT_KEY]]


def test_hub_error_skips_only_that_entry_until_it_resolves(env, instance):
    missing = "test-org/not-mirrored-yet"
    missing_key = missing.replace("/", "__")
    env.write_catalog(catalog_yaml(env.mirror, [{"repo_id": missing}, {"repo_id": LLAMA}]))

    first = tick(env, instance)
    assert set(requested(first)) == {LLAMA_KEY}
    assert missing_key in instance.get_dynamic_partitions("models")

    shutil.copytree(env.mirror / OPT, env.mirror / missing)
    second = tick(env, instance, first.cursor)
    assert requested(second) == {missing_key: head(env, missing)}


def test_sha_already_in_the_registry_is_not_requested(env, instance):
    sha = head(env, LLAMA)
    Registry(open_store(env.settings.store)).publish(version_record(LLAMA, "v1", hf_sha=sha))

    result = tick(env, instance)

    assert set(requested(result)) == {OPT_KEY}
    assert json.loads(result.cursor)["seen"][LLAMA_KEY] == sha


def hub_catalog(env, hub: FakeHub, repos: list[str], **watch) -> None:
    """A catalog of `repos` on the Hub double, each a symlink to the tiny Llama's mirror."""
    for repo in repos:
        link = hub.root / repo
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(env.mirror / LLAMA)
    env.write_catalog(
        yaml.safe_dump(
            {
                "hubs": {"hf": {"kind": "huggingface", "endpoint": hub.endpoint}},
                "models": [{"repo_id": r, "hub": "hf", "prompts": ["Hi"]} for r in repos],
                "automation": {"watch": watch},
            }
        )
    )


def test_200_entries_on_a_slow_hub_are_polled_in_chunks_within_the_tick_budget(
    env, instance, monkeypatch
):
    pools: list[int] = []

    class CountedPool(watch.ThreadPoolExecutor):
        def __init__(self, max_workers: int, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(watch, "ThreadPoolExecutor", CountedPool)
    repos = [f"big-org/model-{i:03d}" for i in range(200)]
    sha = head(env, LLAMA)
    with FakeHub(env.root / "hub") as hub:
        # 0.25 s per answer: 50 s for the whole catalog one by one, near Dagster's 60 s
        # limit. The first answers wait until 8 requests (the sensor's workers) are in
        # flight together: polled one by one, the tick would run out of its budget.
        hub.delays["*"], hub.together = 0.25, 8
        hub_catalog(env, hub, repos, chunk=50, budget_s=30)
        cursor, seen = None, {}
        for _ in range(4):
            result = tick(env, instance, cursor)
            cursor = result.cursor
            # Its whole chunk answered within the tick's budget: nothing was deferred.
            assert len(requested(result)) == 50
            for key, requested_sha in requested(result).items():
                assert key not in seen
                seen[key] = requested_sha
        assert seen == {r.replace("/", "__"): sha for r in repos}
        assert sorted(Counter(hub.requests).values()) == [1] * 200
        assert hub.most_in_flight >= 8  # a barrier of 8: one by one, the budget ran out
        assert set(pools) == {8}  # and no more than the sensor's 8 workers at a time

        # The next round starts again at the first chunk: only the entry that moved runs.
        moved = hub.root / repos[3]
        moved.unlink()
        moved.symlink_to(env.mirror / OPT)
        fifth = tick(env, instance, cursor)
    assert requested(fifth) == {repos[3].replace("/", "__"): head(env, OPT)}


def test_failing_and_hanging_hub_answers_do_not_hold_up_the_tick(env, instance):
    repos = ["org/ok", "org/fails", "org/hangs"]
    sha = head(env, LLAMA)
    with FakeHub(env.root / "hub") as hub:
        # org/hangs answers only when released: the tick must return without it
        hub.failing, hub.held = {"org/fails"}, {"org/hangs"}
        hub_catalog(env, hub, repos, budget_s=3)

        first = tick(env, instance)
        assert requested(first) == {"org__ok": sha}
        assert any("org/hangs" in r for r in hub.requests)
        assert not any("org/hangs" in a for a in hub.answered)

        hub.release()
        hub.failing, hub.held = set(), set()
        second = tick(env, instance, first.cursor)
    assert requested(second) == {"org__fails": sha, "org__hangs": sha}


def test_adapters_are_watched_too(env, instance):
    from dagster_project.demo import commit_tiny_adapter

    adapter = "test-org/tiny-lora"
    sha = commit_tiny_adapter(env.mirror / adapter, env.mirror / LLAMA, LLAMA)
    env.write_catalog(
        catalog_yaml(env.mirror, [{"repo_id": LLAMA, "adapters": [{"repo_id": adapter}]}])
    )
    # First tick: the base has no published version, so only the base is requested; the
    # adapter is not marked seen, and is asked again once the base is published.
    first = tick(env, instance)
    assert [r.job_name for r in first.run_requests] == ["publish_model"]
    again = tick(env, instance, first.cursor)
    assert again.run_requests == []

    registry = Registry(open_store(env.settings.store))  # what the base's run leaves
    registry.publish(version_record(LLAMA, "v1", hf_sha=head(env, LLAMA)))
    registry.move_alias(LLAMA, "latest", "v1")
    first = tick(env, instance, again.cursor)
    runs = {r.job_name: r for r in first.run_requests}
    assert set(runs) == {"publish_adapter"}
    key = runs["publish_adapter"].partition_key
    assert runs["publish_adapter"].run_key == f"adapter:{key}@{sha}+{LLAMA}@v1"
    assert runs["publish_adapter"].tags[BASE_TAG] == "v1"
    assert key in instance.get_dynamic_partitions("adapters")

    new_sha = commit_tiny_adapter(env.mirror / adapter, env.mirror / LLAMA, LLAMA, seed=1)
    second = tick(env, instance, first.cursor)
    assert [(r.job_name, r.tags[SHA_TAG]) for r in second.run_requests] == [
        ("publish_adapter", new_sha)
    ]


def test_an_adapter_follows_its_base_to_each_new_version(env, instance):
    """A base's new version gets its adapters published against it; one already on the
    base's latest is not asked for again."""
    from dagster_project.demo import commit_tiny_adapter

    adapter = "test-org/tiny-lora"
    sha = commit_tiny_adapter(env.mirror / adapter, env.mirror / LLAMA, LLAMA)
    env.write_catalog(
        catalog_yaml(env.mirror, [{"repo_id": LLAMA, "adapters": [{"repo_id": adapter}]}])
    )
    registry = Registry(open_store(env.settings.store))
    registry.publish(version_record(LLAMA, "v1", hf_sha=head(env, LLAMA)))
    registry.move_alias(LLAMA, "latest", "v1")
    on_v1 = dict(kind="adapter", rank=8, base_repo_id=LLAMA, base_suffix="v1", base_hf_sha="0" * 40)
    registry.publish(version_record(adapter, "v1", hf_sha=sha, **on_v1))  # its v1 run's record

    first = tick(env, instance)
    assert [r.job_name for r in first.run_requests] == []  # base and adapter both current

    registry.publish(version_record(LLAMA, "v2", hf_sha="b" * 40))  # a new base version
    registry.move_alias(LLAMA, "latest", "v2")
    second = tick(env, instance, first.cursor)
    [run] = second.run_requests
    assert (run.job_name, run.tags[SHA_TAG], run.tags[BASE_TAG]) == ("publish_adapter", sha, "v2")
    assert run.run_key.endswith(f"@{sha}+{LLAMA}@v2")

    on_v2 = on_v1 | {"base_suffix": "v2"}
    registry.publish(version_record(adapter, "v2", hf_sha=sha, **on_v2))  # that run published
    assert tick(env, instance, second.cursor).run_requests == []


@pytest.mark.vllm
def test_an_adapter_found_with_its_base_is_published_after_it(env, instance):
    """The sensor's first tick for a new entry sees the base and its adapter at once: the
    base runs first, and the next tick publishes the adapter against it; when the base
    gets a new version, the adapter follows it."""
    from dagster_project.demo import commit_tiny_adapter

    adapter = "test-org/tiny-lora"
    commit_tiny_adapter(env.mirror / adapter, env.mirror / LLAMA, LLAMA)
    env.write_catalog(
        catalog_yaml(env.mirror, [{"repo_id": LLAMA, "adapters": [{"repo_id": adapter}]}])
    )
    first = tick(env, instance)
    [base_run] = first.run_requests
    assert execute_request(env, instance, base_run).success
    second = tick(env, instance, first.cursor)
    [adapter_run] = second.run_requests
    assert adapter_run.job_name == "publish_adapter"
    assert execute_request(env, instance, adapter_run).success
    registry = Registry(open_store(env.settings.store))
    record = registry.resolve(adapter)
    assert (record.kind, record.base_repo_id, record.base_suffix) == ("adapter", LLAMA, "v1")

    # A new base commit: the base is published as v2, then the adapter against v2.
    commit_tiny_model(env.mirror / LLAMA, seed=7, message="new weights")
    third = tick(env, instance, second.cursor)
    [base_v2] = third.run_requests
    assert base_v2.job_name == "publish_model" and execute_request(env, instance, base_v2).success
    fourth = tick(env, instance, third.cursor)
    [follow] = fourth.run_requests
    assert (follow.job_name, follow.tags[BASE_TAG]) == ("publish_adapter", "v2")
    assert execute_request(env, instance, follow).success
    record = registry.resolve(adapter)
    assert (record.suffix, record.base_suffix, record.hf_sha) == (
        "v2",
        "v2",
        adapter_run.tags[SHA_TAG],
    )
