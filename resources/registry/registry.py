"""The registry: immutable version records and movable aliases, inside the object store.

    registry/<repo_id>/reservations/<suffix>.json   a suffix taken by a run (create-once)
    registry/<repo_id>/versions/<suffix>.json       a published version (create-once, final)
    registry/<repo_id>/aliases/<alias>.json         latest, stable, ... (compare-and-swap)

A version is visible only once its record exists, and the record is written last,
after every file is uploaded and every check has passed. Reservations make suffix
allocation safe under concurrency without a lock server. Key names: resources/layout.py.

An alias's history lives inside the alias object (resources/registry/records.py AliasRecord):
every change, a publish's move, a person's `set`, `rollback`, `protect` or `unprotect`,
is one compare-and-swap that writes the new target (or protection) and the history with
the new entry appended. So the history is exactly as consistent as the alias: two
concurrent movers cannot both win, the loser re-reads and appends after the winner's
entry, and no entry is lost or refers to a target the alias never had; the protection
flag is carried through every move the same way. Separate create-once entry objects
would need a sequence number agreed on apart from the alias, and a reader to join the
two. The price: the object grows by one small entry per change, rewritten each time.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from resources import layout
from resources.errors import ModelpubError
from resources.layout import SUFFIX
from resources.registry.records import (
    MOVES,
    SCHEMA,
    AdapterSettings,
    AliasEntry,
    AliasRecord,
    ModelSettings,
    Reservation,
    VersionRecord,
    Why,
    Worker,
    now,
    parse_version,
)
from resources.storage.store import NotFound, ObjectStore

ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class RegistryError(ModelpubError):
    pass


class AliasProtected(RegistryError):
    """A publish would move an alias that only a person may move; the publish goes on."""


def suffix_number(suffix: str) -> int:
    match = SUFFIX.match(suffix)
    return int(match.group(1)) if match else 0


def _already_published(record: VersionRecord) -> RegistryError:
    return RegistryError(
        f"{record.reference} is already published; versions are immutable, "
        "publish a new suffix instead"
    )


class Registry:
    def __init__(self, store: ObjectStore):
        self.store = store

    def _version_key(self, repo_id: str, suffix: str) -> str:
        return layout.registry_key(repo_id, "versions", suffix)

    def _suffixes(self, repo_id: str, kind: str) -> list[str]:
        names = [
            parsed[2]
            for k in self.store.list(layout.registry_dir(repo_id, kind))
            if (parsed := layout.parse_registry_key(k))
        ]
        return sorted((n for n in names if SUFFIX.match(n)), key=suffix_number)

    def reserve_suffix(
        self,
        repo_id: str,
        run_id: str,
        *,
        prefix: Callable[[str], str] | None = None,
        key_id: Callable[[str], str | None] = lambda suffix: None,
        worker: Worker | None = None,
        sha: str | None = None,
        settings: ModelSettings | AdapterSettings | None = None,
    ) -> str:
        """The next free `vN` for `repo_id`, taken for `run_id` so no other run gets it.

        The reservation records where the run will write (`prefix(suffix)`, by default
        the model layout), the key it will create and the process doing it, so that gc
        can find and judge what a run that never published left behind.
        """
        taken = self._suffixes(repo_id, "reservations") + self._suffixes(repo_id, "versions")
        number = max((suffix_number(s) for s in taken), default=0) + 1
        where = prefix or (lambda s: layout.model_prefix(repo_id, s))
        for _ in range(1000):
            suffix = f"v{number}"
            reservation = Reservation(
                schema_=SCHEMA,
                suffix=suffix,
                run_id=run_id,
                reserved_at=now(),
                prefix=where(suffix),
                key_id=key_id(suffix),
                worker=worker,
                sha=sha,
                settings=settings,
            )
            key = layout.registry_key(repo_id, "reservations", suffix)
            if self.store.create(key, reservation.to_json()):
                return suffix
            number += 1
        raise RegistryError(f"{repo_id}: could not reserve a suffix after 1000 tries")

    def reservation(self, repo_id: str, suffix: str) -> Reservation | None:
        try:
            data = self.store.get_bytes(layout.registry_key(repo_id, "reservations", suffix))
        except NotFound:
            return None
        return Reservation.model_validate_json(data)

    def _change_reservation(
        self, repo_id: str, suffix: str, change: Callable[[Reservation], Reservation | None]
    ) -> Reservation | None:
        """Apply `change(current)` to a reservation by compare-and-swap, asking again after
        a concurrent change; None (nothing written) where `change` returns None."""
        key = layout.registry_key(repo_id, "reservations", suffix)
        for _ in range(50):
            found = self.store.read_versioned(key)
            if found is None:
                raise RegistryError(f"{repo_id}@{suffix} was never reserved; publish it again")
            new = change(Reservation.model_validate_json(found[0]))
            if new is None:
                return None
            if self.store.replace(key, new.to_json(), found[1]):
                return new
        raise RegistryError(f"{repo_id}@{suffix}: its reservation kept changing; try again")

    def start_publishing(self, repo_id: str, suffix: str, run_id: str) -> None:
        """Take the suffix for the run about to write its record, before anything of it
        becomes visible; refused where a gc claimed it first (its files are going)."""

        def change(current: Reservation) -> Reservation:
            if current.state == "claimed":
                raise RegistryError(
                    f"{repo_id}@{suffix}: `modelpub gc` ({current.state_by}) claimed it as "
                    "abandoned and removes its files; not publishing, run the publish job again"
                )
            return current.model_copy(update={"state": "publishing", "state_by": run_id})

        self._change_reservation(repo_id, suffix, change)

    def stop_publishing(self, repo_id: str, suffix: str) -> None:
        """Hand back a suffix whose publish failed before its record was written."""
        self._change_reservation(
            repo_id,
            suffix,
            lambda current: (
                current.model_copy(update={"state": "reserved", "state_by": None})
                if current.state == "publishing"
                else None
            ),
        )

    def claim_abandoned(self, repo_id: str, suffix: str, by: str) -> bool:
        """Take an unpublished suffix for a gc deleting its files; False where a publish
        took it first (or published it): then nothing of it may be deleted."""

        def change(current: Reservation) -> Reservation | None:
            if current.state == "publishing" or self.is_published(repo_id, suffix):
                return None
            return current.model_copy(update={"state": "claimed", "state_by": by})

        return self._change_reservation(repo_id, suffix, change) is not None

    def reservations(self) -> list[tuple[str, str]]:
        """Every (repo_id, suffix) that some run has reserved, published or not."""
        return self._records("reservations")

    def published(self) -> list[tuple[str, str]]:
        """Every (repo_id, suffix) with a version record."""
        return self._records("versions")

    def _records(self, kind: str) -> list[tuple[str, str]]:
        found = []
        for key in self.store.list(layout.REGISTRY):
            parsed = layout.parse_registry_key(key)
            if parsed and parsed[1] == kind and SUFFIX.match(parsed[2]):
                found.append((parsed[0], parsed[2]))
        return found

    def is_published(self, repo_id: str, suffix: str) -> bool:
        return self.store.exists(self._version_key(repo_id, suffix))

    def check_unpublished(self, record: VersionRecord) -> None:
        """Refuse a suffix that already has a record, before writing what goes beside it
        (its signature), which must not replace a published version's."""
        if self.is_published(record.repo_id, record.suffix):
            raise _already_published(record)

    def publish(self, record: VersionRecord) -> None:
        """Create the version record; a record is written once and never replaced."""
        key = self._version_key(record.repo_id, record.suffix)
        if not self.store.create(key, record.to_json()):
            raise _already_published(record)

    def stored(self, repo_id: str, suffix: str) -> bytes:
        """A version record's bytes exactly as stored: what its signature covers."""
        try:
            return self.store.get_bytes(self._version_key(repo_id, suffix))
        except NotFound:
            raise RegistryError(f"{repo_id}@{suffix} is not published") from None

    def version(self, repo_id: str, suffix: str) -> VersionRecord:
        return self.parsed(repo_id, suffix, self.stored(repo_id, suffix))

    def parsed(self, repo_id: str, suffix: str, data: bytes) -> VersionRecord:
        """A version record's stored bytes, parsed (what was verified is what is read)."""
        try:
            return parse_version(data)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise RegistryError(
                f"{repo_id}@{suffix}: its record in the registry is not a version record this "
                f"modelpub can read ({str(exc).splitlines()[0]}); upgrade modelpub"
            ) from None

    def versions(self, repo_id: str) -> list[VersionRecord]:
        return [self.version(repo_id, s) for s in self._suffixes(repo_id, "versions")]

    def repos(self) -> list[str]:
        return sorted({repo_id for repo_id, _ in self.published()})

    def find_by_sha(
        self, repo_id: str, sha: str, settings: ModelSettings | AdapterSettings | None = None
    ) -> VersionRecord | None:
        """The newest version of `repo_id` built from `sha` (with the same settings)."""
        for record in reversed(self.versions(repo_id)):
            if record.hf_sha == sha and (settings is None or record.settings == settings):
                return record
        return None

    def pending(
        self, repo_id: str, sha: str, settings: ModelSettings | AdapterSettings
    ) -> list[Reservation]:
        """Unpublished reservations of runs that build `sha` with these settings."""
        found = []
        for suffix in self._suffixes(repo_id, "reservations"):
            reservation = self.reservation(repo_id, suffix)
            if (
                reservation is not None
                and reservation.sha == sha
                and reservation.settings == settings
                and not self.is_published(repo_id, suffix)
            ):
                found.append(reservation)
        return found

    def alias(self, repo_id: str, alias: str) -> AliasRecord:
        try:
            return AliasRecord.model_validate_json(
                self.store.get_bytes(layout.alias_key(repo_id, alias))
            )
        except NotFound:
            raise self._no_alias(repo_id, alias) from None

    def _no_alias(self, repo_id: str, alias: str) -> RegistryError:
        known = ", ".join(self.aliases(repo_id)) or "none"
        return RegistryError(f"{repo_id}: no alias {alias!r} (aliases: {known})")

    def alias_records(self, repo_id: str) -> list[AliasRecord]:
        return [
            AliasRecord.model_validate_json(self.store.get_bytes(key))
            for key in self.store.list(layout.registry_dir(repo_id, "aliases"))
            if layout.parse_registry_key(key)
        ]

    def aliases(self, repo_id: str) -> dict[str, str]:
        return {record.alias: record.suffix for record in self.alias_records(repo_id)}

    def _change_alias(
        self,
        repo_id: str,
        alias: str,
        why: Why,
        by: str,
        reason: str | None,
        target: Callable[[AliasRecord | None], str | None],
        attempts: int = 50,
    ) -> AliasEntry | None:
        """Append one history entry to `alias` and apply it, by compare-and-swap.

        `target(current record)` says where the alias goes (it may raise to refuse, or
        return None to leave it); it is asked again after a concurrent change. Returns the
        entry written, or None if nothing changed (a move to where the alias already is).
        """
        if not ALIAS.match(alias):
            raise RegistryError(f"{alias!r} is not a valid alias name")
        key = layout.alias_key(repo_id, alias)
        for _ in range(attempts):
            found = self.store.read_versioned(key)
            current = AliasRecord.model_validate_json(found[0]) if found else None
            to = target(current)
            if to is None or (why in MOVES and current is not None and current.suffix == to):
                return None
            entry = AliasEntry(
                at=now(),
                from_suffix=current.suffix if current else None,
                to_suffix=to,
                by=by,
                why=why,
                reason=reason,
            )
            if current is None:
                if self.store.create(key, AliasRecord.new(alias, entry).to_json()):
                    return entry
            elif self.store.replace(key, current.then(entry).to_json(), found[1]):
                return entry
        raise RegistryError(f"{repo_id}: alias {alias!r} kept changing; gave up after retries")

    def move_alias(
        self, repo_id: str, alias: str, suffix: str, run_id: str = "(not recorded)"
    ) -> AliasEntry | None:
        """A publish (Dagster run `run_id`) points `alias` at `suffix`; None if it stays.

        `latest` only moves forward: if another publisher already pointed it at a newer
        suffix, that newer one stays. A protected alias is never moved by a publish
        (AliasProtected): only a person moves it.
        """
        self.version(repo_id, suffix)  # only published versions get aliases

        def target(current: AliasRecord | None) -> str | None:
            if current is None:
                return suffix
            if current.protected:
                raise AliasProtected(
                    f"{repo_id}@{alias} is protected: left at {current.suffix}, not moved to "
                    f"{suffix} (`modelpub alias set {repo_id}@{suffix} {alias}` moves it)"
                )
            if alias == "latest" and suffix_number(current.suffix) >= suffix_number(suffix):
                return None
            return suffix

        return self._change_alias(repo_id, alias, "publish", run_id, None, target)

    def set_alias(
        self, repo_id: str, alias: str, suffix: str, by: str, reason: str | None = None
    ) -> AliasEntry | None:
        """A person points `alias` at any published `suffix`, protected or not, backwards
        or not; None if it already points there."""
        self.version(repo_id, suffix)
        return self._change_alias(repo_id, alias, "set", by, reason, lambda _: suffix)

    def rollback_alias(
        self,
        repo_id: str,
        alias: str,
        by: str,
        reason: str | None,
        verify: Callable[[VersionRecord], None],
    ) -> AliasEntry | None:
        """Move `alias` back to its previous target (AliasRecord.previous), once
        `verify(that version)` has not raised; refused if the alias moved meanwhile, so
        that what was verified is what it goes to."""
        seen = self.alias(repo_id, alias)
        previous = seen.previous
        if previous is None:
            raise RegistryError(
                f"{repo_id}@{alias}: no previous target in its history to roll back to"
            )
        verify(self.version(repo_id, previous))

        def target(current: AliasRecord | None) -> str:
            if current != seen:
                raise RegistryError(
                    f"{repo_id}@{alias} changed while {previous} was verified; not rolled "
                    "back, run the rollback again"
                )
            return previous

        return self._change_alias(repo_id, alias, "rollback", by, reason, target)

    def protect_alias(
        self, repo_id: str, alias: str, protect: bool, by: str, reason: str | None = None
    ) -> AliasEntry | None:
        """Protect an existing alias from publishes (or lift that); None if it already was."""

        def target(current: AliasRecord | None) -> str | None:
            if current is None:
                raise self._no_alias(repo_id, alias)
            return None if current.protected == protect else current.suffix

        why: Why = "protect" if protect else "unprotect"
        return self._change_alias(repo_id, alias, why, by, reason, target)

    def locate(self, reference: str) -> tuple[str, str]:
        """`repo_id`, `repo_id@alias` or `repo_id@vN` -> (repo_id, suffix), the alias read once."""
        repo_id, _, name = reference.partition("@")
        name = name or "latest"
        return repo_id, name if SUFFIX.match(name) else self.alias(repo_id, name).suffix

    def resolve(self, reference: str) -> VersionRecord:
        """`repo_id`, `repo_id@alias` or `repo_id@vN` -> the version record."""
        return self.version(*self.locate(reference))
