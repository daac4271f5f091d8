"""The steps that models and adapters share: snapshot, tensorize, publish a record.

Each publish path (assets/models.py, assets/adapters.py) says what it publishes and
where; these functions do the rest the same way for both, so a version is reused,
written, recorded and aliased by one piece of code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue
from pydantic import Field

from assets.dagster_resources import (
    KeyStoreResource,
    RegistryResource,
    TensorizerResource,
)
from assets.metadata import md_table, rate
from assets.progress import step_progress
from assets.state import (
    ROTATED_FROM_TAG,
    STAGED,
    round_trip_proof,
    run_aliases,
    run_lineage,
    run_state,
    run_worker,
)
from resources.layout import registry_key
from resources.operations.summary import (
    COLUMNS,
    HISTORY_COLUMNS,
    VersionSummary,
    alias_history,
    history_cells,
    human_size,
)
from resources.registry.publish import PublishPlan, PublishRefused, publish_staged
from resources.registry.records import StagedArtifact, VersionRecord
from resources.registry.registry import Registry
from resources.registry.signing import SigningError
from resources.registry.stage import StageRequest, StagingRun, stage
from resources.storage import digests
from resources.storage.store import ObjectStore

Serve = Callable[[VersionRecord, Registry, ObjectStore], str]  # the lines that serve a version


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
    request: StageRequest,
    snapshot: Path,
    registry: RegistryResource,
    key_store: KeyStoreResource,
    tensorizer: TensorizerResource,
) -> MaterializeResult:
    """Stage `request` in this run (resources/registry/stage.py: reuse the build's version, or
    reserve a suffix and write the artifact) and record what was staged."""
    reg = registry.open()
    store = reg.store
    run = StagingRun(
        run_id=context.run.run_id,
        lineage=run_lineage(context),
        states=partial(run_state, context.instance),
        worker=run_worker(context),
        log=context.log.info,
    )
    progress = step_progress(context)
    with tensorizer.staging(context.run.run_id) as staging:
        staged = stage(reg, key_store.open(), request, run, snapshot, staging, progress)
    artifact, written = staged.artifact, staged.written
    recorded = {"suffix": artifact.suffix, "sha": artifact.sha, "reused": written is None}
    handed_on = {STAGED: MetadataValue.json(artifact.to_metadata())}  # for the later steps
    if written is None:
        return MaterializeResult(metadata={**recorded, **handed_on})
    rows = [
        {"file": n, "size": human_size(f["size"]), "sha256": digests.short(f)}
        for n, f in written.files.items()
    ]
    tensors = f"{artifact.prefix}/{artifact.tensors_file}"
    return MaterializeResult(
        metadata={
            **recorded,
            "uri": MetadataValue.url(store.uri(tensors)),
            "encrypted": artifact.settings.encrypted,
            "key_id": artifact.key_id or "(not encrypted)",
            "tensors_size": human_size(written.tensors_bytes),
            "serialize_throughput": rate(written.tensors_bytes, written.serialize_s),
            "upload_throughput": rate(written.total_bytes, written.upload_s),
            "staging": store.staged_writes
            if written.peak_staging is None
            else f"streamed, staging peak {human_size(written.peak_staging)}",
            "files": MetadataValue.md(md_table(rows, ["file", "size", "sha256"])),
            **handed_on,
        }
    )


def publish_step(
    context: AssetExecutionContext,
    *,
    ref: str,
    staged: StagedArtifact,
    asset: str,
    registry: RegistryResource,
    key_store: KeyStoreResource,
    serve: Serve,
) -> MaterializeResult:
    """Sign a verified version, write its immutable record and move its aliases to it
    (`latest`, or those named in the run's aliases tag).

    Refuses unless this run's round trip on `asset` passed and every file is still there
    as it checked them; a reused version is only re-verified, its record stays as it was.
    """
    reg = registry.open()
    store = reg.store
    repo_id, suffix = staged.repo_id, staged.suffix
    plan = PublishPlan(
        run_id=context.run.run_id,
        catalog_key=context.partition_key,
        hf_ref=ref,
        aliases=run_aliases(context),
        rotated_from=context.run.tags.get(ROTATED_FROM_TAG),
    )
    proof = round_trip_proof(context, asset, staged.reference)
    try:
        published = publish_staged(reg, store, key_store.open(), staged, plan, proof)
    except (PublishRefused, SigningError) as exc:
        raise Failure(str(exc), allow_retries=False) from None
    for note in published.kept:
        context.log.warning(note)
    record = published.record
    alias_records = reg.alias_records(repo_id)
    aliases = {a.alias: a.suffix for a in alias_records}
    moved = [a for a in alias_records if a.alias in published.moved]
    summary = VersionSummary.of(record, aliases)
    return MaterializeResult(
        metadata={
            "reference": f"{repo_id}@{suffix}",
            "version": MetadataValue.md(md_table([summary.cells()], COLUMNS)),
            "size": human_size(summary.size),
            "suffix": suffix,
            "sha": record.hf_sha,
            "newly_published": not staged.reused,
            "aliases": MetadataValue.md(
                md_table(
                    [
                        {
                            "alias": a.alias,
                            "suffix": a.suffix,
                            "protected": "yes" if a.protected else "no",
                        }
                        for a in sorted(alias_records, key=lambda a: a.alias)
                    ],
                    ["alias", "suffix", "protected"],
                )
            ),
            # the whole history of each alias this publish moved, newest first
            "alias_history": MetadataValue.md(
                md_table(
                    [history_cells(e) for e in reversed(alias_history(moved))], HISTORY_COLUMNS
                )
            ),
            "record_uri": MetadataValue.url(store.uri(registry_key(repo_id, "versions", suffix))),
            "serve_command": MetadataValue.md(f"```\n{serve(record, reg, store)}\n```"),
            "record": MetadataValue.json(record.to_dict()),
        }
    )
