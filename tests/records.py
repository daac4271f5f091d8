"""Hand-written version records for tests that need a published version without running
a publish: every required field filled in, the rest as the test names them."""

from __future__ import annotations

from typing import Any

from resources.registry.records import AdapterVersion, VersionRecord, parse_version
from resources.storage.store import ObjectStore


def version_record(repo_id: str, suffix: str, **fields: Any) -> VersionRecord:
    """A record of `repo_id@suffix` as a publish would write it, with `fields` overriding
    the defaults (an fp16 unencrypted model, no files)."""
    prefix = f"vllm/{repo_id}/{suffix}"
    return parse_version(
        {
            "schema": 2,
            "repo_id": repo_id,
            "suffix": suffix,
            "hf_sha": "0" * 40,
            "dtype": "float16",
            "encrypted": False,
            "artifact_uri": prefix,
            "tensors_uri": f"{prefix}/model.tensors",
            "files": {},
            "published_at": "2026-12-01T00:00:00+00:00",
            **fields,
        }
    )


def recorded_sha256(
    record: VersionRecord | AdapterVersion, store: ObjectStore | None = None
) -> dict[str, str]:
    """Each file's whole-file sha256: what a round trip of files that match the record
    would prove, for tests that sign a record again. A whole-file entry holds it; a
    per-part one (a tensors file modelpub serialized) is read back from `store`."""
    prefix, _ = record.location
    return {
        name: entry.get("sha256") or store.sha256(f"{prefix}/{name}")
        for name, entry in record.files.items()
    }
