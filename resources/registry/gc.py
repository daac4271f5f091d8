"""What failed publishes leave behind, and removing it.

A publish reserves a suffix (recording where it will write, the key it will create and
the process doing it), uploads, and only then writes the version record. A run that
dies in between leaves files, perhaps an unfinished multipart upload, and an encryption
key that no record points at: invisible to serving code, but they take space.
Reservations stay, so a suffix is never handed out twice.

Candidates come from the registry's own reservations, never from parsing paths: a file
belongs to the most specific reserved or published prefix it lies under, and only files
whose owner is an abandoned, unpublished reservation are ever removed. Files no
reservation names are reported and left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from resources import layout
from resources.registry.records import Reservation, RunState
from resources.registry.registry import Registry
from resources.storage.keys import KeyStore

Version = tuple[str, str]  # (repo id, suffix)


@dataclass
class Orphan:
    repo_id: str
    suffix: str
    why: str
    prefix: str
    objects: list[str] = field(default_factory=list)  # stored files and validation reports
    unfinished: list[str] = field(default_factory=list)  # uploads that never completed
    key_id: str | None = None  # the encryption key the run created, if still in the key store

    @property
    def reference(self) -> str:
        return f"{self.repo_id}@{self.suffix}"


@dataclass
class Findings:
    orphans: list[Orphan]
    unclaimed: list[str]  # stored files under no reserved or published prefix: left alone


def _reserved_prefixes(
    repo_id: str, reservation: Reservation, bases: Iterable[Version]
) -> list[str]:
    """Where a reservation's run writes. Reservations written before they recorded it
    name no prefix: a model version's, or an adapter's under any published base."""
    if reservation.prefix is not None:
        return [reservation.prefix]
    suffix = reservation.suffix
    return [layout.model_prefix(repo_id, suffix)] + [
        layout.adapter_prefix(base, base_suffix, repo_id, suffix)
        for base, base_suffix in bases
        if base != repo_id
    ]


def _owner(key: str, owners: dict[str, Version]) -> Version | None:
    """The version whose prefix is the longest one `key` lies under."""
    parts = key.split("/")
    for end in range(len(parts) - 1, 0, -1):
        if (owner := owners.get("/".join(parts[:end]))) is not None:
            return owner
    return None


def find_orphans(
    registry: Registry,
    key_store: KeyStore | None,
    run_state: Callable[[str], RunState],
    older_than: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> Findings:
    """Unpublished reservations with something stored for them, whose run is over, whose
    process is gone, or which are older than `older_than` (runs this instance cannot see)."""
    store = registry.store
    published = set(registry.published())
    owners: dict[str, Version] = {}
    for repo_id, suffix in published:
        owners[registry.version(repo_id, suffix).location[0]] = (repo_id, suffix)
    reservations = {
        v: r
        for v in registry.reservations()
        if v not in published
        if (r := registry.reservation(*v)) is not None
    }
    for (repo_id, suffix), reservation in reservations.items():
        for prefix in _reserved_prefixes(repo_id, reservation, published):
            owners.setdefault(prefix, (repo_id, suffix))

    found: dict[Version, tuple[list[str], list[str]]] = {v: ([], []) for v in reservations}
    unclaimed = []
    for listing, unfinished in (
        (store.list(layout.ARTIFACTS), False),
        (store.unfinished_uploads(layout.ARTIFACTS), True),
    ):
        for key in listing:
            owner = _owner(key, owners)
            if owner is None:
                unclaimed.append(key)
            elif owner in found:
                found[owner][unfinished].append(key)

    orphans = []
    for (repo_id, suffix), reservation in sorted(reservations.items()):
        why = reservation.abandoned(run_state, older_than, now or datetime.now(UTC))
        if why is None:
            continue
        files, unfinished = found[(repo_id, suffix)]
        key_id = reservation.key_id
        key_kept = bool(key_id) and key_store is not None and key_store.exists(key_id)
        orphan = Orphan(
            repo_id,
            suffix,
            why,
            prefix=_reserved_prefixes(repo_id, reservation, published)[0],
            objects=files + store.list(layout.validation_dir(repo_id, suffix)),
            unfinished=unfinished,
            key_id=key_id if key_kept else None,
        )
        if orphan.objects or orphan.unfinished or orphan.key_id:
            orphans.append(orphan)
    return Findings(orphans, sorted(unclaimed))


def remove(
    registry: Registry, key_store: KeyStore | None, orphan: Orphan, by: str = "modelpub gc"
) -> bool:
    """Delete an orphan's files and key and abort its unfinished uploads; its reservation
    stays. The suffix is claimed first, by compare-and-swap on its reservation: a publish
    (a re-execution of the run) that took it first keeps it whole (False, nothing
    deleted), and one that comes after the claim is refused, so no record is ever
    written for files being deleted."""
    if not registry.claim_abandoned(orphan.repo_id, orphan.suffix, by):
        return False
    for key in orphan.objects:
        registry.store.delete(key)
    for key in orphan.unfinished:
        registry.store.abort_upload(key)
    if orphan.key_id and key_store is not None:
        key_store.delete(orphan.key_id)
    return True
