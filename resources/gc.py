"""What failed publishes leave behind, and removing it.

A publish reserves a suffix, uploads under `vllm/<repo>/<suffix>/`, and only then writes
the version record. A run that dies in between leaves files (and perhaps an unfinished
multipart upload) that no record points at: invisible to serving code, but they take
space. Reservations stay, so a suffix is never handed out twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from resources.registry import Registry, artifact_prefix

ARTIFACT_KEY = re.compile(r"^vllm/(.+?)/(v\d+)/")
RunState = Literal["running", "finished"] | None  # None: not known to this Dagster instance


@dataclass
class Orphan:
    repo_id: str
    suffix: str
    why: str
    keys: list[str] = field(default_factory=list)  # finished objects: files, validation reports
    unfinished: list[str] = field(default_factory=list)  # uploads that never completed

    @property
    def reference(self) -> str:
        return f"{self.repo_id}@{self.suffix}"


def _why_abandoned(
    reservation: dict | None,
    run_state: Callable[[str], RunState],
    older_than: timedelta,
    now: datetime,
) -> str | None:
    """Why no run will finish this suffix, or None while its run may still be uploading."""
    if reservation is None:
        return "no run reserved this suffix"
    run_id = reservation["run_id"]
    state = run_state(run_id)
    if state == "finished":
        return f"run {run_id} ended without publishing it"
    age = now - datetime.fromisoformat(reservation["reserved_at"])
    if age < older_than:
        return None
    known = "is still marked running" if state == "running" else "is unknown to this instance"
    return f"reserved {age} ago by run {run_id}, which {known}"


def find_orphans(
    registry: Registry,
    run_state: Callable[[str], RunState],
    older_than: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> list[Orphan]:
    """Unpublished suffixes with something stored under them, whose run is over (or whose
    reservation is older than `older_than`, for runs this instance cannot see)."""
    store = registry.store
    candidates = set(registry.reservations())
    candidates |= {m.groups() for k in store.list("vllm") if (m := ARTIFACT_KEY.match(k))}
    orphans = []
    for repo_id, suffix in sorted(candidates):
        if registry.is_published(repo_id, suffix):
            continue
        reservation = registry.reservation(repo_id, suffix)
        why = _why_abandoned(reservation, run_state, older_than, now or datetime.now(UTC))
        if why is None:
            continue
        prefix = artifact_prefix(repo_id, suffix)
        orphan = Orphan(
            repo_id,
            suffix,
            why,
            keys=store.list(prefix) + store.list(f"validation/{repo_id}/{suffix}"),
            unfinished=store.unfinished_uploads(prefix),
        )
        if orphan.keys or orphan.unfinished:
            orphans.append(orphan)
    return orphans


def remove(registry: Registry, orphan: Orphan) -> bool:
    """Delete an orphan's files and abort its unfinished uploads; its reservation stays.
    False (nothing removed) if the suffix got published since it was found."""
    if registry.is_published(orphan.repo_id, orphan.suffix):
        return False
    for key in orphan.keys:
        registry.store.delete(key)
    registry.store.abort_unfinished_uploads(artifact_prefix(orphan.repo_id, orphan.suffix))
    return True
