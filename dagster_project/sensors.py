"""The publish sensor: a new commit on an entry's tracked ref becomes one publish run.

Adapters plug in through `watched_items`: append one `WatchedItem` per adapter entry
(name `adapter:<key>`, its own job and dynamic partitions) and pass that job to
`build_revision_sensor(jobs=...)`. Polling, the cursor, run keys and partition
bookkeeping are shared, so nothing else changes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from assets.dagster_resources import CatalogResource, HubResource, RegistryResource
from assets.gpu import GpuPlacement
from assets.partitions import adapters_partitions, models_partitions
from dagster_project import launch
from dagster_project.jobs import publish_adapter_job, publish_model_job
from resources.catalog import AdapterTarget, Catalog, WatchSpec
from resources.registry.registry import Registry
from resources.sources.watch import WatchCursor, WatchedItem, poll
from resources.storage.store import StoreError

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )


def watched_items(catalog: Catalog) -> list[WatchedItem]:
    """Every hub ref the sensor follows: one per catalog model and one per adapter."""
    models = [
        WatchedItem(
            name=model.key,
            job=publish_model_job.name,
            partitions=models_partitions.name,
            partition=model.key,
            repo_id=model.repo_id,
            hub=model.hub,
            ref=model.ref,
        )
        for model in catalog.models
    ]
    adapters = [
        WatchedItem(
            name=f"adapter:{target.key}",
            job=publish_adapter_job.name,
            partitions=adapters_partitions.name,
            partition=target.key,
            repo_id=target.adapter.repo_id,
            hub=target.hub,
            ref=target.adapter.ref,
        )
        for target in catalog.adapters
    ]
    return models + adapters


def new_partitions(
    instance: DagsterInstance, items: Sequence[WatchedItem]
) -> list[AddDynamicPartitionsRequest]:
    """Requests adding the partitions of items that the instance does not know yet."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for item in items:
        wanted[item.partitions].append(item.partition)
    requests = []
    for name, keys in wanted.items():
        known = set(instance.get_dynamic_partitions(name))
        new = [k for k in dict.fromkeys(keys) if k not in known]
        if new:
            requests.append(AddDynamicPartitionsRequest(name, new))
    return requests


def _adapter_request(
    target: AdapterTarget, sha: str, reg: Registry, gpu: GpuPlacement
) -> RunRequest | str | None:
    """The run that publishes adapter commit `sha` against its base's `latest`, unless a
    version of it on that base exists: so an adapter follows its base to each new
    version. A note (str) while the base has no published version yet.

    The run key names the base version, so each (sha, base version) runs once.
    """
    base = reg.aliases(target.base.repo_id).get("latest")
    if base is None:
        return f"waits until {target.base.repo_id} is published"
    for version in reg.versions(target.adapter.repo_id):
        if version.hf_sha == sha and getattr(version, "base_suffix", None) == base:
            return None
    run = launch.publish_adapter(target, gpu, sha=sha, base_suffix=base)
    return run.run_request(run_key=f"adapter:{target.key}@{sha}+{target.base.repo_id}@{base}")


def build_revision_sensor(
    spec: WatchSpec,
    gpu: GpuPlacement,
    jobs: Sequence[UnresolvedAssetJobDefinition] = (publish_model_job, publish_adapter_job),
) -> SensorDefinition:
    @sensor(
        name="hub_revisions",
        jobs=list(jobs),
        minimum_interval_seconds=spec.interval_s,
        default_status=DefaultSensorStatus.RUNNING if spec.running else DefaultSensorStatus.STOPPED,
        description=f"Polls the tracked ref of every catalog entry ({spec.chunk} per tick) and "
        "requests one publish run per new commit sha (run key `<entry>@<sha>`, so a sha is "
        "never published twice by this sensor). Shas the registry already holds are skipped; "
        "a hub error skips that entry until the next round.",
    )
    def hub_revisions(
        context: SensorEvaluationContext,
        catalog: CatalogResource,
        hub: HubResource,
        registry: RegistryResource,
    ) -> SensorResult:
        cat = catalog.load()
        items = watched_items(cat)
        hubs = {name: hub.hub(hub_spec) for name, hub_spec in cat.hubs.items()}
        previous = WatchCursor.from_json(context.cursor)
        result = poll(
            items,
            lambda item: hubs[item.hub].resolve(item.repo_id, item.ref),
            previous,
            chunk=spec.chunk,
            budget_s=spec.budget_s,
        )
        for item, error in result.errors:
            context.log.warning(f"{item.name}: cannot resolve {item.ref!r}, skipped: {error}")
        if result.deferred:
            names = ", ".join(i.name for i in result.deferred)
            context.log.warning(f"no answer within {spec.budget_s}s, retried later: {names}")
        reg = registry.open()
        requests = []
        for item, sha in result.changed:
            if item.job == publish_adapter_job.name:
                continue  # below, with the adapters whose base moved
            try:
                published = reg.find_by_sha(item.repo_id, sha)
            except StoreError as exc:
                context.log.warning(f"{item.name}: registry unreadable, retried later: {exc}")
                result.cursor.seen[item.name] = previous.seen.get(item.name, "")
                continue
            if published is not None:
                context.log.info(f"{item.name}@{sha[:12]} is already {published.suffix}")
                continue
            run = launch.publish_model(cat.entry(item.partition), gpu, sha=sha)
            requests.append(run.run_request(run_key=f"{item.name}@{sha}"))
        for item in items:
            if item.job == publish_adapter_job.name and (sha := result.cursor.seen.get(item.name)):
                try:
                    request = _adapter_request(cat.adapter(item.partition), sha, reg, gpu)
                except StoreError as exc:
                    context.log.warning(f"{item.name}: registry unreadable, retried later: {exc}")
                    continue
                if isinstance(request, str):
                    context.log.info(f"{item.name}: {request}")
                elif request is not None:
                    requests.append(request)
        return SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=new_partitions(context.instance, items),
            cursor=result.cursor.to_json(),
            skip_reason=None
            if requests
            else f"no new commits in {len(result.polled)} of {len(items)} entries polled",
        )

    return hub_revisions
