"""Hand-written version records for tests that need a published version without running
a publish: every required field filled in, the rest as the test names them."""

from __future__ import annotations

from typing import Any

from resources.registry.records import VersionRecord, parse_version


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


def recorded_sha256(record: VersionRecord) -> dict[str, str]:
    """The sha256 each of the record's (whole-file) entries holds: what a round trip of
    files that match it would prove, for tests that sign a hand-written record."""
    return {name: entry["sha256"] for name, entry in record.files.items()}
