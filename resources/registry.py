"""The registry: immutable version records and movable aliases, inside the object store.

    registry/<repo_id>/reservations/<suffix>.json   a suffix taken by a run (create-once)
    registry/<repo_id>/versions/<suffix>.json       a published version (create-once, final)
    registry/<repo_id>/aliases/<alias>.json         latest, stable, ... (compare-and-swap)

A version is visible only once its record exists, and the record is written last,
after every file is uploaded and every check has passed. Reservations make suffix
allocation safe under concurrency without a lock server.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from resources.store import NotFound, ObjectStore
from resources.tensorize import ADAPTER_TENSORS_FILE
from resources.vllm_format import tensors_name

SUFFIX = re.compile(r"^v(\d+)$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class RegistryError(RuntimeError):
    pass


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def suffix_number(suffix: str) -> int:
    match = SUFFIX.match(suffix)
    return int(match.group(1)) if match else 0


def artifact_prefix(repo_id: str, suffix: str) -> str:
    """Where a version's files live, as vLLM's tensorize script lays them out."""
    return f"vllm/{repo_id}/{suffix}"


def adapter_prefix(base_repo_id: str, base_suffix: str, repo_id: str, suffix: str) -> str:
    """Where an adapter version's files live: under the base version it was checked with."""
    return f"{artifact_prefix(base_repo_id, base_suffix)}/adapters/{repo_id}/{suffix}"


def record_location(record: dict) -> tuple[str, str]:
    """(prefix, tensors file) of the files a version record describes, model or adapter."""
    if record.get("kind") == "adapter":
        prefix = adapter_prefix(
            record["base_repo_id"], record["base_suffix"], record["repo_id"], record["suffix"]
        )
        return prefix, ADAPTER_TENSORS_FILE
    return artifact_prefix(record["repo_id"], record["suffix"]), tensors_name(
        record.get("tensor_parallel_size", 1)
    )


class Registry:
    def __init__(self, store: ObjectStore):
        self.store = store

    def _dir(self, repo_id: str) -> str:
        return f"registry/{repo_id}"

    def _version_key(self, repo_id: str, suffix: str) -> str:
        return f"{self._dir(repo_id)}/versions/{suffix}.json"

    def _alias_key(self, repo_id: str, alias: str) -> str:
        return f"{self._dir(repo_id)}/aliases/{alias}.json"

    def _suffixes(self, repo_id: str, kind: str) -> list[str]:
        names = [
            k.rsplit("/", 1)[-1].removesuffix(".json")
            for k in self.store.list(f"{self._dir(repo_id)}/{kind}")
        ]
        return sorted((n for n in names if SUFFIX.match(n)), key=suffix_number)

    def reserve_suffix(self, repo_id: str, run_id: str) -> str:
        """The next free `vN` for `repo_id`, taken for `run_id` so no other run gets it."""
        taken = self._suffixes(repo_id, "reservations") + self._suffixes(repo_id, "versions")
        number = max((suffix_number(s) for s in taken), default=0) + 1
        for _ in range(1000):
            suffix = f"v{number}"
            body = json.dumps({"suffix": suffix, "run_id": run_id, "reserved_at": now()})
            if self.store.create(f"{self._dir(repo_id)}/reservations/{suffix}.json", body.encode()):
                return suffix
            number += 1
        raise RegistryError(f"{repo_id}: could not reserve a suffix after 1000 tries")

    def reservation(self, repo_id: str, suffix: str) -> dict | None:
        try:
            return json.loads(
                self.store.get_bytes(f"{self._dir(repo_id)}/reservations/{suffix}.json")
            )
        except NotFound:
            return None

    def reservations(self) -> list[tuple[str, str]]:
        """Every (repo_id, suffix) that some run has reserved, published or not."""
        found = []
        for key in self.store.list("registry"):
            repo_id, sep, name = key.removeprefix("registry/").partition("/reservations/")
            suffix = name.removesuffix(".json")
            if sep and SUFFIX.match(suffix):
                found.append((repo_id, suffix))
        return found

    def is_published(self, repo_id: str, suffix: str) -> bool:
        return self.store.exists(self._version_key(repo_id, suffix))

    def publish(self, record: dict) -> None:
        """Create the version record; a record is written once and never replaced."""
        key = self._version_key(record["repo_id"], record["suffix"])
        data = json.dumps(record, indent=2, sort_keys=True).encode()
        if not self.store.create(key, data):
            raise RegistryError(
                f"{record['repo_id']}@{record['suffix']} is already published; versions are "
                "immutable, publish a new suffix instead"
            )

    def version(self, repo_id: str, suffix: str) -> dict:
        try:
            return json.loads(self.store.get_bytes(self._version_key(repo_id, suffix)))
        except NotFound:
            raise RegistryError(f"{repo_id}@{suffix} is not published") from None

    def versions(self, repo_id: str) -> list[dict]:
        return [self.version(repo_id, s) for s in self._suffixes(repo_id, "versions")]

    def repos(self) -> list[str]:
        repos = {
            k.removeprefix("registry/").split("/versions/")[0]
            for k in self.store.list("registry")
            if "/versions/" in k
        }
        return sorted(repos)

    def find_by_sha(self, repo_id: str, sha: str, **settings) -> dict | None:
        """The newest version of `repo_id` built from `sha` with the same settings."""
        for record in reversed(self.versions(repo_id)):
            if record["hf_sha"] == sha and all(record.get(k) == v for k, v in settings.items()):
                return record
        return None

    def aliases(self, repo_id: str) -> dict[str, str]:
        out = {}
        for key in self.store.list(f"{self._dir(repo_id)}/aliases"):
            alias = key.rsplit("/", 1)[-1].removesuffix(".json")
            out[alias] = json.loads(self.store.get_bytes(key))["suffix"]
        return out

    def move_alias(self, repo_id: str, alias: str, suffix: str, attempts: int = 50) -> None:
        """Point `alias` at `suffix` with compare-and-swap, retrying on a concurrent move.

        An alias only moves forward: if another publisher already pointed it at a newer
        suffix, that newer one stays.
        """
        if not ALIAS.match(alias):
            raise RegistryError(f"{alias!r} is not a valid alias name")
        self.version(repo_id, suffix)  # only published versions get aliases
        key = self._alias_key(repo_id, alias)
        body = json.dumps({"alias": alias, "suffix": suffix, "moved_at": now()}).encode()
        for _ in range(attempts):
            current = self.store.read_versioned(key)
            if current is None:
                if self.store.create(key, body):
                    return
                continue
            data, tag = current
            if alias == "latest" and suffix_number(json.loads(data)["suffix"]) >= suffix_number(
                suffix
            ):
                return
            if self.store.replace(key, body, tag):
                return
        raise RegistryError(f"{repo_id}: alias {alias!r} kept changing; gave up after retries")

    def resolve(self, reference: str) -> dict:
        """`repo_id`, `repo_id@alias` or `repo_id@vN` -> the version record."""
        repo_id, _, name = reference.partition("@")
        name = name or "latest"
        if SUFFIX.match(name):
            return self.version(repo_id, name)
        try:
            alias = json.loads(self.store.get_bytes(self._alias_key(repo_id, name)))
        except NotFound:
            known = ", ".join(self.aliases(repo_id)) or "none"
            raise RegistryError(f"{repo_id}: no alias {name!r} (aliases: {known})") from None
        return self.version(repo_id, alias["suffix"])
