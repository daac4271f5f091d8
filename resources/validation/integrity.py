"""Is a published version still what was published? Checked without the source model.

Every file's sha256 must match the registry record, the tensors file (each rank's, for a
sharded vLLM-tensorized version) must decrypt with its key and pass tensorizer's
per-tensor hash verification, and the version's signature must verify, with a key the
key store trusts, over its files and its record as stored. This catches flipped bytes,
truncation, a swapped config.json, a record that no longer matches its files or was
edited, a version signed again by another key, and one with no signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resources import tensorize
from resources.formats.access import stream_kwargs
from resources.formats.artifact import check_files
from resources.formats.format import artifact_format
from resources.records import VersionRecord
from resources.registry import Registry
from resources.signing import verify_signature
from resources.storage.keys import KeyStore


@dataclass
class IntegrityReport:
    reference: str
    files: list[dict] = field(default_factory=list)
    tensors: int = 0
    error: str | None = None
    signing_key: str | None = None  # the fingerprint the record names
    signature: str | None = None  # why the signature does not hold

    @property
    def problems(self) -> list[str]:
        found = [f"{r['file']}: missing" for r in self.files if not r["present"]]
        found += [
            f"{r['file']}: sha256 does not match the record"
            for r in self.files
            if r["present"] and not r["sha256_matches"]
        ]
        return found + [p for p in (self.error, self.signature) if p]

    @property
    def verdict(self) -> str:
        """What `modelpub verify` heads its findings with."""
        unsigned_only = self.signing_key is None and self.problems == [self.signature]
        return "UNSIGNED" if unsigned_only else "TAMPERED OR DAMAGED"

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_published(registry: Registry, keys: KeyStore, record: VersionRecord) -> IntegrityReport:
    store = registry.store
    prefix, tensors_file = record.location
    report = IntegrityReport(
        record.reference,
        files=check_files(store, prefix, record.files),
        signing_key=record.signing_key,
        signature=verify_signature(registry, keys, record),
    )
    names = artifact_format(record.format).tensors_files(tensors_file, record.tensor_parallel_size)
    uri = store.uri(f"{prefix}/{names[0]}")
    try:
        key = keys.get(record.key_id) if record.key_id else None
        for name in names:
            uri = store.uri(f"{prefix}/{name}")
            # one tensor at a time, streamed from the store: memory for a tensor
            tensors = tensorize.iter_deserialized(uri, key, stream_kwargs(store))
            report.tensors += sum(1 for _ in tensors)
    except Exception as exc:  # noqa: BLE001 - every way of failing to read back is a finding
        report.error = tensorize.describe_load_error(exc, uri, record.key_id)
    return report
