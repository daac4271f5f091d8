"""Is a published version still what was published? Checked without the source model.

Every file's sha256 must match the registry record, and the tensors file (each rank's,
for a sharded vLLM-tensorized version) must decrypt with its key and pass tensorizer's
per-tensor hash verification. This catches flipped bytes, truncation, a swapped
config.json and a record that no longer matches its files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resources import tensorize
from resources.formats.access import stream_kwargs
from resources.formats.artifact import check_files
from resources.formats.format import artifact_format
from resources.records import VersionRecord
from resources.storage.keys import KeyStore
from resources.storage.store import ObjectStore


@dataclass
class IntegrityReport:
    reference: str
    files: list[dict] = field(default_factory=list)
    tensors: int = 0
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        found = [f"{r['file']}: missing" for r in self.files if not r["present"]]
        found += [
            f"{r['file']}: sha256 does not match the record"
            for r in self.files
            if r["present"] and not r["sha256_matches"]
        ]
        return found + ([self.error] if self.error else [])

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_published(store: ObjectStore, keys: KeyStore, record: VersionRecord) -> IntegrityReport:
    prefix, tensors_file = record.location
    report = IntegrityReport(record.reference, files=check_files(store, prefix, record.files))
    names = artifact_format(record.format).tensors_files(tensors_file, record.tensor_parallel_size)
    uri = store.uri(f"{prefix}/{names[0]}")
    try:
        key = keys.get(record.key_id) if record.key_id else None
        for name in names:
            uri = store.uri(f"{prefix}/{name}")
            report.tensors += len(tensorize.deserialize(uri, key, stream_kwargs(store)))
    except Exception as exc:  # noqa: BLE001 - every way of failing to read back is a finding
        report.error = tensorize.describe_load_error(exc, uri, record.key_id)
    return report
