"""Is a published version still what was published? Checked without the source model.

Every file's digests must match the registry record (a tensors file's part by part,
before tensorizer reads a byte of it), the tensors file (each rank's, for a sharded
vLLM-tensorized version) must decrypt with its key, and the version's signature must
verify, with a key the key store trusts, over its files and its record as stored. This
catches flipped bytes, truncation, a swapped config.json, a record that no longer
matches its files or was edited, a version signed again by another key, and one with no
signature; where the files are whole but the key store's key does not open them, it
says so apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from resources.formats import tensorize
from resources.formats.artifact import check_files
from resources.formats.checked_read import checked_first
from resources.formats.format import artifact_format
from resources.registry.records import VersionRecord
from resources.registry.registry import Registry, RegistryError
from resources.registry.signing import verify_signature
from resources.storage.keys import KeyStore, KeyStoreError


@dataclass
class IntegrityReport:
    reference: str
    files: list[dict] = field(default_factory=list)
    tensors: int = 0
    error: str | None = None
    signing_key: str | None = None  # the fingerprint the record names
    signature: str | None = None  # why the signature does not hold
    key_failed: bool = False  # `error` is the key store's key not opening checked bytes

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
        if self.signing_key is None and self.problems == [self.signature]:
            return "UNSIGNED"
        if self.key_failed and self.problems == [self.error]:
            return "WRONG OR MISSING KEY"  # the version itself is whole: its files verified
        return "TAMPERED OR DAMAGED"

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_published(registry: Registry, keys: KeyStore, record: VersionRecord) -> IntegrityReport:
    """Each file read once from the store: its digest against the record and its sha256
    for the signature, the tensors files decrypted by tensorizer as they stream, each part
    checked before tensorizer reads it (resources/formats/checked_read.py)."""
    store = registry.store
    prefix, tensors_file = record.location
    report = IntegrityReport(record.reference, signing_key=record.signing_key)
    names = artifact_format(record.format).tensors_files(tensors_file, record.tensor_parallel_size)
    try:
        key = keys.get(record.key_id) if record.key_id else None
    except Exception as exc:  # noqa: BLE001 - a key that cannot be read is a finding
        report.error = tensorize.describe_load_error(
            exc, store.uri(f"{prefix}/{names[0]}"), record.key_id
        )
        report.key_failed = isinstance(exc, KeyStoreError)
        key = None

    def reader(name: str) -> Callable[[BinaryIO], None]:
        def read(stream: BinaryIO) -> None:
            if report.error:
                return  # one failure is the finding; the rest are only hashed
            try:
                # one tensor at a time, as the store streams it: memory for a tensor
                report.tensors += sum(1 for _ in tensorize.iter_deserialized(stream, key))
            except Exception as exc:  # noqa: BLE001 - every way of failing to read back is a finding
                uri = store.uri(f"{prefix}/{name}")
                checked = checked_first(stream)
                report.error = tensorize.describe_load_error(exc, uri, record.key_id, checked)
                report.key_failed = checked and tensorize.is_decryption_error(exc)

        return read

    checks = check_files(store, prefix, record.files, {name: reader(name) for name in names})
    report.files = [c.row() for c in checks]
    report.signature = verify_signature(registry, keys, record, {c.file: c.sha256 for c in checks})
    return report


def require_verified(registry: Registry, keys: KeyStore, record: VersionRecord) -> None:
    """Refuse a rollback to a version whose files or tensors no longer verify."""
    report = verify_published(registry, keys, record)
    if not report.ok:
        problems = "; ".join(" ".join(p.split()) for p in report.problems)
        raise RegistryError(f"{record.reference} fails verification, not rolling back: {problems}")
