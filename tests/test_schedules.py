"""Scheduled republishing: re-verify and key-rotation runs for the versions behind aliases."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from dagster import RunRequest, ScheduleDefinition, build_schedule_context

from assets.state import ALIASES_TAG, PARTITION_TAG, ROTATED_FROM_TAG, SHA_TAG, VERIFY_TAG
from dagster_project.cli import publish
from dagster_project.definitions import build_definitions
from resources.catalog import CatalogError, is_cron, load_catalog
from resources.registry.registry import Registry
from resources.storage import open_store
from tests.conftest import LLAMA, OPT, catalog_yaml, execute_request
from tests.records import version_record

LLAMA_KEY, OPT_KEY = LLAMA.replace("/", "__"), OPT.replace("/", "__")
TICK = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


def with_automation(env, models: list[dict], **automation) -> None:
    catalog = yaml.safe_load(catalog_yaml(env.mirror, models))
    env.write_catalog(yaml.safe_dump({**catalog, "automation": automation}))


def evaluate(env, instance, name: str) -> list[RunRequest]:
    defs = build_definitions(env.settings)
    schedule = defs.resolve_schedule_def(name)
    with build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        resources=defs.resources,
        repository_def=defs.get_repository_def(),
    ) as ctx:
        return list(schedule.evaluate_tick(ctx).run_requests or [])


def fake_versions(env) -> Registry:
    """Registry records as earlier publish runs left them (only the fields read here)."""
    registry = Registry(open_store(env.settings.store))
    for repo, suffix, sha, encrypted in [
        (LLAMA, "v1", "a" * 40, True),
        (LLAMA, "v2", "b" * 40, True),
        (OPT, "v1", "c" * 40, False),
    ]:
        registry.publish(version_record(repo, suffix, hf_sha=sha, encrypted=encrypted))
    registry.move_alias(LLAMA, "latest", "v2")
    registry.move_alias(LLAMA, "stable", "v1")
    registry.move_alias(OPT, "latest", "v1")
    return registry


def test_reverify_requests_one_checks_run_per_version_behind_the_aliases(env, instance):
    fake_versions(env)
    with_automation(
        env,
        [{"repo_id": LLAMA}, {"repo_id": OPT}],
        reverify={"cron": "0 3 * * *", "aliases": ["latest", "stable"]},
    )

    requests = evaluate(env, instance, "reverify_published")

    got = {(r.tags[PARTITION_TAG], r.tags[VERIFY_TAG], r.tags[SHA_TAG]) for r in requests}
    assert got == {
        (LLAMA_KEY, "v2", "b" * 40),
        (LLAMA_KEY, "v1", "a" * 40),
        (OPT_KEY, "v1", "c" * 40),
    }
    assert len({r.run_key for r in requests}) == 3
    assert all(TICK.isoformat() in r.run_key for r in requests)


def test_rotation_requests_a_forced_publish_of_the_same_sha_moving_its_aliases(env, instance):
    registry = fake_versions(env)
    registry.move_alias(LLAMA, "stable", "v2")
    instance.add_dynamic_partitions("models", [LLAMA_KEY, OPT_KEY])
    with_automation(
        env,
        [{"repo_id": LLAMA}, {"repo_id": OPT}],
        rotate_keys={"cron": "0 4 1 * *", "aliases": ["latest", "stable"]},
    )

    [request] = evaluate(env, instance, "rotate_keys")  # OPT's only version is unencrypted

    assert request.partition_key == LLAMA_KEY
    assert request.run_config == {"ops": {"tensorized_model": {"config": {"force": True}}}}
    assert request.tags[SHA_TAG] == "b" * 40
    assert request.tags[ALIASES_TAG] == "latest,stable"
    assert request.tags[ROTATED_FROM_TAG] == "v2"


def test_nothing_published_yet_skips_the_tick(env, instance):
    with_automation(env, [{"repo_id": LLAMA}], reverify={"cron": "0 3 * * *"})
    defs = build_definitions(env.settings)
    with build_schedule_context(
        instance=instance, scheduled_execution_time=TICK, resources=defs.resources
    ) as ctx:
        data = defs.resolve_schedule_def("reverify_published").evaluate_tick(ctx)
    assert not data.run_requests
    assert "no published version behind latest" in data.skip_message


def test_schedule_settings_come_from_the_catalog_and_bad_ones_are_refused(env):
    with_automation(
        env,
        [{"repo_id": LLAMA}],
        reverify={"cron": "30 2 * * 1", "timezone": "Europe/Berlin", "running": True},
    )
    schedule = build_definitions(env.settings).resolve_schedule_def("reverify_published")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 2 * * 1", "Europe/Berlin")
    assert schedule.default_status.value == "RUNNING"

    with_automation(env, [{"repo_id": LLAMA}], rotate_keys={"cron": "every day"})
    with pytest.raises(CatalogError, match=r"automation\.rotate_keys\.cron: .*not a cron string"):
        load_catalog(env.settings.catalog)


def dagster_takes(cron: str) -> bool:
    try:
        ScheduleDefinition(name="probe", cron_schedule=cron, target="*")
    except Exception:
        return False
    return True


@pytest.mark.parametrize(
    "cron",
    [
        "0 3 * * *",
        "*/15 * * * *",
        "0 0 1,15 * mon-fri",
        "0-5/2 * jan-mar * 7",
        "5-1 * * * *",
        "@daily",
        "0 0 29 2 *",
        "0 0 30,1 2 *",
        "every day",
        "60 * * * *",
        "0 0 0 * *",
        "* * * *",
        "0 0 * * * *",
        "*/0 * * * *",
        "0 0 30 2 *",
        "0 0 31 feb *",
        "x 0 * * *",
        "0 0 L * *",
        "0 0 * * 1#2",
        "0 0 ? * *",
        "0 0 30,31 2 *",
        "0 0 * * 5L",
        "0 0 L 2 ?",
        "0 0 * * mon#2",
        "0 0 * * L",
        "0 0 ? ? ?",
    ],
)
def test_the_catalogs_cron_check_agrees_with_dagsters_schedules(cron):
    """The catalog checks cron strings without Dagster; a schedule must take what it takes."""
    assert is_cron(cron) == dagster_takes(cron)


def test_gpu_steps_are_in_the_gpu_pool(env):
    defs = build_definitions(env.settings)
    pools = {
        job: {n.name: n.definition.pool for n in defs.resolve_job_def(job).graph.nodes}
        for job in ("publish_model", "reverify_model")
    }
    assert pools == {
        "publish_model": {
            "model_snapshot": None,
            "tensorized_model": "gpu",
            "roundtrip_checks": "gpu",
            "published_version": None,
        },
        "reverify_model": {"roundtrip_checks": "gpu"},
    }


@pytest.mark.vllm
def test_rotation_republishes_with_a_new_key_and_reverify_checks_the_aliased_version(env, instance):
    with_automation(
        env,
        [{"repo_id": LLAMA}],
        reverify={"cron": "0 3 * * *", "aliases": ["latest", "stable"]},
        rotate_keys={"cron": "0 4 1 * *", "aliases": ["stable"]},
    )
    first = publish(env.settings, LLAMA)
    registry = Registry(open_store(env.settings.store))
    registry.move_alias(LLAMA, "stable", first.suffix)

    [rotation] = evaluate(env, instance, "rotate_keys")
    assert execute_request(env, instance, rotation).success

    second = registry.resolve(f"{LLAMA}@stable")
    assert (first.suffix, second.suffix) == ("v1", "v2")
    assert second.hf_sha == first.hf_sha and second.rotated_from == "v1"
    assert second.key_id != first.key_id
    keys = Path(env.settings.keys)
    assert (keys / f"{first.key_id}.key").read_bytes() != (
        keys / f"{second.key_id}.key"
    ).read_bytes()
    assert registry.version(LLAMA, "v1") == first  # the old version is untouched
    assert registry.aliases(LLAMA) == {"latest": "v1", "stable": "v2"}  # only `stable` moved

    # The old version's bytes rot in the store: re-verification must look at v1, not v2.
    tensors = Path(env.settings.store) / "vllm" / LLAMA / "v1" / "model.tensors"
    data = bytearray(tensors.read_bytes())
    data[-64] ^= 0xFF
    tensors.write_bytes(bytes(data))

    requests = evaluate(env, instance, "reverify_published")
    assert {r.tags[VERIFY_TAG] for r in requests} == {"v1", "v2"}
    [old] = [r for r in requests if r.tags[VERIFY_TAG] == "v1"]
    verified = execute_request(env, instance, old)

    assert not verified.success
    evaluations = {e.check_name: e for e in verified.get_asset_check_evaluations()}
    assert set(evaluations) == {"tensors_match", "vllm_outputs_match", "great_expectations"}
    tensors_check = evaluations["tensors_match"]
    assert not tensors_check.passed and tensors_check.partition == LLAMA_KEY
    assert tensors_check.metadata["version"].value == f"{LLAMA}@v1"
    assert tensors_check.metadata["reverification"].value is True
    assert len(registry.versions(LLAMA)) == 2  # re-verifying publishes nothing
