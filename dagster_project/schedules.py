"""Schedules over published versions: re-verify them, and rotate their encryption keys.

Both act on the versions that chosen aliases point at (catalog `automation:` section).
The `models` partitions are dynamic, which `build_schedule_from_partitioned_job`
rejects, so each tick yields one `RunRequest` per partition key and version instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from dagster import (
    DagsterLogManager,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from assets.dagster_resources import CatalogResource, RegistryResource
from assets.gpu import GpuPlacement
from dagster_project import launch
from dagster_project.jobs import publish_model_job, reverify_model_job
from resources.catalog import Catalog, ModelEntry, RepublishSpec
from resources.registry.records import VersionRecord
from resources.registry.registry import Registry, RegistryError
from resources.storage.store import StoreError


def alias_targets(
    catalog: Catalog, registry: Registry, aliases: list[str], log: DagsterLogManager
) -> list[tuple[ModelEntry, VersionRecord, list[str]]]:
    """(entry, version record, which of `aliases` point at it), one per distinct version.

    An entry the registry cannot answer for is logged and left out, not fatal.
    """
    found = []
    for entry in catalog.models:
        try:
            current = registry.aliases(entry.repo_id)
            suffixes = sorted({current[a] for a in aliases if a in current})
            for suffix in suffixes:
                names = [a for a in aliases if current.get(a) == suffix]
                found.append((entry, registry.version(entry.repo_id, suffix), names))
        except (RegistryError, StoreError) as exc:
            log.warning(f"{entry.key}: skipped, the registry did not answer: {exc}")
    return found


def _status(spec: RepublishSpec) -> DefaultScheduleStatus:
    return DefaultScheduleStatus.RUNNING if spec.running else DefaultScheduleStatus.STOPPED


def _run_key(entry: ModelEntry, record: VersionRecord, context: ScheduleEvaluationContext) -> str:
    return f"{entry.key}@{record.suffix}/{context.scheduled_execution_time.isoformat()}"


def build_reverify_schedule(spec: RepublishSpec, gpu: GpuPlacement) -> ScheduleDefinition:
    @schedule(
        name="reverify_published",
        cron_schedule=spec.cron,
        execution_timezone=spec.timezone,
        job=reverify_model_job,
        default_status=_status(spec),
        description=f"Re-runs the round-trip checks on the versions behind "
        f"{', '.join(spec.aliases)}: one checks-only run per entry and version. Results "
        "appear as asset check evaluations on tensorized_model, per partition.",
    )
    def reverify_published(
        context: ScheduleEvaluationContext, catalog: CatalogResource, registry: RegistryResource
    ) -> Iterator[RunRequest | SkipReason]:
        targets = alias_targets(catalog.load(), registry.open(), spec.aliases, context.log)
        if not targets:
            yield SkipReason(f"no published version behind {', '.join(spec.aliases)}")
        for entry, record, _ in targets:
            run = launch.reverify_model(entry, record.suffix, record.hf_sha, gpu)
            yield run.run_request(_run_key(entry, record, context))

    return reverify_published


def build_rotate_schedule(spec: RepublishSpec, gpu: GpuPlacement) -> ScheduleDefinition:
    @schedule(
        name="rotate_keys",
        cron_schedule=spec.cron,
        execution_timezone=spec.timezone,
        job=publish_model_job,
        default_status=_status(spec),
        description=f"Rotates encryption keys: re-publishes the versions behind "
        f"{', '.join(spec.aliases)} from the same commit sha under a new suffix with a new "
        "key, verified like any publish, and moves those aliases to it. The old version "
        "and its key stay until you retire them.",
    )
    def rotate_keys(
        context: ScheduleEvaluationContext, catalog: CatalogResource, registry: RegistryResource
    ) -> Iterator[RunRequest | SkipReason]:
        targets = [
            t
            for t in alias_targets(catalog.load(), registry.open(), spec.aliases, context.log)
            if t[1].encrypted
        ]
        if not targets:
            yield SkipReason(f"no encrypted version behind {', '.join(spec.aliases)}")
        for entry, record, names in targets:
            run = launch.publish_model(
                entry,
                gpu,
                sha=record.hf_sha,
                force=True,
                aliases=names,
                rotated_from=record.suffix,
            )
            yield run.run_request(_run_key(entry, record, context))

    return rotate_keys
